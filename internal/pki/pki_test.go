package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

const testID = "web.shop.serviceaccount.identity.sluice.cluster.local"

// testNow is the tests' fixed "now", whole seconds as certificates hold.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func generate(t *testing.T, o GenerateOptions) *Credentials {
	t.Helper()
	if o.Now.IsZero() {
		o.Now = testNow
	}
	c, err := Generate(o)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	return c
}

func parseOne(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	certs, err := ParseCertificates(pemBytes)
	if err != nil {
		t.Fatalf("ParseCertificates: %v", err)
	}
	return certs[0]
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestGenerate(t *testing.T) {
	c := generate(t, GenerateOptions{})
	anchor, issuer := parseOne(t, c.TrustAnchorPEM), parseOne(t, c.IssuerCertPEM)
	for _, tc := range []struct {
		name     string
		cert     *x509.Certificate
		cn       string
		lifetime time.Duration
		pathLen  int
	}{
		{"anchor", anchor, "root.sluice.cluster.local", 10 * 365 * 24 * time.Hour, 1},
		{"issuer", issuer, "identity.sluice.cluster.local", 365 * 24 * time.Hour, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cert.Subject.CommonName != tc.cn {
				t.Errorf("common name %q, want %q", tc.cert.Subject.CommonName, tc.cn)
			}
			if !tc.cert.IsCA || tc.cert.MaxPathLen != tc.pathLen {
				t.Errorf("IsCA %v MaxPathLen %d, want a CA with path length %d", tc.cert.IsCA, tc.cert.MaxPathLen, tc.pathLen)
			}
			if got := tc.cert.NotAfter.Sub(testNow); got != tc.lifetime {
				t.Errorf("valid for %s after now, want %s", got, tc.lifetime)
			}
			if tc.cert.NotBefore.After(testNow) {
				t.Errorf("NotBefore %s is after now", tc.cert.NotBefore)
			}
			pub, ok := tc.cert.PublicKey.(*ecdsa.PublicKey)
			if !ok || pub.Curve != elliptic.P256() {
				t.Errorf("public key %T, want ECDSA P-256", tc.cert.PublicKey)
			}
		})
	}
	if _, err := LoadIssuer(c.IssuerCertPEM, c.IssuerKeyPEM, c.TrustAnchorPEM, testNow); err != nil {
		t.Fatalf("LoadIssuer of generated credentials: %v", err)
	}
	// The anchor's key makes a next issuer under the same anchor.
	cert, key, err := GenerateIssuer(c.TrustAnchorPEM, c.TrustAnchorKeyPEM, GenerateOptions{Now: testNow, IssuerLifetime: 48 * time.Hour})
	if err != nil {
		t.Fatalf("GenerateIssuer: %v", err)
	}
	next, err := LoadIssuer(cert, key, c.TrustAnchorPEM, testNow)
	if err != nil {
		t.Fatalf("LoadIssuer of the next issuer: %v", err)
	}
	if next.Certificate().SerialNumber.Cmp(issuer.SerialNumber) == 0 {
		t.Error("the next issuer has the first one's serial number")
	}
	if got := next.Certificate().NotAfter.Sub(testNow); got != 48*time.Hour {
		t.Errorf("next issuer valid for %s, want 48h", got)
	}
}

func TestGenerateTrustDomain(t *testing.T) {
	c := generate(t, GenerateOptions{TrustDomain: "example.org"})
	if cn := parseOne(t, c.IssuerCertPEM).Subject.CommonName; cn != "identity.sluice.example.org" {
		t.Errorf("issuer common name %q, want identity.sluice.example.org", cn)
	}
}

// leafPEM makes a non-CA certificate signed by the issuer, to use as a
// would-be issuer.
func leafPEM(t *testing.T, c *Credentials) (certPEM, keyPEM []byte) {
	t.Helper()
	iss, err := LoadIssuer(c.IssuerCertPEM, c.IssuerKeyPEM, c.TrustAnchorPEM, testNow)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	leaf, err := iss.Sign(&key.PublicKey, testID, testNow, testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	k, err := encodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return encodeCert(leaf.Raw), k
}

func TestLoadIssuerErrors(t *testing.T) {
	c := generate(t, GenerateOptions{})
	other := generate(t, GenerateOptions{})
	leafCert, leafKey := leafPEM(t, c)
	for _, tc := range []struct {
		name               string
		cert, key, anchors []byte
		now                time.Time
		want               string
	}{
		{"does not chain to the anchors", other.IssuerCertPEM, other.IssuerKeyPEM, c.TrustAnchorPEM, testNow, "does not chain to the trust anchors"},
		{"expired", c.IssuerCertPEM, c.IssuerKeyPEM, c.TrustAnchorPEM, testNow.Add(366 * 24 * time.Hour), "expired at 2027-03-01T12:00:00Z"},
		{"not yet valid", c.IssuerCertPEM, c.IssuerKeyPEM, c.TrustAnchorPEM, testNow.Add(-time.Hour), "is not valid before"},
		{"key does not match", c.IssuerCertPEM, other.IssuerKeyPEM, c.TrustAnchorPEM, testNow, "private key does not match public key"},
		{"not a CA", leafCert, leafKey, c.TrustAnchorPEM, testNow, "is not a CA"},
		{"no certificate", []byte("hello"), c.IssuerKeyPEM, c.TrustAnchorPEM, testNow, "load issuer certificate: no PEM CERTIFICATE block found"},
		{"garbage key", c.IssuerCertPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), c.TrustAnchorPEM, testNow, "load issuer key"},
		{"no anchors", c.IssuerCertPEM, c.IssuerKeyPEM, nil, testNow, "load trust anchors: no PEM CERTIFICATE block found"},
		{"corrupt anchor", c.IssuerCertPEM, c.IssuerKeyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), testNow, "load trust anchors: parse certificate 1 of the bundle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadIssuer(tc.cert, tc.key, tc.anchors, tc.now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadIssuer error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestLoadIssuerAnchorBundle(t *testing.T) {
	// An anchor bundle with two anchors (as during anchor rotation) and
	// an issuer under the second.
	old, c := generate(t, GenerateOptions{}), generate(t, GenerateOptions{})
	bundle := append(append([]byte{}, old.TrustAnchorPEM...), c.TrustAnchorPEM...)
	iss, err := LoadIssuer(c.IssuerCertPEM, c.IssuerKeyPEM, bundle, testNow)
	if err != nil {
		t.Fatalf("LoadIssuer: %v", err)
	}
	if len(iss.Chain()) != 1 || !bytes.Equal(iss.Chain()[0], parseOne(t, c.IssuerCertPEM).Raw) {
		t.Errorf("Chain has %d certificates, want the issuer alone", len(iss.Chain()))
	}
}

func TestLoadIssuerWithIntermediate(t *testing.T) {
	// anchor -> middle -> issuer, with tls.crt holding issuer then middle.
	c := generate(t, GenerateOptions{})
	anchorPair := mustLoad(t, c)
	middleKey, issuerKey := newKey(t), newKey(t)
	middleTmpl, err := caTemplate("middle", testNow, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	middleTmpl.MaxPathLen, middleTmpl.MaxPathLenZero = 1, false
	middleDER, err := x509.CreateCertificate(rand.Reader, middleTmpl, anchorPair.cert, &middleKey.PublicKey, anchorPair.key)
	if err != nil {
		t.Fatal(err)
	}
	middle, _ := x509.ParseCertificate(middleDER)
	issuerTmpl, err := caTemplate("issuer", testNow, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	issuerDER, err := x509.CreateCertificate(rand.Reader, issuerTmpl, middle, &issuerKey.PublicKey, middleKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := encodeKey(issuerKey)
	certPEM := append(encodeCert(issuerDER), encodeCert(middleDER)...)
	iss, err := LoadIssuer(certPEM, keyPEM, c.TrustAnchorPEM, testNow)
	if err != nil {
		t.Fatalf("LoadIssuer: %v", err)
	}
	if ch := iss.Chain(); len(ch) != 2 || !bytes.Equal(ch[0], issuerDER) || !bytes.Equal(ch[1], middleDER) {
		t.Fatalf("Chain has %d certificates, want issuer then middle", len(ch))
	}
	// Without the middle certificate the issuer does not chain.
	if _, err := LoadIssuer(encodeCert(issuerDER), keyPEM, c.TrustAnchorPEM, testNow); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Errorf("LoadIssuer without the intermediate: %v, want a chain error", err)
	}
}

// anchorPair is the anchor's certificate and key.
type anchorPair struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func mustLoad(t *testing.T, c *Credentials) anchorPair {
	t.Helper()
	block, _ := pem.Decode(c.TrustAnchorKeyPEM)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return anchorPair{parseOne(t, c.TrustAnchorPEM), k.(crypto.Signer)}
}

func TestSign(t *testing.T) {
	c := generate(t, GenerateOptions{IssuerLifetime: 10 * time.Hour})
	iss, err := LoadIssuer(c.IssuerCertPEM, c.IssuerKeyPEM, c.TrustAnchorPEM, testNow)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		pub       func() crypto.PublicKey
		notAfter  time.Time
		wantAfter time.Time
	}{
		{"ecdsa", func() crypto.PublicKey { return &newKey(t).PublicKey }, testNow.Add(time.Hour), testNow.Add(time.Hour)},
		{"ed25519", func() crypto.PublicKey { p, _, _ := ed25519.GenerateKey(rand.Reader); return p }, testNow.Add(time.Hour), testNow.Add(time.Hour)},
		{"cut to the issuer's expiry", func() crypto.PublicKey { return &newKey(t).PublicKey }, testNow.Add(24 * time.Hour), testNow.Add(10 * time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := tc.pub()
			leaf, err := iss.Sign(pub, testID, testNow.Add(-time.Minute), tc.notAfter)
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if !leaf.NotAfter.Equal(tc.wantAfter) {
				t.Errorf("NotAfter %s, want %s", leaf.NotAfter, tc.wantAfter)
			}
			if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(pub) {
				t.Error("the leaf does not hold the given public key")
			}
			if leaf.IsCA {
				t.Error("the leaf is a CA")
			}
			intermediates := x509.NewCertPool()
			intermediates.AddCert(iss.Certificate())
			roots := x509.NewCertPool()
			roots.AddCert(parseOne(t, c.TrustAnchorPEM))
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := leaf.Verify(x509.VerifyOptions{DNSName: testID, Roots: roots, Intermediates: intermediates,
					CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
					t.Errorf("verify leaf for usage %v: %v", usage, err)
				}
			}
		})
	}
	if _, err := iss.Sign(&newKey(t).PublicKey, testID, testNow.Add(11*time.Hour), testNow.Add(12*time.Hour)); err == nil {
		t.Error("Sign after the issuer's expiry succeeded")
	}
}

func TestCheckCSR(t *testing.T) {
	key := newKey(t)
	good, err := NewCSR(testID, key)
	if err != nil {
		t.Fatal(err)
	}
	csr := func(tmpl x509.CertificateRequest, k crypto.Signer) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0xff
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	bigRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	uri, _ := url.Parse("spiffe://cluster.local/ns/shop/sa/web")
	other := "db.shop.serviceaccount.identity.sluice.cluster.local"
	for _, tc := range []struct {
		name string
		der  []byte
		want string // "" means accepted
	}{
		{"made by NewCSR", good, ""},
		{"no common name", csr(x509.CertificateRequest{DNSNames: []string{testID}}, key), ""},
		{"ed25519", csr(x509.CertificateRequest{DNSNames: []string{testID}}, edKey), ""},
		{"rsa 2048", csr(x509.CertificateRequest{DNSNames: []string{testID}}, bigRSA), ""},
		{"empty", nil, "no certificate signing request"},
		{"garbage", []byte("not a csr"), "parse the certificate signing request"},
		{"PEM instead of DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: good}), "parse the certificate signing request"},
		{"bad signature", badSig, "signature is invalid"},
		{"no SAN", csr(x509.CertificateRequest{Subject: pkix.Name{CommonName: testID}}, key), "has no DNS SAN"},
		{"two SANs", csr(x509.CertificateRequest{DNSNames: []string{testID, other}}, key), "has 2 DNS SANs"},
		{"IP SAN", csr(x509.CertificateRequest{DNSNames: []string{testID}, IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}}, key), "has 1 IP SAN(s) ([10.0.0.1])"},
		{"URI SAN", csr(x509.CertificateRequest{DNSNames: []string{testID}, URIs: []*url.URL{uri}}, key), "has 1 URI SAN(s)"},
		{"email SAN", csr(x509.CertificateRequest{DNSNames: []string{testID}, EmailAddresses: []string{"a@b.c"}}, key), "has 1 email SAN(s)"},
		{"wrong name", csr(x509.CertificateRequest{DNSNames: []string{other}}, key), `names "` + other + `", not the requested identity`},
		{"wrong common name", csr(x509.CertificateRequest{Subject: pkix.Name{CommonName: other}, DNSNames: []string{testID}}, key), "common name"},
		{"small RSA key", csr(x509.CertificateRequest{DNSNames: []string{testID}}, smallRSA), "RSA key has 1024 bits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CheckCSR(tc.der, testID)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CheckCSR: %v", err)
				}
				if len(got.DNSNames) != 1 || got.DNSNames[0] != testID {
					t.Errorf("DNSNames %q", got.DNSNames)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckCSR error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestNewCSRNoIdentity(t *testing.T) {
	if _, err := NewCSR("", newKey(t)); err == nil {
		t.Error("NewCSR without an identity succeeded")
	}
}

func TestClientTLSConfig(t *testing.T) {
	c := generate(t, GenerateOptions{})
	cfg, err := ClientTLSConfig(c.TrustAnchorPEM, testID)
	if err != nil {
		t.Fatalf("ClientTLSConfig: %v", err)
	}
	if cfg.ServerName != testID || cfg.RootCAs == nil {
		t.Errorf("ServerName %q, RootCAs %v", cfg.ServerName, cfg.RootCAs)
	}
	if _, err := ClientTLSConfig([]byte("nope"), testID); err == nil {
		t.Error("ClientTLSConfig with no anchors succeeded")
	}
	if _, err := ClientTLSConfig(c.TrustAnchorPEM, ""); err == nil {
		t.Error("ClientTLSConfig with no server identity succeeded")
	}
}

// FuzzCheckCSR feeds CheckCSR arbitrary bytes: it must never panic, and
// whatever it accepts must be a correctly signed request for the identity
// alone, which Sign turns into a leaf for that identity.
func FuzzCheckCSR(f *testing.F) {
	c, err := Generate(GenerateOptions{Now: testNow})
	if err != nil {
		f.Fatal(err)
	}
	iss, err := LoadIssuer(c.IssuerCertPEM, c.IssuerKeyPEM, c.TrustAnchorPEM, testNow)
	if err != nil {
		f.Fatal(err)
	}
	key := newKey(f)
	good, err := NewCSR(testID, key)
	if err != nil {
		f.Fatal(err)
	}
	two, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{testID, "x"}}, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(two)
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	empty, _ := asn1.Marshal(struct{}{})
	f.Add(empty)
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := CheckCSR(der, testID)
		if err != nil {
			return
		}
		if len(csr.DNSNames) != 1 || csr.DNSNames[0] != testID || len(csr.IPAddresses)+len(csr.URIs)+len(csr.EmailAddresses) != 0 {
			t.Fatalf("accepted a request with SANs %q %v %v %q", csr.DNSNames, csr.IPAddresses, csr.URIs, csr.EmailAddresses)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a request with a bad signature: %v", err)
		}
		leaf, err := iss.Sign(csr.PublicKey, testID, testNow, testNow.Add(time.Hour))
		if err != nil {
			t.Fatalf("Sign an accepted request: %v", err)
		}
		if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != testID {
			t.Fatalf("leaf names %q", leaf.DNSNames)
		}
	})
}
