package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func serverSpec() CertSpec {
	return CertSpec{
		Name: "apiserver", CommonName: "kube-apiserver",
		DNSNames: []string{"kubernetes", "kubernetes.default.svc.cluster.local", "localhost"},
		IPs:      []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("fd00:99::1")},
		Usage:    Server,
	}
}

func TestIssuedCertificatesVerify(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, ca.Cert))
	tests := []struct {
		spec   CertSpec
		verify x509.VerifyOptions
	}{
		{serverSpec(), x509.VerifyOptions{DNSName: "kubernetes.default.svc.cluster.local", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{serverSpec(), x509.VerifyOptions{DNSName: "10.96.0.1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{serverSpec(), x509.VerifyOptions{DNSName: "fd00:99::1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{CertSpec{Name: "admin", CommonName: "admin", Organization: []string{"system:masters"}, Usage: Client},
			x509.VerifyOptions{KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
		{CertSpec{Name: "kubelet", CommonName: "system:node:n0", DNSNames: []string{"n0"}, IPs: []netip.Addr{netip.MustParseAddr("10.99.0.1")}, Usage: Client | Server},
			x509.VerifyOptions{DNSName: "10.99.0.1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.spec.Name, tt.verify.DNSName), func(t *testing.T) {
			p, err := ca.Issue(dir, tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			cert := readCert(t, p.Cert)
			tt.verify.Roots = roots
			if _, err := cert.Verify(tt.verify); err != nil {
				t.Errorf("verify: %v", err)
			}
			if cert.Subject.CommonName != tt.spec.CommonName || !slices.Equal(cert.Subject.Organization, tt.spec.Organization) {
				t.Errorf("subject %v, want CN=%s O=%v", cert.Subject, tt.spec.CommonName, tt.spec.Organization)
			}
			if fi, err := os.Stat(p.Key); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key %s: mode %v, err %v; want 0600", p.Key, fi.Mode(), err)
			}
		})
	}
}

func TestReuseAndReissue(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	first, err := ca.Issue(dir, serverSpec())
	if err != nil {
		t.Fatal(err)
	}
	serial := readCert(t, first.Cert).SerialNumber

	again, err := EnsureCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Certificate().Equal(ca.Certificate()) {
		t.Fatal("EnsureCA replaced a valid CA")
	}
	if _, err := again.Issue(dir, serverSpec()); err != nil {
		t.Fatal(err)
	}
	if got := readCert(t, first.Cert).SerialNumber; got.Cmp(serial) != 0 {
		t.Fatal("Issue replaced a certificate that matched its spec")
	}

	changed := serverSpec()
	changed.IPs = append(changed.IPs, netip.MustParseAddr("10.99.0.2"))
	if _, err := ca.Issue(dir, changed); err != nil {
		t.Fatal(err)
	}
	cert := readCert(t, first.Cert)
	if cert.SerialNumber.Cmp(serial) == 0 || len(cert.IPAddresses) != 4 {
		t.Fatalf("a spec with a new address did not reissue: %d addresses", len(cert.IPAddresses))
	}

	// A new CA (its files removed) makes the old certificate invalid.
	os.Remove(ca.Cert)
	newCA, err := EnsureCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	if newCA.Certificate().Equal(ca.Certificate()) {
		t.Fatal("EnsureCA kept a CA whose certificate was gone")
	}
	if _, err := newCA.Issue(dir, changed); err != nil {
		t.Fatal(err)
	}
	if err := readCert(t, first.Cert).CheckSignatureFrom(newCA.Certificate()); err != nil {
		t.Fatalf("certificate of the old CA kept: %v", err)
	}

	// A corrupt key is replaced too.
	if err := os.WriteFile(first.Key, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newCA.Issue(dir, changed); err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(first.Cert, first.Key); err != nil {
		t.Fatalf("pair after a corrupt key: %v", err)
	}
}

func TestEnsureKey(t *testing.T) {
	dir := t.TempDir()
	p, err := EnsureKey(dir, "sa")
	if err != nil {
		t.Fatal(err)
	}
	key, err := readKey(p.Key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := readPublicKey(p.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if !samePublic(key.Public(), pub) {
		t.Fatal("public key does not belong to the private key")
	}
	before, _ := os.ReadFile(p.Key)
	if _, err := EnsureKey(dir, "sa"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(p.Key); string(after) != string(before) {
		t.Fatal("EnsureKey replaced a valid key")
	}
	os.Remove(p.Cert)
	if _, err := EnsureKey(dir, "sa"); err != nil {
		t.Fatal(err)
	}
	if _, err := readPublicKey(p.Cert); err != nil {
		t.Fatalf("public key not rewritten: %v", err)
	}
}

// TestKubeconfigTalksTLS serves HTTPS with an issued serving certificate,
// requiring a client certificate of the same CA, and reaches it with a
// client built from a written kubeconfig: the server sees the user and
// groups of the client certificate.
func TestKubeconfigTalksTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvPair, err := ca.Issue(dir, serverSpec())
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue(dir, CertSpec{Name: "admin", CommonName: "admin", Organization: []string{"system:masters"}, Usage: Client})
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := tls.LoadX509KeyPair(srvPair.Cert, srvPair.Key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer := r.TLS.PeerCertificates[0]
		fmt.Fprintf(w, "%s %v", peer.Subject.CommonName, peer.Subject.Organization)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()

	path := filepath.Join(dir, "kubeconfig")
	if err := WriteKubeconfig(path, Kubeconfig{Cluster: "test", Server: srv.URL, CA: ca.Cert, User: "admin", Client: client}); err != nil {
		t.Fatal(err)
	}
	// The files it embeds may go away: the kubeconfig stands alone.
	os.Remove(client.Key)
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Timeout = 30 * time.Second // hang guard
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: rt}).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if got, want := string(body), "admin [system:masters]"; got != want {
		t.Errorf("server saw %q, want %q", got, want)
	}
}
