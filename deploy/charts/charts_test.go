package charts

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/sluice-mesh/sluice/controlplane/inject"
)

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

// TestRenderDefaults: the defaults render, in install order, with every
// namespaced object in the release namespace and generated certificates
// that fit together.
func TestRenderDefaults(t *testing.T) {
	objs, err := Render(Options{Namespace: "mesh", KubeVersion: "v1.34.4"})
	if err != nil {
		t.Fatal(err)
	}
	if objs[0].GetKind() != "Namespace" || objs[0].GetName() != "mesh" {
		t.Errorf("first object is %s %s, want the namespace", objs[0].GetKind(), objs[0].GetName())
	}
	// Webhooks and API services come after the workloads that serve them.
	lastWorkload, firstHook := -1, len(objs)
	for i, o := range objs {
		switch o.GetKind() {
		case "Deployment", "DaemonSet":
			lastWorkload = i
		case "MutatingWebhookConfiguration", "APIService":
			firstHook = min(firstHook, i)
		}
	}
	if lastWorkload > firstHook {
		t.Errorf("a workload (%s) comes after a webhook or API service (%s)", objs[lastWorkload].GetName(), objs[firstHook].GetName())
	}
	clusterScoped := map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true, "APIService": true, "MutatingWebhookConfiguration": true}
	for _, o := range objs {
		ns := o.GetNamespace()
		switch {
		case clusterScoped[o.GetKind()] && ns != "":
			t.Errorf("%s %s has namespace %q", o.GetKind(), o.GetName(), ns)
		case !clusterScoped[o.GetKind()] && ns != "mesh" && !(o.GetKind() == "RoleBinding" && ns == "kube-system"):
			t.Errorf("%s %s is in namespace %q, want mesh", o.GetKind(), o.GetName(), ns)
		}
	}
	// The generated root is the issuer, an ECDSA CA.
	roots := find(t, objs, "ConfigMap", "sluice-identity-trust-roots")
	bundle, _, _ := unstructured.NestedString(roots.Object, "data", "ca-bundle.crt")
	root := parseCert(t, bundle)
	if !root.IsCA || root.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("trust anchor: CA %v, key %v; want an ECDSA CA", root.IsCA, root.PublicKeyAlgorithm)
	}
	issuer := find(t, objs, "Secret", "sluice-identity-issuer")
	crtB64, _, _ := unstructured.NestedString(issuer.Object, "data", "tls.crt")
	crt, err := base64.StdEncoding.DecodeString(crtB64)
	if err != nil {
		t.Fatal(err)
	}
	if c := parseCert(t, string(crt)); !c.Equal(root) {
		t.Errorf("generated issuer is not the generated root")
	}
	// The tap service's certificate verifies with the APIService's caBundle
	// for the service's name.
	api := find(t, objs, "APIService", "v1alpha1.tap.sluice.io")
	caB64, _, _ := unstructured.NestedString(api.Object, "spec", "caBundle")
	ca, _ := base64.StdEncoding.DecodeString(caB64)
	tls := find(t, objs, "Secret", "sluice-tap-tls")
	leafB64, _, _ := unstructured.NestedString(tls.Object, "data", "tls.crt")
	leaf, _ := base64.StdEncoding.DecodeString(leafB64)
	pool := x509.NewCertPool()
	pool.AddCert(parseCert(t, string(ca)))
	if _, err := parseCert(t, string(leaf)).Verify(x509.VerifyOptions{Roots: pool, DNSName: "sluice-tap.mesh.svc"}); err != nil {
		t.Errorf("tap certificate does not verify with the APIService's caBundle: %v", err)
	}
}

func TestRenderRefusesHalfCertificates(t *testing.T) {
	for _, tc := range []struct {
		name string
		vals map[string]any
		want string
	}{
		{"issuer without anchors", map[string]any{"identity": map[string]any{"issuer": map[string]any{"crtPEM": "x", "keyPEM": "y"}}}, "need identity.trustAnchorsPEM"},
		{"anchors without issuer", map[string]any{"identity": map[string]any{"trustAnchorsPEM": "x"}}, "set identity.issuer.crtPEM"},
		{"tap cert without key", map[string]any{"tap": map[string]any{"tls": map[string]any{"crtPEM": "x"}}}, "go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(Options{Values: tc.vals})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Render: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestRenderRefusesOldKubernetes(t *testing.T) {
	if _, err := Render(Options{KubeVersion: "v1.27.3"}); err == nil || !strings.Contains(err.Error(), "needs Kubernetes") {
		t.Fatalf("Render for 1.27: %v", err)
	}
}

func parseCert(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRenderInjectionValues: the injector's values parse and validate as
// controlplane/inject reads them, carry the chart's images and the same
// trust anchors as the identity service, and the webhook's caBundle
// verifies its serving certificate.
func TestRenderInjectionValues(t *testing.T) {
	objs, err := Render(Options{Values: map[string]any{
		"interceptionMode": "iptables",
		"image":            map[string]any{"tag": "v9.9.9"},
		"proxy":            map[string]any{"skipOutboundPorts": "25,587"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cm := find(t, objs, "ConfigMap", inject.ConfigMapName)
	doc, _, _ := unstructured.NestedString(cm.Object, "data", inject.ValuesKey)
	v, err := inject.ParseValues([]byte(doc))
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", inject.ValuesKey, err, doc)
	}
	if err := v.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if got, want := v.ProxyImageRef(), "ghcr.io/sluice-mesh/proxy:v9.9.9"; got != want {
		t.Errorf("proxy image %s, want %s", got, want)
	}
	if got, want := v.InitImageRef(), "ghcr.io/sluice-mesh/agent:v9.9.9"; got != want {
		t.Errorf("init image %s, want %s", got, want)
	}
	if v.InterceptionMode != "iptables" || v.Proxy.SkipOutboundPorts != "25,587" || v.ControlPlaneNamespace != "sluice" {
		t.Errorf("values: mode %q, skip-outbound %q, namespace %q", v.InterceptionMode, v.Proxy.SkipOutboundPorts, v.ControlPlaneNamespace)
	}
	roots := find(t, objs, "ConfigMap", "sluice-identity-trust-roots")
	bundle, _, _ := unstructured.NestedString(roots.Object, "data", "ca-bundle.crt")
	if strings.TrimSpace(bundle) != strings.TrimSpace(v.Identity.TrustAnchorsPEM) {
		t.Error("the injection values' trust anchors differ from the identity service's")
	}

	hook := find(t, objs, "MutatingWebhookConfiguration", "sluice-sluice-proxy-injector")
	hooks, _, _ := unstructured.NestedSlice(hook.Object, "webhooks")
	caB64, _, _ := unstructured.NestedString(hooks[0].(map[string]any), "clientConfig", "caBundle")
	ca, _ := base64.StdEncoding.DecodeString(caB64)
	sec := find(t, objs, "Secret", "sluice-proxy-injector-tls")
	leafB64, _, _ := unstructured.NestedString(sec.Object, "data", "tls.crt")
	leaf, _ := base64.StdEncoding.DecodeString(leafB64)
	pool := x509.NewCertPool()
	pool.AddCert(parseCert(t, string(ca)))
	if _, err := parseCert(t, string(leaf)).Verify(x509.VerifyOptions{Roots: pool, DNSName: "sluice-proxy-injector.sluice.svc"}); err != nil {
		t.Errorf("injector certificate does not verify with the webhook's caBundle: %v", err)
	}
}
