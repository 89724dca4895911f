package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
)

// minRSABits is the smallest RSA key CheckCSR accepts.
const minRSABits = 2048

// NewCSR returns a DER certificate signing request for identity, signed
// by key: identity is its common name and its only subject alternative
// name (a DNS name), as CheckCSR requires. The proxy sends it to the
// identity service's Certify.
func NewCSR(identity string, key crypto.Signer) ([]byte, error) {
	if identity == "" {
		return nil, errors.New("make a certificate signing request: no identity")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: identity},
		DNSNames: []string{identity},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("make a certificate signing request for %q: %w", identity, err)
	}
	return der, nil
}

// CheckCSR parses a DER certificate signing request and checks that it may
// be signed for identity: its signature is valid, its public key is ECDSA
// (P-256, P-384 or P-521), Ed25519 or RSA of at least 2048 bits, it has
// exactly one DNS subject alternative name, equal to identity, no IP, URI
// or email SAN, and its common name is empty or identity. Other extensions
// it asks for are ignored (Issuer.Sign copies only the public key).
func CheckCSR(der []byte, identity string) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("no certificate signing request")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parse the certificate signing request (DER PKCS #10 expected): %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("the certificate signing request's signature is invalid: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if n := len(csr.IPAddresses); n > 0 {
		return nil, fmt.Errorf("the certificate signing request has %d IP SAN(s) (%v); only the DNS SAN %q is allowed", n, csr.IPAddresses, identity)
	}
	if n := len(csr.URIs); n > 0 {
		return nil, fmt.Errorf("the certificate signing request has %d URI SAN(s) (%v); only the DNS SAN %q is allowed", n, csr.URIs, identity)
	}
	if n := len(csr.EmailAddresses); n > 0 {
		return nil, fmt.Errorf("the certificate signing request has %d email SAN(s) (%q); only the DNS SAN %q is allowed", n, csr.EmailAddresses, identity)
	}
	switch n := len(csr.DNSNames); {
	case n == 0:
		return nil, fmt.Errorf("the certificate signing request has no DNS SAN; it must have exactly one, %q", identity)
	case n > 1:
		return nil, fmt.Errorf("the certificate signing request has %d DNS SANs (%q); it must have exactly one, %q", n, csr.DNSNames, identity)
	}
	if csr.DNSNames[0] != identity {
		return nil, fmt.Errorf("the certificate signing request names %q, not the requested identity %q", csr.DNSNames[0], identity)
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != identity {
		return nil, fmt.Errorf("the certificate signing request's common name %q is not the requested identity %q", cn, identity)
	}
	return csr, nil
}

// checkPublicKey accepts the key types and sizes leaves may have.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("the certificate signing request's ECDSA key is on an unsupported curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("the certificate signing request's RSA key has %d bits; at least %d are needed", k.N.BitLen(), minRSABits)
		}
		return nil
	}
	return fmt.Errorf("the certificate signing request's public key type %T is not supported (ECDSA, Ed25519 or RSA expected)", pub)
}
