package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// Default lifetimes of generated credentials.
const (
	DefaultAnchorLifetime = 10 * 365 * 24 * time.Hour
	DefaultIssuerLifetime = 365 * 24 * time.Hour
	// backdate is how far before "now" generated certificates start, so
	// that a node whose clock is a little behind accepts them.
	backdate = 5 * time.Minute
)

// GenerateOptions tune Generate and GenerateIssuer. The zero value is
// fine.
type GenerateOptions struct {
	// TrustDomain goes into the certificates' names:
	// root.sluice.<domain> and identity.sluice.<domain>. Default
	// meshmeta.DefaultTrustDomain.
	TrustDomain string
	// AnchorLifetime is the trust anchor's; default DefaultAnchorLifetime.
	AnchorLifetime time.Duration
	// IssuerLifetime is the issuer's; default DefaultIssuerLifetime.
	IssuerLifetime time.Duration
	// Now is the time the certificates are made at; zero means time.Now().
	Now time.Time
}

func (o GenerateOptions) withDefaults() GenerateOptions {
	if o.TrustDomain == "" {
		o.TrustDomain = meshmeta.DefaultTrustDomain
	}
	if o.AnchorLifetime == 0 {
		o.AnchorLifetime = DefaultAnchorLifetime
	}
	if o.IssuerLifetime == 0 {
		o.IssuerLifetime = DefaultIssuerLifetime
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	return o
}

// Credentials are a generated trust anchor and issuer, PEM-encoded as
// they are mounted into the identity service: TrustAnchorPEM is the
// ConfigMap's ca-bundle.crt, IssuerCertPEM and IssuerKeyPEM the Secret's
// tls.crt and tls.key. TrustAnchorKeyPEM is needed only to make the next
// issuer (GenerateIssuer); keep it out of the cluster.
type Credentials struct {
	TrustAnchorPEM    []byte
	TrustAnchorKeyPEM []byte
	IssuerCertPEM     []byte
	IssuerKeyPEM      []byte
}

// Generate makes a self-signed trust anchor and an issuer signed by it,
// both with ECDSA P-256 keys. The anchor may sign one level of CAs below
// it (the issuer); the issuer may sign only leaves.
func Generate(o GenerateOptions) (*Credentials, error) {
	o = o.withDefaults()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate trust anchor key: %w", err)
	}
	tmpl, err := caTemplate("root.sluice."+o.TrustDomain, o.Now, o.AnchorLifetime, 1)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("sign trust anchor: %w", err)
	}
	anchor, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse trust anchor: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	certPEM, issuerKeyPEM, err := generateIssuer(anchor, key, o)
	if err != nil {
		return nil, err
	}
	return &Credentials{
		TrustAnchorPEM:    encodeCert(der),
		TrustAnchorKeyPEM: keyPEM,
		IssuerCertPEM:     certPEM,
		IssuerKeyPEM:      issuerKeyPEM,
	}, nil
}

// GenerateIssuer makes a new issuer (ECDSA P-256) signed by the trust
// anchor whose certificate and key are given, for rotating the issuer
// without changing the anchor. It returns the issuer's certificate and key
// as PEM.
func GenerateIssuer(anchorCertPEM, anchorKeyPEM []byte, o GenerateOptions) (certPEM, keyPEM []byte, err error) {
	o = o.withDefaults()
	pair, err := tls.X509KeyPair(anchorCertPEM, anchorKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("load trust anchor key pair: %w", err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("trust anchor key of type %T cannot sign", pair.PrivateKey)
	}
	if !pair.Leaf.IsCA {
		return nil, nil, fmt.Errorf("trust anchor %q is not a CA", pair.Leaf.Subject)
	}
	return generateIssuer(pair.Leaf, signer, o)
}

func generateIssuer(anchor *x509.Certificate, anchorKey crypto.Signer, o GenerateOptions) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate issuer key: %w", err)
	}
	tmpl, err := caTemplate("identity.sluice."+o.TrustDomain, o.Now, o.IssuerLifetime, 0)
	if err != nil {
		return nil, nil, err
	}
	if tmpl.NotAfter.After(anchor.NotAfter) {
		tmpl.NotAfter = anchor.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, anchor, &key.PublicKey, anchorKey)
	if err != nil {
		return nil, nil, fmt.Errorf("sign issuer: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// caTemplate is a CA certificate named cn, valid for lifetime from now
// (backdated), that may sign maxPathLen levels of CAs below it.
func caTemplate(cn string, now time.Time, lifetime time.Duration, maxPathLen int) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            maxPathLen,
		MaxPathLenZero:        maxPathLen == 0,
	}, nil
}

// newSerial returns a random 128-bit serial number.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n, nil
}

// encodeKey returns key as a PEM PKCS #8 PRIVATE KEY block.
func encodeKey(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}
