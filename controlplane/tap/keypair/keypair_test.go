package keypair_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/controlplane/tap/keypair"
)

// writePair writes a self-signed certificate named cn and its key, and
// sets both files' modification time to mod.
func writePair(t *testing.T, certFile, keyFile, cn string, mod time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{cn},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), mod)
	write(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), mod)
}

func write(t *testing.T, path string, b []byte, mod time.Time) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}

func cn(t *testing.T, r *keypair.Reloader) string {
	t.Helper()
	c, err := r.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

// TestReload follows a certificate through its updates: a new pair is
// served, a broken one leaves the last good one in place.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	writePair(t, certFile, keyFile, "first", t0)
	r, err := keypair.Load(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name   string
		change func()
		want   string
	}{
		{"unchanged", func() {}, "first"},
		{"renewed", func() { writePair(t, certFile, keyFile, "second", t0.Add(time.Minute)) }, "second"},
		{"certificate half-written", func() { write(t, certFile, []byte("-----BEGIN CERT"), t0.Add(2*time.Minute)) }, "second"},
		{"key removed", func() { os.Remove(keyFile) }, "second"},
		{"renewed again", func() { writePair(t, certFile, keyFile, "third", t0.Add(3*time.Minute)) }, "third"},
	}
	for _, s := range steps {
		s.change()
		if got := cn(t, r); got != s.want {
			t.Errorf("%s: serving %q, want %q", s.name, got, s.want)
		}
	}
}

// TestLoadErrors checks that a pair that does not load at start is an
// error naming the problem.
func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if _, err := keypair.Load(certFile, keyFile, nil); err == nil || !strings.Contains(err.Error(), "read certificate") {
		t.Errorf("missing files: error %v, want read certificate", err)
	}
	writePair(t, certFile, keyFile, "a", time.Now())
	otherCert, otherKey := filepath.Join(dir, "b.crt"), filepath.Join(dir, "b.key")
	writePair(t, otherCert, otherKey, "b", time.Now())
	if _, err := keypair.Load(certFile, otherKey, nil); err == nil || !strings.Contains(err.Error(), "load key pair") {
		t.Errorf("mismatched key: error %v, want load key pair", err)
	}
}
