package pki

import (
	"crypto/tls"
	"errors"
	"fmt"
)

// ClientTLSConfig returns the TLS configuration for a client of a Sluice
// server whose identity is serverIdentity (such as the identity service's,
// before the client has a certificate of its own): the server's chain must
// end at one of the PEM trust anchors and name serverIdentity.
func ClientTLSConfig(anchorsPEM []byte, serverIdentity string) (*tls.Config, error) {
	if serverIdentity == "" {
		return nil, errors.New("client TLS configuration: no server identity")
	}
	anchors, err := ParseCertificates(anchorsPEM)
	if err != nil {
		return nil, fmt.Errorf("load trust anchors: %w", err)
	}
	return &tls.Config{
		RootCAs:    certPool(anchors),
		ServerName: serverIdentity,
		MinVersion: tls.VersionTLS12,
	}, nil
}
