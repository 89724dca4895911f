package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// testNow is the tests' fixed "now", whole seconds as certificates hold.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var (
	webID = meshmeta.IdentityName("web", "shop", meshmeta.DefaultTrustDomain)
	dbID  = meshmeta.IdentityName("db", "shop", meshmeta.DefaultTrustDomain)
	// serverID is the identity service's own TLS identity in the tests.
	serverID = meshmeta.IdentityName(meshmeta.IdentityService, meshmeta.DefaultNamespace, meshmeta.DefaultTrustDomain)
)

// Tokens the fake API server knows.
const (
	tokenWeb         = "token-web"          // shop/web, audience identity.sluice.io
	tokenDB          = "token-db"           // shop/db
	tokenUser        = "token-user"         // a user, not a service account
	tokenAPIAudience = "token-api-audience" // shop/web, but only the API server's audience
	tokenExpired     = "token-expired"      // rejected: expired
	tokenBreaks      = "token-breaks"       // the TokenReview call fails
)

// reviewTokens answers TokenReviews as the API server would for the
// tokens above. A review that does not ask for exactly the identity
// audience is refused, so a service that forgot it fails every test.
func reviewTokens(action k8stesting.Action) (bool, runtime.Object, error) {
	review := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
	if !slices.Equal(review.Spec.Audiences, []string{meshmeta.IdentityAudience}) {
		review.Status = authnv1.TokenReviewStatus{Error: fmt.Sprintf("test: asked for audiences %q", review.Spec.Audiences)}
		return true, review, nil
	}
	ok := func(user string, aud ...string) authnv1.TokenReviewStatus {
		return authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: user}, Audiences: aud}
	}
	switch review.Spec.Token {
	case tokenWeb:
		review.Status = ok("system:serviceaccount:shop:web", meshmeta.IdentityAudience)
	case tokenDB:
		review.Status = ok("system:serviceaccount:shop:db", meshmeta.IdentityAudience)
	case tokenUser:
		review.Status = ok("alice", meshmeta.IdentityAudience)
	case tokenAPIAudience:
		review.Status = ok("system:serviceaccount:shop:web", "https://kubernetes.default.svc.cluster.local")
	case tokenExpired:
		review.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, service account token has expired]"}
	case tokenBreaks:
		return true, nil, errors.New("connection refused")
	default:
		review.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
	}
	return true, review, nil
}

// secretVolume is a directory laid out as the kubelet lays out a Secret
// or ConfigMap volume: each key is a symlink into ..data, itself a
// symlink to a timestamped directory that an update replaces atomically.
type secretVolume struct {
	t   *testing.T
	dir string
	gen int
}

func newSecretVolume(t *testing.T, files map[string][]byte) *secretVolume {
	v := &secretVolume{t: t, dir: t.TempDir()}
	v.update(files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// update writes files into a new timestamped directory and swaps ..data
// to it with one rename.
func (v *secretVolume) update(files map[string][]byte) {
	v.t.Helper()
	v.gen++
	ts := fmt.Sprintf("..2026_03_01_12_00_%02d.%d", v.gen, v.gen)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		v.t.Fatal(err)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(v.dir, ts, name), b, 0o600); err != nil {
			v.t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
}

func (v *secretVolume) path(name string) string { return filepath.Join(v.dir, name) }

// env is a running identity service and a client of it.
type env struct {
	svc     *Service
	reg     *prometheus.Registry
	client  pb.IdentityClient
	creds   *pki.Credentials
	issuer  *secretVolume
	addr    string
	now     time.Time
	anchors *x509.CertPool
}

type envOptions struct {
	creds  *pki.Credentials
	config func(*Config)
}

func generate(t *testing.T, o pki.GenerateOptions) *pki.Credentials {
	t.Helper()
	if o.Now.IsZero() {
		o.Now = testNow.Add(-time.Hour)
	}
	c, err := pki.Generate(o)
	if err != nil {
		t.Fatalf("generate credentials: %v", err)
	}
	return c
}

func issuerFilesOf(c *pki.Credentials) map[string][]byte {
	return map[string][]byte{IssuerCertKey: c.IssuerCertPEM, IssuerKeyKey: c.IssuerKeyPEM}
}

// testConfig writes creds as mounted volumes and returns a Config for
// them with the fake API server.
func testConfig(t *testing.T, creds *pki.Credentials) (Config, *secretVolume) {
	issuer := newSecretVolume(t, issuerFilesOf(creds))
	roots := newSecretVolume(t, map[string][]byte{TrustRootsKey: creds.TrustAnchorPEM})
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", reviewTokens)
	return Config{
		IssuerCertFile:   issuer.path(IssuerCertKey),
		IssuerKeyFile:    issuer.path(IssuerKeyKey),
		TrustAnchorsFile: roots.path(TrustRootsKey),
		Client:           client,
		Logger:           testLogger(t),
		Now:              func() time.Time { return testNow },
	}, issuer
}

func startEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	creds := o.creds
	if creds == nil {
		creds = generate(t, pki.GenerateOptions{})
	}
	cfg, issuer := testConfig(t, creds)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if o.config != nil {
		o.config(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(svc.ServerTLSConfig(serverID))))
	pb.RegisterIdentityServer(gs, svc)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	tlsCfg, err := pki.ClientTLSConfig(creds.TrustAnchorPEM, serverID)
	if err != nil {
		t.Fatal(err)
	}
	// The server's certificate is checked at the real time, the service's
	// clock is fixed: let the client use the service's.
	tlsCfg.Time = cfg.Now
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	anchors, err := pki.ParseCertificates(creds.TrustAnchorPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(anchors[0])
	return &env{svc: svc, reg: reg, client: pb.NewIdentityClient(conn), creds: creds, issuer: issuer,
		addr: lis.Addr().String(), now: cfg.Now(), anchors: pool}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCSR(t testing.TB, id string, key crypto.Signer) []byte {
	t.Helper()
	der, err := pki.NewCSR(id, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// certify asks for a certificate for webID with web's token and a new
// key, and returns the key and the parsed response.
func (e *env) certify(t *testing.T) (*ecdsa.PrivateKey, *x509.Certificate, []*x509.Certificate) {
	t.Helper()
	key := newKey(t)
	resp, err := e.client.Certify(context.Background(), &pb.CertifyRequest{
		Identity: webID, Token: []byte(tokenWeb), CertificateSigningRequest: mustCSR(t, webID, key),
	})
	if err != nil {
		t.Fatalf("Certify: %v", err)
	}
	leaf, err := x509.ParseCertificate(resp.GetLeafCertificate())
	if err != nil {
		t.Fatalf("parse the leaf: %v", err)
	}
	if !resp.GetValidUntil().AsTime().Equal(leaf.NotAfter) {
		t.Errorf("valid_until %s, leaf NotAfter %s", resp.GetValidUntil().AsTime(), leaf.NotAfter)
	}
	var inter []*x509.Certificate
	for _, der := range resp.GetIntermediateCertificates() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("parse an intermediate: %v", err)
		}
		inter = append(inter, c)
	}
	return key, leaf, inter
}

// verify checks that leaf is valid for id, client and server
// authentication, through inter, up to the env's anchors.
func (e *env) verify(t *testing.T, leaf *x509.Certificate, inter []*x509.Certificate, id string) {
	t.Helper()
	pool := x509.NewCertPool()
	for _, c := range inter {
		pool.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: id, Roots: e.anchors, Intermediates: pool,
			CurrentTime: e.now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify the leaf for %s and usage %v: %v", id, usage, err)
		}
	}
}

func TestCertifyIssues(t *testing.T) {
	e := startEnv(t, envOptions{})
	key, leaf, inter := e.certify(t)
	e.verify(t, leaf, inter, webID)
	if len(inter) != 1 || !inter[0].Equal(e.svc.Issuer()) {
		t.Errorf("intermediates %d, want the issuer alone", len(inter))
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("the leaf does not hold the CSR's public key")
	}
	if got := leaf.NotAfter.Sub(e.now); got != 24*time.Hour {
		t.Errorf("the leaf lasts %s from now, want 24h", got)
	}
	if got := e.now.Sub(leaf.NotBefore); got != DefaultClockSkew {
		t.Errorf("the leaf starts %s before now, want %s", got, DefaultClockSkew)
	}
	if !slices.Equal(leaf.DNSNames, []string{webID}) || len(leaf.IPAddresses)+len(leaf.URIs) != 0 {
		t.Errorf("leaf SANs %q %v %v, want DNS %s alone", leaf.DNSNames, leaf.IPAddresses, leaf.URIs, webID)
	}
	if got := counter(t, e.reg, "identity_certify_requests_total", "outcome", OutcomeOK); got != 1 {
		t.Errorf("ok requests %v, want 1", got)
	}
}

func TestCertifyLifetime(t *testing.T) {
	e := startEnv(t, envOptions{config: func(c *Config) { c.CertLifetime = 2 * time.Hour; c.ClockSkew = time.Minute }})
	_, leaf, _ := e.certify(t)
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 2*time.Hour+time.Minute {
		t.Errorf("the leaf lasts %s, want 2h1m", got)
	}
}

func TestCertifyRefusals(t *testing.T) {
	e := startEnv(t, envOptions{})
	key := newKey(t)
	csr := func(tmpl x509.CertificateRequest) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	good := mustCSR(t, webID, key)
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0xff
	spiffe, err := url.Parse("spiffe://cluster.local/ns/shop/sa/web")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		id       string
		token    string
		csr      []byte
		code     codes.Code
		outcome  string
		contains string
	}{
		{"no identity", "", tokenWeb, good, codes.InvalidArgument, OutcomeInvalidIdentity, "no identity"},
		{"identity of another trust domain", "web.shop.serviceaccount.identity.sluice.example.org", tokenWeb, good, codes.InvalidArgument, OutcomeInvalidIdentity, "does not end in"},
		{"garbage CSR", webID, tokenWeb, []byte("garbage"), codes.InvalidArgument, OutcomeInvalidCSR, "parse the certificate signing request"},
		{"no CSR", webID, tokenWeb, nil, codes.InvalidArgument, OutcomeInvalidCSR, "no certificate signing request"},
		{"bad signature", webID, tokenWeb, badSig, codes.InvalidArgument, OutcomeInvalidCSR, "signature is invalid"},
		{"CSR without SAN", webID, tokenWeb, csr(x509.CertificateRequest{}), codes.InvalidArgument, OutcomeInvalidCSR, "has no DNS SAN"},
		{"CSR with two SANs", webID, tokenWeb, csr(x509.CertificateRequest{DNSNames: []string{webID, dbID}}), codes.InvalidArgument, OutcomeInvalidCSR, "has 2 DNS SANs"},
		{"CSR with an IP SAN", webID, tokenWeb, csr(x509.CertificateRequest{DNSNames: []string{webID}, IPAddresses: []net.IP{net.IPv4(10, 1, 2, 3)}}), codes.InvalidArgument, OutcomeInvalidCSR, "IP SAN"},
		{"CSR with a URI SAN", webID, tokenWeb, csr(x509.CertificateRequest{DNSNames: []string{webID}, URIs: []*url.URL{spiffe}}), codes.InvalidArgument, OutcomeInvalidCSR, "URI SAN"},
		{"CSR for another identity", webID, tokenWeb, mustCSR(t, dbID, key), codes.InvalidArgument, OutcomeInvalidCSR, `names "` + dbID + `", not the requested identity "` + webID + `"`},
		{"no token", webID, "", good, codes.Unauthenticated, OutcomeNoToken, "no token"},
		{"forged token", webID, "forged", good, codes.Unauthenticated, OutcomeUnauthenticated, "the token is not authenticated: invalid bearer token"},
		{"expired token", webID, tokenExpired, good, codes.Unauthenticated, OutcomeUnauthenticated, "has expired"},
		{"token of the API audience", webID, tokenAPIAudience, good, codes.Unauthenticated, OutcomeWrongAudience, "not for the audience identity.sluice.io"},
		{"token for another service account", webID, tokenDB, good, codes.PermissionDenied, OutcomePermissionDenied, "the token is for serviceaccount shop/db, not " + webID + " (serviceaccount shop/web)"},
		{"token of a user", webID, tokenUser, good, codes.PermissionDenied, OutcomePermissionDenied, `the token is for the user "alice", not a service account`},
		{"TokenReview fails", webID, tokenBreaks, good, codes.Unavailable, OutcomeReviewFailed, "review the token with the Kubernetes API: connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, e.reg, "identity_certify_requests_total", "outcome", tc.outcome)
			resp, err := e.client.Certify(context.Background(), &pb.CertifyRequest{
				Identity: tc.id, Token: []byte(tc.token), CertificateSigningRequest: tc.csr,
			})
			if err == nil {
				t.Fatalf("Certify succeeded: %v", resp)
			}
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.contains) {
				t.Errorf("Certify: %s %q, want %s containing %q", st.Code(), st.Message(), tc.code, tc.contains)
			}
			if got := counter(t, e.reg, "identity_certify_requests_total", "outcome", tc.outcome); got != before+1 {
				t.Errorf("outcome %s counted %v times, want %v", tc.outcome, got, before+1)
			}
		})
	}
	// The refusals disturbed nothing.
	_, leaf, inter := e.certify(t)
	e.verify(t, leaf, inter, webID)
}
