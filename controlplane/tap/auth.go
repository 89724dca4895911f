package tap

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

// The ConfigMap in which the API server publishes how it authenticates to
// aggregated API servers, and its keys this package reads.
const (
	AuthConfigMapNamespace = "kube-system"
	AuthConfigMapName      = "extension-apiserver-authentication"

	keyClientCA            = "requestheader-client-ca-file"
	keyAllowedNames        = "requestheader-allowed-names"
	keyUsernameHeaders     = "requestheader-username-headers"
	keyUIDHeaders          = "requestheader-uid-headers"
	keyGroupHeaders        = "requestheader-group-headers"
	keyExtraHeaderPrefixes = "requestheader-extra-headers-prefix"
)

// RequestHeaderConfig says how to recognize the API server's front proxy
// and read the user it forwards a request for, as the API server's
// --requestheader-* flags set it.
type RequestHeaderConfig struct {
	// ClientCA verifies the front proxy's client certificate. Required.
	ClientCA *x509.CertPool
	// AllowedNames are the common names a client certificate may have;
	// empty allows any name the CA signed, as in Kubernetes.
	AllowedNames []string
	// UsernameHeaders name the user; the first non-empty one counts
	// (X-Remote-User).
	UsernameHeaders []string
	// UIDHeaders carry the user's UID, when the API server sends it.
	UIDHeaders []string
	// GroupHeaders carry the user's groups, every value of each
	// (X-Remote-Group).
	GroupHeaders []string
	// ExtraHeaderPrefixes start headers that carry the user's extra
	// attributes: X-Remote-Extra-Scopes: a is extra "scopes" = ["a"]; the
	// rest of the name is lowercased and %-decoded.
	ExtraHeaderPrefixes []string
}

// RequestHeaderConfigFromConfigMap reads a RequestHeaderConfig from the
// extension-apiserver-authentication ConfigMap's data.
func RequestHeaderConfigFromConfigMap(cm *corev1.ConfigMap) (RequestHeaderConfig, error) {
	var c RequestHeaderConfig
	ca := cm.Data[keyClientCA]
	if ca == "" {
		return c, fmt.Errorf("configmap %s/%s has no %s: the API server runs without --requestheader-client-ca-file, so it cannot call aggregated APIs", cm.Namespace, cm.Name, keyClientCA)
	}
	c.ClientCA = x509.NewCertPool()
	if !c.ClientCA.AppendCertsFromPEM([]byte(ca)) {
		return c, fmt.Errorf("configmap %s/%s: %s holds no PEM certificate", cm.Namespace, cm.Name, keyClientCA)
	}
	for _, f := range []struct {
		key string
		dst *[]string
	}{
		{keyAllowedNames, &c.AllowedNames},
		{keyUsernameHeaders, &c.UsernameHeaders},
		{keyUIDHeaders, &c.UIDHeaders},
		{keyGroupHeaders, &c.GroupHeaders},
		{keyExtraHeaderPrefixes, &c.ExtraHeaderPrefixes},
	} {
		v := cm.Data[f.key]
		if v == "" {
			continue
		}
		if err := json.Unmarshal([]byte(v), f.dst); err != nil {
			return c, fmt.Errorf("configmap %s/%s: %s is not a JSON list of strings: %w", cm.Namespace, cm.Name, f.key, err)
		}
	}
	if len(c.UsernameHeaders) == 0 {
		return c, fmt.Errorf("configmap %s/%s has no %s", cm.Namespace, cm.Name, keyUsernameHeaders)
	}
	return c, nil
}

// LoadRequestHeaderConfig reads the RequestHeaderConfig from the ConfigMap
// kube-system/extension-apiserver-authentication (readable through the
// built-in Role extension-apiserver-authentication-reader).
func LoadRequestHeaderConfig(ctx context.Context, client kubernetes.Interface) (RequestHeaderConfig, error) {
	cm, err := client.CoreV1().ConfigMaps(AuthConfigMapNamespace).Get(ctx, AuthConfigMapName, metav1.GetOptions{})
	if err != nil {
		return RequestHeaderConfig{}, fmt.Errorf("read configmap %s/%s: %w", AuthConfigMapNamespace, AuthConfigMapName, err)
	}
	return RequestHeaderConfigFromConfigMap(cm)
}

// userInfo is the user a request is made for.
type userInfo struct {
	name   string
	uid    string
	groups []string
	extra  map[string][]string
}

// authenticate checks that r comes from the API server's front proxy and
// returns the user it names.
func (s *Server) authenticate(r *http.Request) (userInfo, *apiError) {
	c := &s.cfg.RequestHeader
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return userInfo{}, unauthorized("no client certificate: the tap API is served to the Kubernetes API server, which forwards users' requests")
	}
	leaf := r.TLS.PeerCertificates[0]
	opts := x509.VerifyOptions{
		Roots:         c.ClientCA,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, ic := range r.TLS.PeerCertificates[1:] {
		opts.Intermediates.AddCert(ic)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return userInfo{}, unauthorized(fmt.Sprintf("client certificate %q is not signed by the request-header CA: %v", leaf.Subject.CommonName, err))
	}
	if len(c.AllowedNames) > 0 && !slices.Contains(c.AllowedNames, leaf.Subject.CommonName) {
		return userInfo{}, unauthorized(fmt.Sprintf("client certificate %q is not one of the allowed request-header names %q", leaf.Subject.CommonName, c.AllowedNames))
	}
	u := userInfo{extra: map[string][]string{}}
	for _, h := range c.UsernameHeaders {
		if v := r.Header.Get(h); v != "" {
			u.name = v
			break
		}
	}
	if u.name == "" {
		return userInfo{}, unauthorized(fmt.Sprintf("no user in %s", strings.Join(c.UsernameHeaders, ", ")))
	}
	for _, h := range c.UIDHeaders {
		if v := r.Header.Get(h); v != "" {
			u.uid = v
			break
		}
	}
	for _, h := range c.GroupHeaders {
		for _, v := range r.Header.Values(h) {
			if v != "" {
				u.groups = append(u.groups, v)
			}
		}
	}
	for _, prefix := range c.ExtraHeaderPrefixes {
		for name, vs := range r.Header {
			if len(name) < len(prefix) || !strings.EqualFold(name[:len(prefix)], prefix) {
				continue
			}
			key := strings.ToLower(name[len(prefix):])
			if k, err := url.PathUnescape(key); err == nil {
				key = k
			}
			u.extra[key] = append(u.extra[key], vs...)
		}
	}
	return u, nil
}

// access is what a tap asks to do: watch <resource>/tap named name in
// namespace.
type access struct {
	namespace string
	resource  string // plural
	name      string // empty: every object of the type
}

func (a access) String() string {
	return fmt.Sprintf("%s %s/%s in namespace %q", tapapi.Verb, a.resource, tapapi.Subresource, a.namespace)
}

// authorize asks the API server with a SubjectAccessReview whether u may
// watch a's tap subresource.
func (s *Server) authorize(ctx context.Context, u userInfo, a access) *apiError {
	extra := make(map[string]authorizationv1.ExtraValue, len(u.extra))
	for k, v := range u.extra {
		extra[k] = v
	}
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   u.name,
		UID:    u.uid,
		Groups: u.groups,
		Extra:  extra,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace:   a.namespace,
			Verb:        tapapi.Verb,
			Group:       tapapi.Group,
			Version:     tapapi.Version,
			Resource:    a.resource,
			Subresource: tapapi.Subresource,
			Name:        a.name,
		},
	}}
	got, err := s.cfg.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return internalError(fmt.Sprintf("authorize user %q: create SubjectAccessReview: %v", u.name, err))
	}
	if got.Status.Allowed && !got.Status.Denied {
		return nil
	}
	msg := fmt.Sprintf("user %q cannot %s", u.name, a)
	if got.Status.Reason != "" {
		msg += ": " + got.Status.Reason
	}
	e := &apiError{code: http.StatusForbidden, reason: metav1.StatusReasonForbidden, outcome: outcomeForbidden, msg: msg}
	e.details = &metav1.StatusDetails{Group: tapapi.Group, Kind: a.resource, Name: a.name}
	return e
}
