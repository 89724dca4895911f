package tap_test

import (
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-mesh/sluice/controlplane/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/taptest"
)

// TestRequestHeaderConfig reads the ConfigMap as kube-apiserver writes it.
func TestRequestHeaderConfig(t *testing.T) {
	ca := taptest.NewCA(t, "front-proxy-ca")
	full := map[string]string{
		"client-ca-file":                     "unrelated",
		"requestheader-client-ca-file":       string(ca.PEM()),
		"requestheader-allowed-names":        `["front-proxy-client"]`,
		"requestheader-username-headers":     `["X-Remote-User"]`,
		"requestheader-uid-headers":          `["X-Remote-Uid"]`,
		"requestheader-group-headers":        `["X-Remote-Group"]`,
		"requestheader-extra-headers-prefix": `["X-Remote-Extra-"]`,
	}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for kk, vv := range full {
			m[kk] = vv
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		data  map[string]string
		names []string
		err   string
	}{
		{"complete", full, []string{"front-proxy-client"}, ""},
		{"any name", with("requestheader-allowed-names", `[]`), nil, ""},
		{"no request-header CA", with("requestheader-client-ca-file", ""), nil, "has no requestheader-client-ca-file"},
		{"CA not PEM", with("requestheader-client-ca-file", "junk"), nil, "holds no PEM certificate"},
		{"names not JSON", with("requestheader-allowed-names", "front-proxy-client"), nil, "requestheader-allowed-names is not a JSON list"},
		{"no username header", with("requestheader-username-headers", ""), nil, "has no requestheader-username-headers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: tap.AuthConfigMapNamespace, Name: tap.AuthConfigMapName}, Data: tc.data}
			c, err := tap.LoadRequestHeaderConfig(t.Context(), fake.NewClientset(cm))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.UsernameHeaders, []string{"X-Remote-User"}) || !slices.Equal(c.GroupHeaders, []string{"X-Remote-Group"}) ||
				!slices.Equal(c.UIDHeaders, []string{"X-Remote-Uid"}) || !slices.Equal(c.ExtraHeaderPrefixes, []string{"X-Remote-Extra-"}) {
				t.Errorf("config %+v, want the headers of the ConfigMap", c)
			}
			if !slices.Equal(c.AllowedNames, tc.names) {
				t.Errorf("allowed names %q, want %q", c.AllowedNames, tc.names)
			}
			leaf := ca.ClientCert(t, "front-proxy-client").Leaf
			if _, err := leaf.Verify(x509Opts(c)); err != nil {
				t.Errorf("a certificate of the CA does not verify against the config's pool: %v", err)
			}
		})
	}
	t.Run("no ConfigMap", func(t *testing.T) {
		_, err := tap.LoadRequestHeaderConfig(t.Context(), fake.NewClientset())
		if err == nil || !strings.Contains(err.Error(), "read configmap kube-system/extension-apiserver-authentication") {
			t.Errorf("error %v, want one naming the ConfigMap", err)
		}
	})
}

func x509Opts(c tap.RequestHeaderConfig) x509.VerifyOptions {
	return x509.VerifyOptions{Roots: c.ClientCA, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
}
