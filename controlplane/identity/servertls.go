package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"github.com/sluice-mesh/sluice/internal/pki"
)

// renewFraction is how far into its life the server's own certificate is
// renewed, as proxies renew theirs.
const renewFraction = 0.7

// ServerTLSConfig returns a TLS configuration for serving the identity
// API as serverIdentity (such as
// meshmeta.IdentityName("sluice-identity", "sluice", trustDomain)), so that
// proxies, which hold only the trust anchors before their first
// certificate, can check whom they send their token to. The service
// issues its own certificate from its current issuer, lasting
// CertLifetime, and issues a new one on the first handshake after 70 % of
// its life or after an issuer rotation. It asks for no client certificate.
func (s *Service) ServerTLSConfig(serverIdentity string) *tls.Config {
	sc := &selfCert{svc: s, identity: serverIdentity}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return sc.get()
		},
	}
}

// selfCert is the service's own serving certificate.
type selfCert struct {
	svc      *Service
	identity string

	mu      sync.Mutex
	issuer  *pki.Issuer
	cert    *tls.Certificate
	renewAt time.Time
}

func (c *selfCert) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	iss := c.svc.currentIssuer()
	now := c.svc.cfg.Now()
	if c.cert != nil && c.issuer == iss && now.Before(c.renewAt) {
		return c.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate the identity service's key: %w", err)
	}
	leaf, err := iss.Sign(&key.PublicKey, c.identity, now.Add(-c.svc.cfg.ClockSkew), now.Add(c.svc.cfg.CertLifetime))
	if err != nil {
		c.svc.log.Error("cannot issue the identity service's own certificate", "identity", c.identity, "error", err.Error())
		return nil, err
	}
	chain := append([][]byte{leaf.Raw}, iss.Chain()...)
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	c.issuer = iss
	c.cert = &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
	c.renewAt = leaf.NotBefore.Add(time.Duration(float64(life) * renewFraction))
	c.svc.log.Info("issued the identity service's own certificate", "identity", c.identity,
		"serial", leaf.SerialNumber.Text(16), "valid_until", leaf.NotAfter.UTC().Format(time.RFC3339))
	return c.cert, nil
}
