// Package identity is Sluice's identity service: a CA that certifies
// proxies. A proxy sends Certify its identity name, its pod's
// service-account token (audience identity.sluice.io) and a certificate
// signing request; the service checks the token with a TokenReview, checks
// that the token's service account is the one the identity names and that
// the signing request asks for that name alone, and returns a short-lived
// leaf certificate signed by the issuer, with the issuer as intermediate.
//
// The issuer's certificate and key and the trust anchors are files, as
// mounted from the Secret IssuerSecretName and the ConfigMap
// TrustRootsConfigMapName. The service polls them and, when they change
// and hold a valid issuer, signs with the new issuer from then on, so an
// issuer is rotated without restarting anything: proxies keep trusting the
// same anchors. The certificate side (generating anchors and issuers,
// checking signing requests, signing) is in the pki subpackage.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	pb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// Where the issuer and the trust anchors come from in a cluster, and where
// the identity service's pod mounts them.
const (
	// IssuerSecretName is the kubernetes.io/tls Secret, in the control
	// plane's namespace, holding the issuer's certificate (IssuerCertKey)
	// and key (IssuerKeyKey).
	IssuerSecretName = "sluice-identity-issuer"
	IssuerCertKey    = "tls.crt"
	IssuerKeyKey     = "tls.key"
	// TrustRootsConfigMapName is the ConfigMap, in the control plane's
	// namespace, whose TrustRootsKey holds the PEM trust anchor bundle
	// that every proxy trusts.
	TrustRootsConfigMapName = "sluice-identity-trust-roots"
	TrustRootsKey           = "ca-bundle.crt"

	// IssuerDir and TrustRootsDir are where the Secret and the ConfigMap
	// are mounted; the Default*File constants are the files in them.
	IssuerDir               = "/var/run/sluice/identity/issuer"
	TrustRootsDir           = "/var/run/sluice/identity/trust-roots"
	DefaultIssuerCertFile   = IssuerDir + "/" + IssuerCertKey
	DefaultIssuerKeyFile    = IssuerDir + "/" + IssuerKeyKey
	DefaultTrustAnchorsFile = TrustRootsDir + "/" + TrustRootsKey
)

// Defaults of Config.
const (
	DefaultCertLifetime   = 24 * time.Hour
	DefaultClockSkew      = 20 * time.Second
	DefaultReloadInterval = 5 * time.Second
)

// serviceAccountPrefix starts the user name of a service-account token.
const serviceAccountPrefix = "system:serviceaccount:"

// Config configures the identity service.
type Config struct {
	// IssuerCertFile, IssuerKeyFile and TrustAnchorsFile are the PEM
	// files of the issuer's certificate (then any intermediates), its key
	// and the trust anchor bundle. Default: the Default*File constants.
	IssuerCertFile   string
	IssuerKeyFile    string
	TrustAnchorsFile string
	// TrustDomain ends every identity name; default
	// meshmeta.DefaultTrustDomain.
	TrustDomain string
	// CertLifetime is how long issued certificates last; default
	// DefaultCertLifetime (24 h). They never outlast the issuer.
	CertLifetime time.Duration
	// ClockSkew backdates issued certificates' NotBefore, so that peers
	// with clocks a little behind accept them; default DefaultClockSkew.
	ClockSkew time.Duration
	// ReloadInterval is how often Run polls the files for a new issuer;
	// default DefaultReloadInterval.
	ReloadInterval time.Duration
	// Client creates the TokenReviews (authentication.k8s.io/v1) that
	// validate the proxies' tokens. Required.
	Client kubernetes.Interface
	// Logger logs; nil discards. The service adds component=identity.
	Logger *slog.Logger
	// Registerer gets the service's metrics; nil registers them nowhere.
	Registerer prometheus.Registerer
	// Now tells the time; nil means time.Now. For tests.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.IssuerCertFile == "" {
		c.IssuerCertFile = DefaultIssuerCertFile
	}
	if c.IssuerKeyFile == "" {
		c.IssuerKeyFile = DefaultIssuerKeyFile
	}
	if c.TrustAnchorsFile == "" {
		c.TrustAnchorsFile = DefaultTrustAnchorsFile
	}
	if c.TrustDomain == "" {
		c.TrustDomain = meshmeta.DefaultTrustDomain
	}
	if c.CertLifetime == 0 {
		c.CertLifetime = DefaultCertLifetime
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	if c.ReloadInterval == 0 {
		c.ReloadInterval = DefaultReloadInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	if c.Client == nil {
		return errors.New("no Kubernetes client for TokenReviews")
	}
	if c.CertLifetime < 0 || c.ClockSkew < 0 || c.ReloadInterval < 0 {
		return errors.New("CertLifetime, ClockSkew and ReloadInterval must not be negative")
	}
	if strings.Trim(c.TrustDomain, ".") != c.TrustDomain || strings.ContainsAny(c.TrustDomain, " /:") {
		return fmt.Errorf("trust domain %q is not a domain name", c.TrustDomain)
	}
	return nil
}

// Service is the identity service. It implements the gRPC
// sluice.identity.Identity service; Run keeps its issuer up to date.
type Service struct {
	pb.UnimplementedIdentityServer

	cfg     Config
	log     *slog.Logger
	metrics *metrics
	// issuer is the issuer in use; never nil after New.
	issuer atomic.Pointer[pki.Issuer]

	// reloadMu guards the reload state below.
	reloadMu sync.Mutex
	// loaded is the digest of the files the issuer in use came from.
	loaded [32]byte
	// rejected is the digest of the last files that held no valid issuer,
	// so that a bad issuer is logged once, not at every poll.
	rejected [32]byte
	// readErr is the last error reading the files, logged once.
	readErr string
}

// New loads the issuer and the trust anchors from cfg's files and returns
// the service. It fails, saying why, when they cannot be read or the
// issuer is not a CA that chains to the anchors, is expired or does not
// match its key.
func New(cfg Config) (*Service, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("identity service configuration: %w", err)
	}
	s := &Service{cfg: cfg, log: cfg.Logger.With("component", "identity")}
	files, err := s.readFiles()
	if err != nil {
		return nil, err
	}
	iss, err := pki.LoadIssuer(files.cert, files.key, files.anchors, cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("load the issuer from %s and %s with the trust anchors of %s: %w",
			cfg.IssuerCertFile, cfg.IssuerKeyFile, cfg.TrustAnchorsFile, err)
	}
	s.issuer.Store(iss)
	s.loaded = files.digest()
	s.metrics, err = newMetrics(cfg.Registerer, s.currentIssuer, cfg.Now)
	if err != nil {
		return nil, err
	}
	s.logIssuer("issuer loaded", iss)
	return s, nil
}

// Issuer returns the certificate of the issuer in use.
func (s *Service) Issuer() *x509.Certificate { return s.currentIssuer().Certificate() }

func (s *Service) currentIssuer() *pki.Issuer { return s.issuer.Load() }

// TrustDomain returns the trust domain the service certifies identities
// of.
func (s *Service) TrustDomain() string { return s.cfg.TrustDomain }

// Ready returns nil when the service can issue certificates: its issuer
// is loaded (New made sure of that) and not expired.
func (s *Service) Ready() error {
	c := s.Issuer()
	if now := s.cfg.Now(); now.After(c.NotAfter) {
		return fmt.Errorf("the issuer %q expired at %s", c.Subject, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

func (s *Service) logIssuer(msg string, iss *pki.Issuer) {
	c := iss.Certificate()
	s.log.Info(msg, "subject", c.Subject.String(), "serial", c.SerialNumber.Text(16),
		"not_after", c.NotAfter.UTC().Format(time.RFC3339), "issued_by", c.Issuer.String())
}
