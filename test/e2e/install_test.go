package e2e

import (
	"bytes"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// TestInstallUpgrade: on the suite's install (meshctl install), a second
// install is refused with one line pointing at upgrade; meshctl upgrade
// keeps the identity trust anchors, the issuer, the webhook's certificate
// and the values given at install (certLifetime), waits for the rollout,
// and meshctl check passes afterwards; meshctl version names the control
// plane's version; install --dry-run prints the manifests without a
// cluster.
func TestInstallUpgrade(t *testing.T) {
	s := need(t)
	c := ctx(t, 8*time.Minute)
	kc := s.cluster.Kubeconfig
	read := func() (roots string, issuer, webhook []byte, values string) {
		t.Helper()
		cm, err := s.cluster.Client.CoreV1().ConfigMaps(cpNamespace).Get(c, "sluice-identity-trust-roots", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		iss, err := s.cluster.Client.CoreV1().Secrets(cpNamespace).Get(c, "sluice-identity-issuer", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wh, err := s.cluster.Client.CoreV1().Secrets(cpNamespace).Get(c, "sluice-proxy-injector-tls", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vs, err := s.cluster.Client.CoreV1().Secrets(cpNamespace).Get(c, "sluice-install-values", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm.Data["ca-bundle.crt"], iss.Data["tls.crt"], wh.Data["tls.crt"], string(vs.Data["values.yaml"])
	}
	roots, issuer, webhook, values := read()
	var v map[string]any
	if err := yaml.Unmarshal([]byte(values), &v); err != nil {
		t.Fatal(err)
	}
	if id, _ := v["identity"].(map[string]any); id["certLifetime"] != certLifetime.String() || id["trustAnchorsPEM"] != nil {
		t.Errorf("install kept the values %v; want the user's (identity.certLifetime=%s), without generated credentials", v, certLifetime)
	}

	out, err := s.run(c, s.meshctl, "install", "--kubeconfig", kc)
	if err == nil || !strings.Contains(out, "already installed") || !strings.Contains(out, "meshctl upgrade") {
		t.Errorf("a second meshctl install: %v\n%s", err, out)
	}

	out, err = s.run(c, s.meshctl, "upgrade", "--kubeconfig", kc, "--set", "proxy.logLevel=debug")
	if err != nil {
		t.Fatalf("meshctl upgrade: %v\n%s", err, out)
	}
	roots2, issuer2, webhook2, values2 := read()
	if roots2 != roots || !bytes.Equal(issuer2, issuer) || !bytes.Equal(webhook2, webhook) {
		t.Errorf("meshctl upgrade replaced credentials: trust roots same %v, issuer same %v, webhook certificate same %v",
			roots2 == roots, bytes.Equal(issuer2, issuer), bytes.Equal(webhook2, webhook))
	}
	if !strings.Contains(values2, "certLifetime: "+certLifetime.String()) || !strings.Contains(values2, "logLevel: debug") {
		t.Errorf("values after upgrade:\n%s\nwant install's certLifetime and upgrade's proxy.logLevel", values2)
	}
	if out, err := s.run(c, s.meshctl, "check", "--kubeconfig", kc, "--wait", "2m"); err != nil {
		t.Errorf("meshctl check after upgrade: %v\n%s", err, out)
	}

	out, err = s.run(c, s.meshctl, "version", "--kubeconfig", kc)
	if err != nil || !strings.Contains(out, "Client version: ") || !strings.Contains(out, "Server version: "+imageTag) {
		t.Errorf("meshctl version: %v\n%s\nwant the client's and the control plane's (%s)", err, out, imageTag)
	}

	// --dry-run needs no cluster.
	out, err = s.run(c, s.meshctl, "install", "--dry-run", "-o", "yaml", "--kubeconfig", "/nonexistent")
	if err != nil || !strings.Contains(out, "kind: DaemonSet") || !strings.Contains(out, "name: sluice-prometheus") {
		t.Errorf("meshctl install --dry-run: %v\n%.2000s", err, out)
	}
}
