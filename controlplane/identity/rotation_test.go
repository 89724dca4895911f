package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// testLogger logs to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// metric returns the value of the counter or gauge name whose label
// has value (any series when label is ""), or 0 when there is none.
func metric(t *testing.T, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if label != "" && !hasLabel(m, label, value) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func counter(t *testing.T, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	return metric(t, reg, name, label, value)
}

// nextIssuer makes a new issuer under the env's anchor.
func (e *env) nextIssuer(t *testing.T) map[string][]byte {
	t.Helper()
	cert, key, err := pki.GenerateIssuer(e.creds.TrustAnchorPEM, e.creds.TrustAnchorKeyPEM, pki.GenerateOptions{Now: e.now.Add(-time.Minute)})
	if err != nil {
		t.Fatalf("GenerateIssuer: %v", err)
	}
	return map[string][]byte{IssuerCertKey: cert, IssuerKeyKey: key}
}

func parseCert(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCertificates(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// serverChain dials the service with TLS and returns the certificates it
// presents.
func (e *env) serverChain(t *testing.T) []*x509.Certificate {
	t.Helper()
	cfg, err := pki.ClientTLSConfig(e.creds.TrustAnchorPEM, serverID)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Time = func() time.Time { return e.now }
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", e.addr, cfg)
	if err != nil {
		t.Fatalf("TLS handshake with the identity service as %s: %v", serverID, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates
}

func TestRotation(t *testing.T) {
	e := startEnv(t, envOptions{})
	first := e.svc.Issuer()
	if _, leaf, _ := e.certify(t); leaf.CheckSignatureFrom(first) != nil {
		t.Fatal("the first leaf is not signed by the first issuer")
	}
	if chain := e.serverChain(t); !chain[1].Equal(first) {
		t.Fatal("the server's certificate is not issued by the first issuer")
	}

	// A new issuer under the same anchor, swapped in as a Secret update.
	next := e.nextIssuer(t)
	e.issuer.update(next)
	changed, err := e.svc.Reload()
	if err != nil || !changed {
		t.Fatalf("Reload after a new issuer: changed %v, %v", changed, err)
	}
	second := parseCert(t, next[IssuerCertKey])
	if !e.svc.Issuer().Equal(second) {
		t.Fatal("the service does not use the new issuer")
	}
	_, leaf, inter := e.certify(t)
	if err := leaf.CheckSignatureFrom(second); err != nil {
		t.Errorf("the leaf after rotation is not signed by the new issuer: %v", err)
	}
	if len(inter) != 1 || !inter[0].Equal(second) {
		t.Errorf("the intermediate after rotation is not the new issuer")
	}
	e.verify(t, leaf, inter, webID)
	if chain := e.serverChain(t); !chain[1].Equal(second) {
		t.Error("the server's own certificate was not reissued by the new issuer")
	}
	if got := metric(t, e.reg, "identity_issuer_expiry_timestamp_seconds", "", ""); got != float64(second.NotAfter.Unix()) {
		t.Errorf("issuer expiry gauge %v, want %v", got, second.NotAfter.Unix())
	}

	// Unchanged files change nothing.
	if changed, err := e.svc.Reload(); changed || err != nil {
		t.Errorf("Reload of unchanged files: changed %v, %v", changed, err)
	}

	// Bad new issuers are rejected and the one in use kept.
	other := generate(t, pki.GenerateOptions{})
	third := e.nextIssuer(t)
	for _, tc := range []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"issuer of another anchor", issuerFilesOf(other), "does not chain to the trust anchors"},
		{"key of another issuer", map[string][]byte{IssuerCertKey: third[IssuerCertKey], IssuerKeyKey: next[IssuerKeyKey]}, "private key does not match public key"},
		{"truncated certificate", map[string][]byte{IssuerCertKey: third[IssuerCertKey][:40], IssuerKeyKey: third[IssuerKeyKey]}, "no PEM CERTIFICATE block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, e.reg, "identity_issuer_reloads_total", "result", "rejected")
			e.issuer.update(tc.files)
			changed, err := e.svc.Reload()
			if changed || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Reload: changed %v, error %v; want an error containing %q", changed, err, tc.want)
			}
			// Polling the same bad files again reports the same error
			// without counting it again.
			if _, err2 := e.svc.Reload(); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("second Reload: %v", err2)
			}
			if got := counter(t, e.reg, "identity_issuer_reloads_total", "result", "rejected"); got != before+1 {
				t.Errorf("rejected reloads %v, want %v", got, before+1)
			}
			if !e.svc.Issuer().Equal(second) {
				t.Fatal("the service dropped the issuer in use")
			}
			_, leaf, inter := e.certify(t)
			if err := leaf.CheckSignatureFrom(second); err != nil {
				t.Errorf("the leaf is not signed by the issuer in use: %v", err)
			}
			e.verify(t, leaf, inter, webID)
			if err := e.svc.Ready(); err != nil {
				t.Errorf("Ready: %v", err)
			}
		})
	}

	// A good issuer after bad ones is taken up.
	e.issuer.update(third)
	if changed, err := e.svc.Reload(); !changed || err != nil {
		t.Fatalf("Reload of a good issuer after bad ones: changed %v, %v", changed, err)
	}
	if _, leaf, _ := e.certify(t); leaf.CheckSignatureFrom(parseCert(t, third[IssuerCertKey])) != nil {
		t.Error("the leaf is not signed by the third issuer")
	}
}

func TestRotationToAnIssuerNotYetValid(t *testing.T) {
	now := testNow
	e := startEnv(t, envOptions{config: func(c *Config) { c.Now = func() time.Time { return now } }})
	first := e.svc.Issuer()
	// An issuer made on a machine whose clock is ahead: valid only from
	// 10 minutes from now.
	cert, key, err := pki.GenerateIssuer(e.creds.TrustAnchorPEM, e.creds.TrustAnchorKeyPEM, pki.GenerateOptions{Now: testNow.Add(15 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	e.issuer.update(map[string][]byte{IssuerCertKey: cert, IssuerKeyKey: key})
	if changed, err := e.svc.Reload(); changed || err == nil || !strings.Contains(err.Error(), "is not valid before") {
		t.Fatalf("Reload of an issuer not yet valid: changed %v, %v", changed, err)
	}
	if !e.svc.Issuer().Equal(first) {
		t.Fatal("the service dropped the issuer in use")
	}
	now = testNow.Add(11 * time.Minute)
	if changed, err := e.svc.Reload(); !changed || err != nil {
		t.Fatalf("Reload once the issuer is valid: changed %v, %v", changed, err)
	}
	if !e.svc.Issuer().Equal(parseCert(t, cert)) {
		t.Error("the service does not use the issuer that became valid")
	}
}

func TestReloadMissingFiles(t *testing.T) {
	e := startEnv(t, envOptions{})
	first := e.svc.Issuer()
	e.issuer.update(map[string][]byte{"other": []byte("x")})
	for range 2 {
		if changed, err := e.svc.Reload(); changed || err == nil || !strings.Contains(err.Error(), "read the issuer certificate") {
			t.Fatalf("Reload with the files gone: changed %v, %v", changed, err)
		}
	}
	if got := counter(t, e.reg, "identity_issuer_reloads_total", "result", "error"); got != 1 {
		t.Errorf("read errors counted %v times, want once", got)
	}
	if !e.svc.Issuer().Equal(first) {
		t.Fatal("the service dropped the issuer in use")
	}
	_, leaf, inter := e.certify(t)
	e.verify(t, leaf, inter, webID)
}

func TestRunPollsFiles(t *testing.T) {
	e := startEnv(t, envOptions{config: func(c *Config) { c.ReloadInterval = 10 * time.Millisecond }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.svc.Run(ctx) }()
	next := e.nextIssuer(t)
	e.issuer.update(next)
	want := parseCert(t, next[IssuerCertKey])
	deadline := time.Now().Add(10 * time.Second)
	for !e.svc.Issuer().Equal(want) {
		if time.Now().After(deadline) {
			t.Fatal("Run did not take up the new issuer within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, leaf, _ := e.certify(t); leaf.CheckSignatureFrom(want) != nil {
		t.Error("the leaf is not signed by the issuer Run loaded")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	creds := generate(t, pki.GenerateOptions{})
	other := generate(t, pki.GenerateOptions{})
	for _, tc := range []struct {
		name   string
		config func(c *Config, v *secretVolume)
		want   string
	}{
		{"issuer of another anchor", func(c *Config, v *secretVolume) { v.update(issuerFilesOf(other)) }, "does not chain to the trust anchors"},
		{"expired issuer", func(c *Config, _ *secretVolume) {
			c.Now = func() time.Time { return testNow.Add(400 * 24 * time.Hour) }
		}, "expired at"},
		{"key not matching", func(c *Config, v *secretVolume) {
			v.update(map[string][]byte{IssuerCertKey: creds.IssuerCertPEM, IssuerKeyKey: other.IssuerKeyPEM})
		}, "private key does not match public key"},
		{"issuer not a CA", func(c *Config, v *secretVolume) {
			v.update(map[string][]byte{IssuerCertKey: leafPEM(t, creds), IssuerKeyKey: creds.IssuerKeyPEM})
		}, "is not a CA"},
		{"missing anchors", func(c *Config, _ *secretVolume) { c.TrustAnchorsFile += ".missing" }, "read the trust anchors"},
		{"no client", func(c *Config, _ *secretVolume) { c.Client = nil }, "no Kubernetes client"},
		{"bad trust domain", func(c *Config, _ *secretVolume) { c.TrustDomain = "cluster.local." }, "is not a domain name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, v := testConfig(t, creds)
			tc.config(&cfg, v)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// leafPEM returns a certificate for the issuer's own public key, signed
// by the issuer, that is not a CA: with the issuer's key it makes a
// matching pair that may not sign.
func leafPEM(t *testing.T, creds *pki.Credentials) []byte {
	t.Helper()
	iss, err := pki.LoadIssuer(creds.IssuerCertPEM, creds.IssuerKeyPEM, creds.TrustAnchorPEM, testNow)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := iss.Sign(iss.Certificate().PublicKey, webID, testNow.Add(-time.Minute), testNow.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
}

func TestReadyAndExpiryGauges(t *testing.T) {
	now := testNow
	e := startEnv(t, envOptions{config: func(c *Config) { c.Now = func() time.Time { return now } }})
	notAfter := e.svc.Issuer().NotAfter
	if err := e.svc.Ready(); err != nil {
		t.Fatalf("Ready with a loaded issuer: %v", err)
	}
	if got, want := metric(t, e.reg, "identity_issuer_expires_in_seconds", "", ""), notAfter.Sub(now).Seconds(); got != want {
		t.Errorf("expires in %v s, want %v", got, want)
	}
	if got := metric(t, e.reg, "identity_issuer_expiry_timestamp_seconds", "", ""); got != float64(notAfter.Unix()) {
		t.Errorf("expiry timestamp %v, want %v", got, notAfter.Unix())
	}
	// Once the issuer has expired the service is not ready and refuses
	// to certify.
	now = notAfter.Add(time.Second)
	if err := e.svc.Ready(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("Ready after the issuer expired: %v", err)
	}
	if got := metric(t, e.reg, "identity_issuer_expires_in_seconds", "", ""); got != -1 {
		t.Errorf("expires in %v s after expiry, want -1", got)
	}
	// (Called directly: the service's own TLS certificate cannot be
	// issued either, so no handshake would succeed.)
	_, err := e.svc.Certify(context.Background(), &pb.CertifyRequest{
		Identity: webID, Token: []byte(tokenWeb), CertificateSigningRequest: mustCSR(t, webID, newKey(t)),
	})
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "expired at") {
		t.Errorf("Certify after the issuer expired: %s %q, want Unavailable saying it expired", st.Code(), st.Message())
	}
	if got := counter(t, e.reg, "identity_certify_requests_total", "outcome", OutcomeIssuerExpired); got != 1 {
		t.Errorf("issuer_expired outcomes %v, want 1", got)
	}
}
