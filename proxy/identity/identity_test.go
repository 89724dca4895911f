package identity_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
	"github.com/sluice-mesh/sluice/proxy/identity"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
	"github.com/sluice-mesh/sluice/test/proxytest/identitytest"
)

var webID = meshmeta.IdentityName("web", "shop", meshmeta.DefaultTrustDomain)

// timers replaces time.After: every delay the client asks for arrives on
// ch, and the client waits until the test fires it.
type timers struct{ ch chan timer }

type timer struct {
	d    time.Duration
	fire chan time.Time
}

func newTimers() *timers { return &timers{ch: make(chan timer, 100)} }

func (ts *timers) After(d time.Duration) <-chan time.Time {
	tm := timer{d: d, fire: make(chan time.Time, 1)}
	ts.ch <- tm
	return tm.fire
}

// next returns the next delay the client asked for; fire it to go on.
func (ts *timers) next(t *testing.T) timer {
	t.Helper()
	return netxtest.Await(t, ts.ch, "the client's next wait")
}

func (tm timer) fireNow() { tm.fire <- time.Time{} }

// logBuffer collects log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// env is an identity server and a client of it for webID.
type env struct {
	srv    *identitytest.Server
	client *identity.Client
	reg    *prometheus.Registry
	timers *timers
	token  string // the token file
	logs   *logBuffer
	now    time.Time // the client's clock, fixed
	cancel context.CancelFunc
	done   chan struct{}
}

func newEnv(t *testing.T, lifetime time.Duration, tune func(*identity.Config)) *env {
	t.Helper()
	e := &env{
		srv:    identitytest.Start(t, identitytest.Options{CertLifetime: lifetime}),
		reg:    prometheus.NewRegistry(),
		timers: newTimers(),
		logs:   &logBuffer{},
		now:    time.Now(),
		done:   make(chan struct{}),
	}
	e.token = identitytest.WriteToken(t, e.srv.Token("shop", "web"))
	cfg := identity.Config{
		Name:            webID,
		Addr:            e.srv.Addr().String(),
		ServerName:      identitytest.ServerName,
		TrustAnchorsPEM: e.srv.TrustAnchorsPEM(),
		TokenFile:       e.token,
		BackoffMin:      100 * time.Millisecond,
		BackoffMax:      800 * time.Millisecond,
		Now:             func() time.Time { return e.now },
		After:           e.timers.After,
		Logger:          slog.New(slog.NewTextHandler(e.logs, nil)),
		Registerer:      e.reg,
	}
	if tune != nil {
		tune(&cfg)
	}
	c, err := identity.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.client = c
	return e
}

// run starts the client's Run until cleanup.
func (e *env) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { defer close(e.done); e.client.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		netxtest.Await(t, e.done, "Run to return")
		if t.Failed() {
			t.Logf("client log:\n%s", e.logs.String())
		}
	})
}

// metric returns the value of a gathered series: name with the label
// result=result when result is not empty.
func (e *env) metric(t *testing.T, name, result string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if result != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != result) {
				continue
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s{result=%q}", name, result)
	return 0
}

func leafOf(t *testing.T, c *identity.Client) *x509.Certificate {
	t.Helper()
	cert := c.Certificate()
	if cert == nil {
		t.Fatal("no certificate")
	}
	return cert.Leaf
}

// The first certificate makes the client ready; it is for the proxy's key
// and name and chains to the anchors; the renewal is asked for at 70 % of
// its remaining life and brings a new certificate.
func TestFirstCertificateAndRenewal(t *testing.T) {
	e := newEnv(t, time.Hour, nil)
	if e.client.Ready() || e.client.Certificate() != nil {
		t.Fatal("ready before any certificate")
	}
	e.run(t)
	tm := e.timers.next(t)
	if !e.client.Ready() {
		t.Fatal("not ready after the first certificate")
	}
	leaf := leafOf(t, e.client)
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != webID {
		t.Errorf("certificate names %q, want %s", leaf.DNSNames, webID)
	}
	if want := time.Duration(float64(leaf.NotAfter.Sub(e.now)) * identity.RenewFraction); tm.d != want {
		t.Errorf("renewal asked for in %v, want 70 %% of the remaining %v: %v", tm.d, leaf.NotAfter.Sub(e.now), want)
	}
	if got := e.metric(t, "identity_cert_expiration_timestamp_seconds", ""); got != float64(leaf.NotAfter.Unix()) {
		t.Errorf("identity_cert_expiration_timestamp_seconds = %v, want %d", got, leaf.NotAfter.Unix())
	}
	// The certificate works as a TLS certificate for both ends.
	cert := e.client.Certificate()
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		ic, _ := x509.ParseCertificate(der)
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.client.Roots(), Intermediates: inter, DNSName: webID,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the certificate does not verify: %v", err)
	}

	tm.fireNow()
	e.timers.next(t)
	renewed := leafOf(t, e.client)
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 || e.srv.Certified(webID) != 2 {
		t.Errorf("renewal: serial %v (was %v), %d certificates issued; want a new one, 2 issued", renewed.SerialNumber, leaf.SerialNumber, e.srv.Certified(webID))
	}
	if e.metric(t, "identity_cert_refresh_total", "success") != 2 || e.metric(t, "identity_cert_refresh_total", "failure") != 0 {
		t.Errorf("identity_cert_refresh_total: %v success, %v failure; want 2, 0",
			e.metric(t, "identity_cert_refresh_total", "success"), e.metric(t, "identity_cert_refresh_total", "failure"))
	}
	if !strings.Contains(e.logs.String(), "identity: certificate issued") {
		t.Errorf("no 'certificate issued' log line:\n%s", e.logs.String())
	}
}

// Failed requests are retried after jittered delays that double from
// BackoffMin up to BackoffMax and never stop; a success resets them.
func TestBackoff(t *testing.T) {
	e := newEnv(t, time.Hour, nil)
	e.srv.RevokeToken(e.srv.Token("shop", "web"))
	e.run(t)
	bounds := [][2]time.Duration{{50, 100}, {100, 200}, {200, 400}, {400, 800}, {400, 800}, {400, 800}}
	for i, b := range bounds {
		tm := e.timers.next(t)
		lo, hi := b[0]*time.Millisecond, b[1]*time.Millisecond
		if tm.d < lo || tm.d > hi {
			t.Errorf("delay after failure %d = %v, want within [%v, %v]", i+1, tm.d, lo, hi)
		}
		if e.client.Ready() {
			t.Fatal("ready without a certificate")
		}
		tm.fireNow()
	}
	if n := e.metric(t, "identity_cert_refresh_total", "failure"); n < float64(len(bounds)) {
		t.Errorf("identity_cert_refresh_total{result=failure} = %v, want >= %d", n, len(bounds))
	}
	if !strings.Contains(e.logs.String(), "no certificate yet, so the proxy is not ready") || !strings.Contains(e.logs.String(), "Unauthenticated") {
		t.Errorf("the failures are not logged with their cause:\n%s", e.logs.String())
	}
	// The token is valid again: the next request succeeds and the next
	// wait is the renewal, not a back-off.
	e.srv.Token("shop", "web")
	tm := e.timers.next(t)
	tm.fireNow()
	tm = e.timers.next(t)
	if !e.client.Ready() || tm.d < 30*time.Minute {
		t.Fatalf("after recovery: ready %v, next wait %v; want ready and a renewal in about 42m", e.client.Ready(), tm.d)
	}
	// A failure after a success starts from BackoffMin again.
	e.srv.Stop()
	tm.fireNow()
	if tm = e.timers.next(t); tm.d > 100*time.Millisecond {
		t.Errorf("first delay after a new failure = %v, want <= 100ms", tm.d)
	}
}

// While the identity service is down the client keeps (and serves) its
// current certificate and stays ready; when it is back, the next retry
// renews.
func TestKeepsCertificateWhileIdentityDown(t *testing.T) {
	e := newEnv(t, time.Hour, nil)
	e.run(t)
	tm := e.timers.next(t)
	first := leafOf(t, e.client)
	e.srv.Stop()
	for range 3 {
		tm.fireNow()
		tm = e.timers.next(t)
		if !e.client.Ready() || leafOf(t, e.client).SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatal("the current certificate was dropped while the identity service is down")
		}
	}
	if !strings.Contains(e.logs.String(), "keeping the current certificate until it expires") {
		t.Errorf("no log line saying the certificate is kept:\n%s", e.logs.String())
	}
	if err := e.srv.Restart(); err != nil {
		t.Fatal(err)
	}
	tm.fireNow()
	e.timers.next(t)
	if leafOf(t, e.client).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("no new certificate after the identity service came back")
	}
}

// Once the current certificate has expired and renewals fail, the log says
// so as an error, distinct from the warning while it is still valid.
func TestExpiredCertificateLogged(t *testing.T) {
	e := newEnv(t, time.Hour, nil)
	e.run(t)
	tm := e.timers.next(t)
	e.srv.Stop()
	e.now = e.now.Add(2 * time.Hour) // the client's clock only: the certificate has expired
	tm.fireNow()
	e.timers.next(t)
	if !strings.Contains(e.logs.String(), "the current certificate has expired") || !strings.Contains(e.logs.String(), "level=ERROR") {
		t.Errorf("no error line for the expired certificate:\n%s", e.logs.String())
	}
}

// The token file is read for every request, so a token the kubelet rotated
// is the one sent.
func TestTokenFileReread(t *testing.T) {
	e := newEnv(t, time.Hour, nil)
	e.run(t)
	tm := e.timers.next(t)
	old := e.srv.Token("shop", "web")
	e.srv.RevokeToken(old)
	e.srv.SetToken("rotated-token", "shop", "web")
	if err := os.WriteFile(e.token, []byte("rotated-token\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tm.fireNow()
	tm = e.timers.next(t)
	if e.srv.Certified(webID) != 2 || tm.d < 30*time.Minute {
		t.Errorf("with the rotated token: %d certificates issued, next wait %v; want 2 and a renewal", e.srv.Certified(webID), tm.d)
	}
}

// With short lifetimes and the real clock, certificates keep being renewed,
// each before the previous one expires.
func TestShortLifetimesRenewContinuously(t *testing.T) {
	srv := identitytest.Start(t, identitytest.Options{CertLifetime: 4 * time.Second, ClockSkew: time.Millisecond})
	c, err := identity.New(identity.Config{
		Name: webID, Addr: srv.Addr().String(), ServerName: identitytest.ServerName, TrustAnchorsPEM: srv.TrustAnchorsPEM(),
		TokenFile: identitytest.WriteToken(t, srv.Token("shop", "web")), BackoffMin: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); netxtest.Await(t, done, "Run to return") }()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	var serials []string
	for len(serials) < 3 {
		cert := c.Certificate()
		if !time.Now().Before(cert.Leaf.NotAfter) {
			t.Fatalf("the current certificate expired at %v before a renewal", cert.Leaf.NotAfter)
		}
		if s := cert.Leaf.SerialNumber.String(); len(serials) == 0 || serials[len(serials)-1] != s {
			serials = append(serials, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The client refuses an identity service that is not what the anchors and
// the configured name say.
func TestIdentityServiceVerified(t *testing.T) {
	other, err := pki.Generate(pki.GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tune func(*identity.Config)
		want string
	}{
		{"another name", func(c *identity.Config) {
			c.ServerName = "impostor.sluice.serviceaccount.identity.sluice.cluster.local"
		}, "certificate is valid for"},
		{"other anchors", func(c *identity.Config) { c.TrustAnchorsPEM = other.TrustAnchorPEM }, "certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, time.Hour, tc.tune)
			e.run(t)
			e.timers.next(t)
			if e.client.Ready() || e.srv.Certified(webID) != 0 {
				t.Fatal("certified through an unverified identity service")
			}
			if !strings.Contains(e.logs.String(), tc.want) {
				t.Errorf("log lacks %q:\n%s", tc.want, e.logs.String())
			}
		})
	}
}

// Dir receives the current chain (never the key).
func TestDir(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, time.Hour, func(c *identity.Config) { c.Dir = dir })
	e.run(t)
	e.timers.next(t)
	b, err := os.ReadFile(filepath.Join(dir, identity.CertificateFile))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificates(b)
	if err != nil || len(certs) < 2 || certs[0].DNSNames[0] != webID {
		t.Fatalf("%s: %d certificates, %v", identity.CertificateFile, len(certs), err)
	}
	entries, _ := os.ReadDir(dir)
	for _, en := range entries {
		if b, _ := os.ReadFile(filepath.Join(dir, en.Name())); bytes.Contains(b, []byte("PRIVATE KEY")) || en.Name() != identity.CertificateFile {
			t.Errorf("unexpected file %s in the directory", en.Name())
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  identity.Config
		want string
	}{
		{"no name", identity.Config{Addr: "a:1", TokenFile: "t"}, "no local identity"},
		{"no address", identity.Config{Name: webID, TokenFile: "t"}, "no identity service address"},
		{"no token file", identity.Config{Name: webID, Addr: "a:1"}, "no token file"},
		{"no server name", identity.Config{Name: webID, Addr: "a:1", TokenFile: "t", TrustAnchorsPEM: []byte("x")}, "no server identity"},
		{"bad anchors", identity.Config{Name: webID, Addr: "a:1", TokenFile: "t", ServerName: "s", TrustAnchorsPEM: []byte("x")}, "no PEM CERTIFICATE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := identity.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
