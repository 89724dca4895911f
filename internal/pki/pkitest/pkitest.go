// Package pkitest makes a mesh trust anchor and issuer for tests, and
// certificates from them, with the real internal/pki code.
package pkitest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/internal/pki"
)

// CA is a trust anchor with its issuer.
type CA struct {
	Issuer *pki.Issuer
	// Roots holds the trust anchor.
	Roots *x509.CertPool
}

// New generates a trust anchor and an issuer valid from two days ago, so
// that certificates can be issued in the past (expired ones).
func New(t testing.TB) *CA {
	t.Helper()
	creds, err := pki.Generate(pki.GenerateOptions{Now: time.Now().Add(-48 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := pki.LoadIssuer(creds.IssuerCertPEM, creds.IssuerKeyPEM, creds.TrustAnchorPEM, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	anchors, err := pki.ParseCertificates(creds.TrustAnchorPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(anchors[0])
	return &CA{Issuer: iss, Roots: roots}
}

// Issue returns a certificate for identity id, valid from notBefore to
// notAfter, with a new P-256 key and the issuer's chain.
func (c *CA) Issue(t testing.TB, id string, notBefore, notAfter time.Time) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := c.Issuer.Sign(&key.PublicKey, id, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: append([][]byte{leaf.Raw}, c.Issuer.Chain()...), PrivateKey: key, Leaf: leaf}
}

// Valid returns a certificate for id valid from a minute ago for an hour.
func (c *CA) Valid(t testing.TB, id string) *tls.Certificate {
	return c.Issue(t, id, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
}
