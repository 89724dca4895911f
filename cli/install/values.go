// Package install installs, upgrades and uninstalls Sluice's control plane
// from the embedded Helm chart (deploy/charts): it builds the chart's
// values (the user's, the previous install's, the identity credentials it
// generates or keeps), applies the rendered objects with server-side apply,
// waits for them to be ready while saying what it waits for, and on
// uninstall removes every object and the agents' pinned state on every
// node. `meshctl install`, `upgrade` and `uninstall` are thin commands over
// it.
package install

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"

	"helm.sh/helm/v4/pkg/strvals"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/internal/pki"
)

// Names of what the chart and the installer keep in the control plane's
// namespace.
const (
	// TrustRootsConfigMap holds the identity trust anchors (key
	// TrustRootsKey).
	TrustRootsConfigMap = "sluice-identity-trust-roots"
	TrustRootsKey       = "ca-bundle.crt"
	// IssuerSecret holds the identity issuer (tls.crt, tls.key).
	IssuerSecret = "sluice-identity-issuer"
	// ValuesSecret holds the values the user gave at install and upgrade
	// (key ValuesKey), which the next upgrade starts from.
	ValuesSecret = "sluice-install-values"
	ValuesKey    = "values.yaml"
	// ConfigMap is the injection values the chart writes; its presence
	// means Sluice is installed.
	ConfigMap = "sluice-config"
)

// ValueOptions are the values a user gives, as Helm takes them: files
// (-f, later ones win) and --set key=value pairs (applied last).
type ValueOptions struct {
	Files []string
	Set   []string
}

// Merge reads the files and the --set pairs into one map, on top of base
// (which it does not modify). A bad file or pair is an error naming it.
func (o ValueOptions) Merge(base map[string]any) (map[string]any, error) {
	out := deepCopy(base)
	for _, f := range o.Files {
		var b []byte
		var err error
		if f == "-" {
			b, err = readAll(os.Stdin)
		} else {
			b, err = os.ReadFile(f)
		}
		if err != nil {
			return nil, fmt.Errorf("read values file: %w", err)
		}
		m := map[string]any{}
		if err := yaml.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("values file %s: %w", f, err)
		}
		out = mergeMaps(out, m)
	}
	for _, s := range o.Set {
		if err := strvals.ParseInto(s, out); err != nil {
			return nil, fmt.Errorf("--set %s: %w", s, err)
		}
	}
	return out, nil
}

// MergeValues returns a with b merged in, key by key for nested maps; b
// wins. Neither is modified.
func MergeValues(a, b map[string]any) map[string]any {
	return mergeMaps(deepCopy(a), b)
}

// HasTrustAnchors reports whether vals give the identity trust anchors.
func HasTrustAnchors(vals map[string]any) bool { return lookup(vals, anchorsPath) != "" }

// mergeMaps merges b into a, key by key for nested maps; b wins.
func mergeMaps(a, b map[string]any) map[string]any {
	out := maps.Clone(a)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range b {
		if bm, ok := v.(map[string]any); ok {
			if am, ok := out[k].(map[string]any); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

func deepCopy(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if vm, ok := v.(map[string]any); ok {
			v = deepCopy(vm)
		}
		out[k] = v
	}
	return out
}

// lookup returns the string at a dotted path of m, "" when absent.
func lookup(m map[string]any, path string) string {
	keys := strings.Split(path, ".")
	for i, k := range keys {
		v, ok := m[k]
		if !ok {
			return ""
		}
		if i == len(keys)-1 {
			s, _ := v.(string)
			return s
		}
		if m, ok = v.(map[string]any); !ok {
			return ""
		}
	}
	return ""
}

// setPath sets a dotted path of m to v, making the maps on the way.
func setPath(m map[string]any, path string, v any) {
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = v
}

// Identity value paths of the chart.
const (
	anchorsPath   = "identity.trustAnchorsPEM"
	issuerCrtPath = "identity.issuer.crtPEM"
	issuerKeyPath = "identity.issuer.keyPEM"
	trustDomPath  = "identity.trustDomain"
)

// WithGeneratedIdentity returns vals with a trust anchor and issuer
// generated (ECDSA P-256, pki.Generate) unless the user gave them: the
// chart could generate them too, but then every upgrade would make new
// ones.
func WithGeneratedIdentity(vals map[string]any) (map[string]any, error) {
	if HasTrustAnchors(vals) {
		return vals, nil
	}
	creds, err := pki.Generate(pki.GenerateOptions{TrustDomain: lookup(vals, trustDomPath)})
	if err != nil {
		return nil, fmt.Errorf("generate the identity trust anchor and issuer: %w", err)
	}
	out := deepCopy(vals)
	setPath(out, anchorsPath, string(creds.TrustAnchorPEM))
	setPath(out, issuerCrtPath, string(creds.IssuerCertPEM))
	setPath(out, issuerKeyPath, string(creds.IssuerKeyPEM))
	return out, nil
}

// Installed reports whether Sluice is installed in namespace ns: its
// configuration ConfigMap exists.
func Installed(ctx context.Context, client kubernetes.Interface, ns string) (bool, error) {
	_, err := client.CoreV1().ConfigMaps(ns).Get(ctx, ConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read configmap %s/%s: %w", ns, ConfigMap, err)
	}
	return true, nil
}

// PreviousValues reads what an upgrade starts from: the values the user
// gave last time, and the installed credentials: the identity trust
// anchors and issuer (kept unless the new values replace the anchors) and
// the serving certificates of the webhook and the tap API.
func PreviousValues(ctx context.Context, client kubernetes.Interface, ns string) (user, identity map[string]any, err error) {
	user = map[string]any{}
	s, err := client.CoreV1().Secrets(ns).Get(ctx, ValuesSecret, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, nil, fmt.Errorf("read the installed values (secret %s/%s): %w", ns, ValuesSecret, err)
	default:
		if err := yaml.Unmarshal(s.Data[ValuesKey], &user); err != nil {
			return nil, nil, fmt.Errorf("the installed values (secret %s/%s): %w", ns, ValuesSecret, err)
		}
	}
	cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, TrustRootsConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("read the trust anchors (configmap %s/%s): %w", ns, TrustRootsConfigMap, err)
	}
	iss, err := client.CoreV1().Secrets(ns).Get(ctx, IssuerSecret, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("read the identity issuer (secret %s/%s): %w", ns, IssuerSecret, err)
	}
	identity = map[string]any{}
	setPath(identity, anchorsPath, cm.Data[TrustRootsKey])
	setPath(identity, issuerCrtPath, string(iss.Data["tls.crt"]))
	setPath(identity, issuerKeyPath, string(iss.Data["tls.key"]))
	// The webhook's and the tap API's serving certificates, with the CA of
	// their caBundle: new ones would be served only once the kubelet has
	// updated the mounted Secret, while the API server uses the new
	// caBundle at once.
	for _, s := range servingSecrets {
		sec, err := client.CoreV1().Secrets(ns).Get(ctx, s.name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return nil, nil, fmt.Errorf("read secret %s/%s: %w", ns, s.name, err)
		}
		crt, key, ca := sec.Data["tls.crt"], sec.Data["tls.key"], sec.Data["ca.crt"]
		if len(crt) == 0 || len(key) == 0 || len(ca) == 0 {
			continue // made by an older chart: new ones are generated
		}
		setPath(identity, s.values+".crtPEM", string(crt))
		setPath(identity, s.values+".keyPEM", string(key))
		setPath(identity, s.values+".caBundlePEM", string(ca))
	}
	return user, identity, nil
}

// servingSecrets are the chart's TLS serving certificates and the values
// that give them.
var servingSecrets = []struct{ name, values string }{
	{"sluice-proxy-injector-tls", "proxyInjector.tls"},
	{"sluice-tap-tls", "tap.tls"},
}
