// Package identitytest runs Sluice's real identity service
// (controlplane/identity) in process for the proxy's tests: a gRPC server
// over TLS with freshly generated trust anchors and issuer, whose fake
// Kubernetes clientset answers TokenReviews for the tokens the test
// registers (Token, SetToken). It can be stopped and restarted on the same
// address to simulate an outage, counts the certificates it issued, and
// hands out the issuer (for certificates the service would never sign, such
// as expired ones) and the environment a proxy needs to use it.
package identitytest

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	pb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/controlplane/identity"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
	"github.com/sluice-mesh/sluice/test/grpcserve"
)

// Options of a Server. The zero value is fine.
type Options struct {
	// Addr is where to listen; the zero value means 127.0.0.1:0 (a free
	// port).
	Addr netip.AddrPort
	// CertLifetime is how long issued certificates last; 0 means the
	// service's default (24 h).
	CertLifetime time.Duration
	// ClockSkew backdates issued certificates; 0 means the service's
	// default (20 s).
	ClockSkew time.Duration
	// Now is the service's clock; nil means time.Now.
	Now func() time.Time
	// Logger receives the service's logs; nil discards them.
	Logger *slog.Logger
}

// ServerName is the identity service's own TLS identity in the tests, as
// the injector names it: the sluice-identity service account in the sluice
// namespace, trust domain cluster.local.
var ServerName = meshmeta.IdentityName(meshmeta.IdentityService, meshmeta.DefaultNamespace, meshmeta.DefaultTrustDomain)

// Server is an identity service. Its methods are safe for concurrent use.
type Server struct {
	creds *pki.Credentials
	svc   *identity.Service
	dir   string // issuer files, removed by Close
	log   *slog.Logger

	grpc *grpcserve.Server

	mu        sync.Mutex
	tokens    map[string]string // token → user name
	certified map[string]int    // identity → certificates issued
}

// New generates trust anchors and an issuer, starts the identity service
// with them and serves it on o.Addr until Close.
func New(o Options) (*Server, error) {
	if !o.Addr.IsValid() {
		o.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	creds, err := pki.Generate(pki.GenerateOptions{})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sluice-identitytest-")
	if err != nil {
		return nil, err
	}
	s := &Server{creds: creds, dir: dir, log: o.Logger, tokens: map[string]string{}, certified: map[string]int{}}
	files := map[string][]byte{"issuer.crt": creds.IssuerCertPEM, "issuer.key": creds.IssuerKeyPEM, "anchors.crt": creds.TrustAnchorPEM}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", s.review)
	s.svc, err = identity.New(identity.Config{
		IssuerCertFile:   filepath.Join(dir, "issuer.crt"),
		IssuerKeyFile:    filepath.Join(dir, "issuer.key"),
		TrustAnchorsFile: filepath.Join(dir, "anchors.crt"),
		CertLifetime:     o.CertLifetime,
		ClockSkew:        o.ClockSkew,
		Client:           client,
		Logger:           o.Logger,
		Now:              o.Now,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start the identity service: %w", err)
	}
	s.grpc = grpcserve.New("identity", o.Addr, func() *grpc.Server {
		gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(s.svc.ServerTLSConfig(ServerName))))
		pb.RegisterIdentityServer(gs, identityServer{s: s})
		return gs
	}, o.Logger)
	if err := s.grpc.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// Start is New, failing t on error, with Close at cleanup.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatalf("identitytest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// review answers a TokenReview as the API server would: a registered token
// is authenticated for its service account with the identity audience.
func (s *Server) review(action k8stesting.Action) (bool, runtime.Object, error) {
	review := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
	s.mu.Lock()
	user, ok := s.tokens[review.Spec.Token]
	s.mu.Unlock()
	switch {
	case !slices.Equal(review.Spec.Audiences, []string{meshmeta.IdentityAudience}):
		review.Status = authnv1.TokenReviewStatus{Error: fmt.Sprintf("identitytest: asked for audiences %q", review.Spec.Audiences)}
	case !ok:
		review.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
	default:
		review.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: user},
			Audiences: []string{meshmeta.IdentityAudience}}
	}
	return true, review, nil
}

// Certify implements the identity API by passing the request to the
// service and counting what it issued.
func (s *Server) Certify(ctx context.Context, req *pb.CertifyRequest) (*pb.CertifyResponse, error) {
	resp, err := s.svc.Certify(ctx, req)
	if err == nil {
		s.mu.Lock()
		s.certified[req.GetIdentity()]++
		s.mu.Unlock()
	}
	return resp, err
}

// identityServer exposes only Certify to gRPC.
type identityServer struct {
	pb.UnimplementedIdentityServer
	s *Server
}

func (i identityServer) Certify(ctx context.Context, req *pb.CertifyRequest) (*pb.CertifyResponse, error) {
	return i.s.Certify(ctx, req)
}

// Addr returns the address the server listens on.
func (s *Server) Addr() netip.AddrPort { return s.grpc.Addr() }

// Stop kills the server as a crash would: the listener and every
// connection close. Tokens and counts are kept for Restart.
func (s *Server) Stop() { s.grpc.Stop() }

// Restart serves again on the same address.
func (s *Server) Restart() error { return s.grpc.Start() }

// Close stops the server for good and removes its files.
func (s *Server) Close() {
	s.grpc.Close()
	os.RemoveAll(s.dir)
}

// TrustAnchorsPEM returns the trust anchors every issued certificate
// chains to.
func (s *Server) TrustAnchorsPEM() []byte { return s.creds.TrustAnchorPEM }

// Credentials returns the generated anchor and issuer (with keys).
func (s *Server) Credentials() *pki.Credentials { return s.creds }

// Issuer loads the service's issuer, for signing certificates directly
// (with lifetimes or names the service would not give).
func (s *Server) Issuer() (*pki.Issuer, error) {
	return pki.LoadIssuer(s.creds.IssuerCertPEM, s.creds.IssuerKeyPEM, s.creds.TrustAnchorPEM, time.Now())
}

// Token registers and returns a token that authenticates as the service
// account serviceAccount in namespace.
func (s *Server) Token(namespace, serviceAccount string) string {
	tok := "identitytest-token-" + namespace + "-" + serviceAccount
	s.SetToken(tok, namespace, serviceAccount)
	return tok
}

// SetToken makes token authenticate as the service account
// serviceAccount in namespace.
func (s *Server) SetToken(token, namespace, serviceAccount string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens[token] = "system:serviceaccount:" + namespace + ":" + serviceAccount
}

// RevokeToken makes token invalid: Certify refuses it (Unauthenticated).
func (s *Server) RevokeToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
}

// Certified returns how many certificates the server issued for id.
func (s *Server) Certified(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.certified[id]
}

// WriteToken writes token into a new file that any user can read (the
// proxy runs as its own user), in a directory removed at t's cleanup, and
// returns the file's path. Overwrite it with os.WriteFile to rotate.
func WriteToken(t testing.TB, token string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-token-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte(token), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Env returns the SLUICE_PROXY_IDENTITY_* variables (without the
// SLUICE_PROXY_ prefix) of a proxy with identity localName that reads its
// token from tokenFile and reaches this server at its address.
func (s *Server) Env(localName, tokenFile string) map[string]string {
	return map[string]string{
		"IDENTITY_LOCAL_NAME":    localName,
		"IDENTITY_SVC_ADDR":      s.Addr().String(),
		"IDENTITY_SVC_NAME":      ServerName,
		"IDENTITY_TRUST_ANCHORS": string(s.TrustAnchorsPEM()),
		"IDENTITY_TOKEN_FILE":    tokenFile,
	}
}
