// Package pki is the certificate side of Sluice's identity: generating a
// trust anchor and an issuer (for `meshctl install`, the Helm chart and
// tests), loading and checking an issuer against its trust anchors, signing
// proxies' leaf certificates, and, for the proxy, making the certificate
// signing request for its identity and the TLS configuration to reach the
// identity service. It talks to no API server and holds no state.
package pki

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// pemCertificate and pemPrivateKey are the PEM block types this package
// writes.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
)

// ParseCertificates parses every CERTIFICATE block of a PEM bundle (such as
// the trust anchors' ca-bundle.crt), in order. Blocks of other types are
// skipped; a bundle without any certificate, or with one that does not
// parse, is an error.
func ParseCertificates(pemBytes []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := pemBytes
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d of the bundle: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// certPool returns a pool holding certs.
func certPool(certs []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

// encodeCert returns der as a PEM CERTIFICATE block.
func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
}
