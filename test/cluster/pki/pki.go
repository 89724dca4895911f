// Package pki makes and keeps the local cluster's certificates and keys: the
// certificate authorities, the serving and client certificates of the
// components, the service-account signing key, and kubeconfig files.
//
// Every function reuses what it finds on disk when it is still what was
// asked for (same issuer, subject, names, addresses and usages, and not
// about to expire), so a cluster restarted over an existing directory keeps
// its identity and the kubeconfigs handed out stay valid. Keys are ECDSA
// P-256; files are PEM, keys mode 0600, written atomically.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Validity periods, and how long before expiry a certificate is replaced.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	CertValidity = 365 * 24 * time.Hour
	RenewBefore  = 30 * 24 * time.Hour
)

// Pair is the paths of a certificate and its private key.
type Pair struct {
	Cert, Key string
}

// CA is a certificate authority whose certificate and key are on disk.
type CA struct {
	Pair
	cert *x509.Certificate
	key  crypto.Signer
}

// Certificate returns the authority's certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Usage is what a certificate may be used for.
type Usage int

// Usages of leaf certificates.
const (
	// Client authenticates a client to a server (TLS client auth).
	Client Usage = 1 << iota
	// Server authenticates a server (TLS server auth).
	Server
)

// CertSpec describes a leaf certificate.
type CertSpec struct {
	// Name is the files' base name: <dir>/<Name>.crt and <dir>/<Name>.key.
	Name string
	// CommonName and Organization make the subject; for a Kubernetes client
	// certificate they are the user name and groups.
	CommonName   string
	Organization []string
	// DNSNames and IPs are the subject alternative names.
	DNSNames []string
	IPs      []netip.Addr
	// Usage is Client, Server or both.
	Usage Usage
}

// EnsureCA returns the authority <dir>/<name>.crt and .key, creating both
// when they are missing, unreadable, not a CA named commonName, or about
// to expire. A new CA invalidates every certificate it issued before:
// Issue replaces those as it meets them.
func EnsureCA(dir, name, commonName string) (*CA, error) {
	p := Pair{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
	if cert, key, err := load(p); err == nil && cert.IsCA && cert.Subject.CommonName == commonName && fresh(cert) {
		return &CA{Pair: p, cert: cert, key: key}, nil
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %s: %w", name, err)
	}
	if err := store(p, der, key); err != nil {
		return nil, err
	}
	return &CA{Pair: p, cert: cert, key: key}, nil
}

// Issue returns the certificate s in dir, signed by ca, issuing it when it
// is missing, unreadable, signed by another authority, not exactly s, or
// about to expire.
func (ca *CA) Issue(dir string, s CertSpec) (Pair, error) {
	p := Pair{Cert: filepath.Join(dir, s.Name+".crt"), Key: filepath.Join(dir, s.Name+".key")}
	if cert, _, err := load(p); err == nil && ca.issued(cert) && matches(cert, s) && fresh(cert) {
		return p, nil
	}
	key, err := newKey()
	if err != nil {
		return Pair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: s.CommonName, Organization: s.Organization},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(CertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  extKeyUsages(s.Usage),
		DNSNames:     s.DNSNames,
	}
	for _, ip := range s.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("issue certificate %s: %w", s.Name, err)
	}
	if err := store(p, der, key); err != nil {
		return Pair{}, err
	}
	return p, nil
}

// EnsureKey returns the paths of the key pair <dir>/<name>.key (private,
// PKCS#8) and <dir>/<name>.pub (public, PKIX), creating them when either is
// missing or they do not belong together. The API server signs
// service-account tokens with it.
func EnsureKey(dir, name string) (Pair, error) {
	p := Pair{Cert: filepath.Join(dir, name+".pub"), Key: filepath.Join(dir, name+".key")}
	if key, err := readKey(p.Key); err == nil {
		if pub, err := readPublicKey(p.Cert); err == nil && samePublic(pub, key.Public()) {
			return p, nil
		}
	}
	key, err := newKey()
	if err != nil {
		return Pair{}, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return Pair{}, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return Pair{}, fmt.Errorf("encode public key %s: %w", name, err)
	}
	if err := WriteFile(p.Key, keyPEM, 0o600); err != nil {
		return Pair{}, err
	}
	if err := WriteFile(p.Cert, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return Pair{}, err
	}
	return p, nil
}

func (ca *CA) issued(cert *x509.Certificate) bool {
	return cert.CheckSignatureFrom(ca.cert) == nil && bytes.Equal(cert.RawIssuer, ca.cert.RawSubject)
}

func matches(cert *x509.Certificate, s CertSpec) bool {
	ips := make([]netip.Addr, 0, len(cert.IPAddresses))
	for _, ip := range cert.IPAddresses {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return false
		}
		ips = append(ips, a.Unmap())
	}
	want := make([]netip.Addr, 0, len(s.IPs))
	for _, ip := range s.IPs {
		want = append(want, ip.Unmap())
	}
	return cert.Subject.CommonName == s.CommonName &&
		slices.Equal(cert.Subject.Organization, s.Organization) &&
		slices.Equal(cert.DNSNames, s.DNSNames) &&
		slices.Equal(ips, want) &&
		slices.Equal(cert.ExtKeyUsage, extKeyUsages(s.Usage))
}

// samePublic reports whether a and b are the same public key.
func samePublic(a, b crypto.PublicKey) bool {
	eq, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && eq.Equal(b)
}

func fresh(cert *x509.Certificate) bool {
	now := time.Now()
	return now.After(cert.NotBefore) && now.Add(RenewBefore).Before(cert.NotAfter)
}

func extKeyUsages(u Usage) []x509.ExtKeyUsage {
	var out []x509.ExtKeyUsage
	if u&Server != 0 {
		out = append(out, x509.ExtKeyUsageServerAuth)
	}
	if u&Client != 0 {
		out = append(out, x509.ExtKeyUsageClientAuth)
	}
	return out
}

func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("read random serial: %v", err)) // crypto/rand does not fail on Linux
	}
	return n
}

func load(p Pair) (*x509.Certificate, crypto.Signer, error) {
	der, err := readPEM(p.Cert, "CERTIFICATE")
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", p.Cert, err)
	}
	key, err := readKey(p.Key)
	if err != nil {
		return nil, nil, err
	}
	if !samePublic(key.Public(), cert.PublicKey) {
		return nil, nil, fmt.Errorf("check %s: key does not match %s", p.Key, p.Cert)
	}
	return cert, key, nil
}

// readPEM returns the content of the first PEM block of a file, which must
// be of type typ.
func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != typ {
		return nil, fmt.Errorf("read %s: no PEM %s", path, typ)
	}
	return block.Bytes, nil
}

func readKey(path string) (crypto.Signer, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("parse %s: %T is not a signing key", path, key)
	}
	return signer, nil
}

func readPublicKey(path string) (crypto.PublicKey, error) {
	der, err := readPEM(path, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return pub, nil
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// store writes the key first: a certificate on disk always has its key.
func store(p Pair, certDER []byte, key crypto.Signer) error {
	keyPEM, err := encodeKey(key)
	if err != nil {
		return err
	}
	if err := WriteFile(p.Key, keyPEM, 0o600); err != nil {
		return err
	}
	return WriteFile(p.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o644)
}

// WriteFile writes data to path through a temporary file and a rename, so
// readers see the old or the new content, never a part; it creates the
// directory when missing.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create directory of %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), mode)); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
