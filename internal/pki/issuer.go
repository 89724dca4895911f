package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Issuer is an intermediate CA that signs proxies' leaf certificates. It
// was checked, when loaded, to be a CA that chains to the trust anchors it
// was loaded with. An Issuer is immutable and safe for concurrent use.
type Issuer struct {
	cert   *x509.Certificate
	signer crypto.Signer
	// chain is the issuer and any intermediates between it and a trust
	// anchor, DER, issuer first, anchor excluded.
	chain [][]byte
}

// LoadIssuer loads an issuer from its PEM certificate (tls.crt: the
// issuer's certificate first, then any intermediates between it and the
// anchors) and PEM private key (tls.key), and checks it against the PEM
// trust anchor bundle (ca-bundle.crt) at time now: the key must match the
// certificate, the certificate must be a CA allowed to sign certificates,
// valid at now, and chain to one of the anchors. The errors say which of
// these failed.
func LoadIssuer(certPEM, keyPEM, anchorsPEM []byte, now time.Time) (*Issuer, error) {
	anchors, err := ParseCertificates(anchorsPEM)
	if err != nil {
		return nil, fmt.Errorf("load trust anchors: %w", err)
	}
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load issuer certificate: %w", err)
	}
	cert := certs[0]
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load issuer key for %q: %w", cert.Subject, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("issuer key of type %T cannot sign", pair.PrivateKey)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("issuer certificate %q is not a CA (its basic constraints lack CA:TRUE)", cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("issuer certificate %q may not sign certificates (its key usage lacks certSign)", cert.Subject)
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("issuer certificate %q is not valid before %s", cert.Subject, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("issuer certificate %q expired at %s", cert.Subject, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         certPool(anchors),
		Intermediates: certPool(certs[1:]),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("issuer certificate %q (issued by %q) does not chain to the trust anchors (%s): %w",
			cert.Subject, cert.Issuer, subjects(anchors), err)
	}
	var chain [][]byte
	for _, c := range chains[0][:len(chains[0])-1] {
		chain = append(chain, c.Raw)
	}
	return &Issuer{cert: cert, signer: signer, chain: chain}, nil
}

// Certificate returns the issuer's certificate.
func (i *Issuer) Certificate() *x509.Certificate { return i.cert }

// Chain returns the DER certificates that link a leaf signed by the
// issuer to the trust anchors: the issuer first, then any intermediates
// from its tls.crt that the chain needs; never an anchor. The caller must
// not modify them.
func (i *Issuer) Chain() [][]byte { return i.chain }

// Sign issues a leaf certificate for identity (its DNS SAN and common
// name) to pub, valid from notBefore to notAfter, for server and client
// authentication. notAfter is cut to the issuer's own expiry. Only the
// public key comes from the caller: whatever else a signing request asked
// for is not copied.
func (i *Issuer) Sign(pub crypto.PublicKey, identity string, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	if identity == "" {
		return nil, errors.New("sign a leaf certificate: no identity")
	}
	if notAfter.After(i.cert.NotAfter) {
		notAfter = i.cert.NotAfter
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("sign a leaf certificate for %q: it would expire (%s) before it starts (%s)", identity,
			notAfter.UTC().Format(time.RFC3339), notBefore.UTC().Format(time.RFC3339))
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: identity},
		DNSNames:              []string{identity},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.cert, pub, i.signer)
	if err != nil {
		return nil, fmt.Errorf("sign a leaf certificate for %q: %w", identity, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse the leaf certificate for %q: %w", identity, err)
	}
	return leaf, nil
}

// subjects lists the certificates' subjects for error messages.
func subjects(certs []*x509.Certificate) string {
	s := make([]string, len(certs))
	for i, c := range certs {
		s[i] = fmt.Sprintf("%q", c.Subject.String())
	}
	return strings.Join(s, ", ")
}
