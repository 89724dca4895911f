// Package identity obtains and renews the proxy's TLS identity. A Client
// generates an ECDSA P-256 key in memory (it never leaves the process),
// sends a certificate signing request for the proxy's identity with the
// pod's projected service-account token (read anew every time: the kubelet
// rotates it) to the identity service's Certify, over gRPC with TLS whose
// server must carry the identity service's name and chain to the trust
// anchors, and renews the certificate at 70 % of its remaining life. A
// failed request is retried with jittered exponential back-off, forever;
// meanwhile the current certificate is kept, and used until it expires.
// The proxy is ready once the first certificate is in.
package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// RenewFraction is how far into its remaining life (from when it arrived)
// a certificate is renewed.
const RenewFraction = 0.7

// CertificateFile is the file in Config.Dir that holds the current
// certificate chain (PEM, leaf first), for debugging.
const CertificateFile = "certificate.crt"

// Defaults of Config.
const (
	DefaultBackoffMin     = 500 * time.Millisecond
	DefaultBackoffMax     = 10 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// Config configures a Client. Name, Addr, ServerName, TrustAnchorsPEM
// and TokenFile are required.
type Config struct {
	// Name is the proxy's identity (meshmeta.IdentityName form).
	Name string
	// Addr is the identity service's host:port.
	Addr string
	// ServerName is the identity service's own TLS identity: its
	// certificate must carry it and chain to the trust anchors.
	ServerName string
	// TrustAnchorsPEM are the PEM trust anchors.
	TrustAnchorsPEM []byte
	// TokenFile holds the service-account token; it is read before every
	// request.
	TokenFile string
	// Dir, when not empty, receives the current certificate chain as
	// CertificateFile after each renewal; the key is never written.
	Dir string
	// BackoffMin and BackoffMax bound the delay after a failed request: it
	// starts at BackoffMin and doubles up to BackoffMax, each delay drawn
	// uniformly from its upper half. 0: DefaultBackoffMin and
	// DefaultBackoffMax. BackoffMin is also the shortest wait before a
	// renewal.
	BackoffMin, BackoffMax time.Duration
	// RequestTimeout bounds one Certify call, connection included; 0:
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Dial connects to the identity service's resolved address; nil:
	// gRPC's own dialer.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Now tells the time; nil: time.Now.
	Now func() time.Time
	// After waits; nil: time.After. Tests replace it to see and control
	// the delays the client asks for.
	After func(time.Duration) <-chan time.Time
	// Logger receives the client's log lines (component=identity); nil
	// discards them.
	Logger *slog.Logger
	// Registerer receives identity_cert_expiration_timestamp_seconds and
	// identity_cert_refresh_total; nil registers them nowhere.
	Registerer prometheus.Registerer
}

// Client holds the proxy's key and current certificate and keeps the
// certificate fresh while Run runs. Its methods are safe for concurrent
// use.
type Client struct {
	cfg    Config
	log    *slog.Logger
	key    *ecdsa.PrivateKey
	csr    []byte
	roots  *x509.CertPool
	tlsCfg *tls.Config // to the identity service

	cur   atomic.Pointer[tls.Certificate] // nil until the first certificate
	ready chan struct{}                   // closed at the first certificate
	once  sync.Once

	refreshes *prometheus.CounterVec
	dirErr    string // the last error writing Dir, logged once
}

// New checks cfg, generates the key and the signing request, and returns
// a Client without a certificate; Run obtains it.
func New(cfg Config) (*Client, error) {
	switch {
	case cfg.Name == "":
		return nil, errors.New("identity client: no local identity name")
	case cfg.Addr == "":
		return nil, errors.New("identity client: no identity service address")
	case cfg.TokenFile == "":
		return nil, errors.New("identity client: no token file")
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	cfg.BackoffMax = max(cfg.BackoffMax, cfg.BackoffMin)
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tlsCfg, err := pki.ClientTLSConfig(cfg.TrustAnchorsPEM, cfg.ServerName)
	if err != nil {
		return nil, fmt.Errorf("identity client: %w", err)
	}
	anchors, err := pki.ParseCertificates(cfg.TrustAnchorsPEM)
	if err != nil {
		return nil, fmt.Errorf("identity client: load trust anchors: %w", err)
	}
	roots := x509.NewCertPool()
	for _, a := range anchors {
		roots.AddCert(a)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity client: generate key: %w", err)
	}
	csr, err := pki.NewCSR(cfg.Name, key)
	if err != nil {
		return nil, fmt.Errorf("identity client: %w", err)
	}
	c := &Client{
		cfg:    cfg,
		log:    cfg.Logger.With("component", "identity"),
		key:    key,
		csr:    csr,
		roots:  roots,
		tlsCfg: tlsCfg,
		ready:  make(chan struct{}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "identity_cert_refresh_total",
			Help: "Certificate requests to the identity service, by result (success or failure).",
		}, []string{"result"}),
	}
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "identity_cert_expiration_timestamp_seconds",
		Help: "When the proxy's current certificate expires, in seconds since the Unix epoch; 0 before the first certificate.",
	}, func() float64 {
		if cert := c.cur.Load(); cert != nil {
			return float64(cert.Leaf.NotAfter.Unix())
		}
		return 0
	})
	// Both results exist from the start, so rate() sees the first failure.
	c.refreshes.WithLabelValues("success")
	c.refreshes.WithLabelValues("failure")
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.refreshes, expiry} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("identity client: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Name returns the proxy's identity.
func (c *Client) Name() string { return c.cfg.Name }

// Roots returns the trust anchors as a pool.
func (c *Client) Roots() *x509.CertPool { return c.roots }

// Certificate returns the current certificate (chain and key), or nil
// before the first one. It is kept after it expires until a new one
// arrives.
func (c *Client) Certificate() *tls.Certificate { return c.cur.Load() }

// Ready reports whether the first certificate has arrived.
func (c *Client) Ready() bool { return c.cur.Load() != nil }

// WaitReady waits until the first certificate has arrived or ctx ends.
func (c *Client) WaitReady(ctx context.Context) error {
	select {
	case <-c.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run requests certificates until ctx ends: the first at once, each next
// one at RenewFraction of the current one's remaining life, and after a
// failure again after a back-off delay, never giving up.
func (c *Client) Run(ctx context.Context) {
	failures := 0
	for {
		next, err := c.refresh(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			next = c.backoff(failures)
			c.failed(err, failures, next)
		} else {
			failures = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.After(next):
		}
	}
}

// backoff returns the delay after the n-th failure in a row: BackoffMin
// doubled n-1 times, at most BackoffMax, drawn from its upper half.
func (c *Client) backoff(n int) time.Duration {
	d := c.cfg.BackoffMin
	for i := 1; i < n && d < c.cfg.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, c.cfg.BackoffMax)
	return d/2 + mrand.N(d/2+1)
}

// failed counts and logs a failed request.
func (c *Client) failed(err error, failures int, retry time.Duration) {
	c.refreshes.WithLabelValues("failure").Inc()
	cert := c.cur.Load()
	switch {
	case cert == nil:
		c.log.Warn("identity: certificate request failed; no certificate yet, so the proxy is not ready",
			"identity", c.cfg.Name, "error", err.Error(), "failures", failures, "retry_in", retry)
	case !c.cfg.Now().Before(cert.Leaf.NotAfter):
		c.log.Error("identity: certificate request failed and the current certificate has expired; peers refuse it until one is issued",
			"identity", c.cfg.Name, "error", err.Error(), "failures", failures, "retry_in", retry,
			"expired_at", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	default:
		c.log.Warn("identity: certificate request failed; keeping the current certificate until it expires",
			"identity", c.cfg.Name, "error", err.Error(), "failures", failures, "retry_in", retry,
			"valid_until", cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// refresh requests a certificate and, when one arrives, makes it current
// and returns when to renew it.
func (c *Client) refresh(ctx context.Context) (time.Duration, error) {
	cert, err := c.certify(ctx)
	if err != nil {
		return 0, err
	}
	now := c.cfg.Now()
	renew := max(time.Duration(float64(cert.Leaf.NotAfter.Sub(now))*RenewFraction), c.cfg.BackoffMin)
	first := c.cur.Swap(cert) == nil
	c.refreshes.WithLabelValues("success").Inc()
	c.once.Do(func() { close(c.ready) })
	c.log.Info("identity: certificate issued", "identity", c.cfg.Name, "first", first,
		"serial", cert.Leaf.SerialNumber.Text(16), "valid_until", cert.Leaf.NotAfter.UTC().Format(time.RFC3339Nano),
		"renew_in", renew)
	c.writeDir(cert)
	return renew, nil
}

// certify makes one Certify call and checks its answer.
func (c *Client) certify(ctx context.Context) (*tls.Certificate, error) {
	token, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("read the service-account token: %w", err)
	}
	token = bytes.TrimSpace(token)
	if len(token) == 0 {
		return nil, fmt.Errorf("read the service-account token: %s is empty", c.cfg.TokenFile)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(c.tlsCfg))}
	if c.cfg.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(c.cfg.Dial))
	}
	// A connection per request: one every few hours, and no reconnection
	// back-off of gRPC's own between ours.
	cc, err := grpc.NewClient(c.cfg.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to the identity service %s: %w", c.cfg.Addr, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := pb.NewIdentityClient(cc).Certify(ctx, &pb.CertifyRequest{
		Identity:                  c.cfg.Name,
		Token:                     token,
		CertificateSigningRequest: c.csr,
	})
	if err != nil {
		return nil, fmt.Errorf("certify %s at %s: %w", c.cfg.Name, c.cfg.Addr, err)
	}
	return c.check(resp)
}

// check verifies that an answer is a certificate for our key and name that
// chains to the trust anchors now.
func (c *Client) check(resp *pb.CertifyResponse) (*tls.Certificate, error) {
	leaf, err := x509.ParseCertificate(resp.GetLeafCertificate())
	if err != nil {
		return nil, fmt.Errorf("parse the issued certificate: %w", err)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&c.key.PublicKey) {
		return nil, errors.New("the issued certificate is not for the proxy's key")
	}
	if !slices.Contains(leaf.DNSNames, c.cfg.Name) {
		return nil, fmt.Errorf("the issued certificate names %q, not %s", leaf.DNSNames, c.cfg.Name)
	}
	inter := x509.NewCertPool()
	chain := [][]byte{leaf.Raw}
	for i, der := range resp.GetIntermediateCertificates() {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("parse intermediate certificate %d: %w", i+1, err)
		}
		inter.AddCert(ic)
		chain = append(chain, der)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         c.roots,
		Intermediates: inter,
		CurrentTime:   c.cfg.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("the issued certificate does not chain to the trust anchors: %w", err)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: c.key, Leaf: leaf}, nil
}

// writeDir writes the certificate chain to Dir, replacing the file in one
// rename. Failures are logged, once per distinct error.
func (c *Client) writeDir(cert *tls.Certificate) {
	if c.cfg.Dir == "" {
		return
	}
	err := func() error {
		var b bytes.Buffer
		for _, der := range cert.Certificate {
			if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der}); err != nil {
				return err
			}
		}
		f, err := os.CreateTemp(c.cfg.Dir, "."+CertificateFile+"-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		if _, err := f.Write(b.Bytes()); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if err := os.Chmod(f.Name(), 0o644); err != nil {
			return err
		}
		return os.Rename(f.Name(), filepath.Join(c.cfg.Dir, CertificateFile))
	}()
	if err != nil && err.Error() != c.dirErr {
		c.dirErr = err.Error()
		c.log.Warn("identity: cannot write the certificate for debugging", "dir", c.cfg.Dir, "error", err.Error())
	}
}
