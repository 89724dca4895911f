package mtls_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki/pkitest"
	"github.com/sluice-mesh/sluice/proxy/detect"
	"github.com/sluice-mesh/sluice/proxy/mtls"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
)

var (
	webID   = meshmeta.IdentityName("web", "shop", meshmeta.DefaultTrustDomain)
	dbID    = meshmeta.IdentityName("db", "shop", meshmeta.DefaultTrustDomain)
	otherID = meshmeta.IdentityName("other", "shop", meshmeta.DefaultTrustDomain)
)

// creds is a fixed identity.
type creds struct {
	name string
	cert *tls.Certificate
}

func (c creds) Name() string                  { return c.name }
func (c creds) Certificate() *tls.Certificate { return c.cert }

// side is one proxy's TLS with its metrics and logs.
type side struct {
	tls  *mtls.TLS
	reg  *prometheus.Registry
	logs *bytes.Buffer
}

func newSide(t *testing.T, roots *x509.CertPool, name string, cert *tls.Certificate) *side {
	t.Helper()
	s := &side{reg: prometheus.NewRegistry(), logs: &bytes.Buffer{}}
	var err error
	s.tls, err = mtls.New(mtls.Options{Local: creds{name, cert}, Roots: roots, TrustDomain: meshmeta.DefaultTrustDomain,
		Logger: slog.New(slog.NewTextHandler(s.logs, nil)), Registerer: s.reg})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// count returns a counter's value for the given label values.
func (s *side) count(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

type acceptResult struct {
	a   mtls.Accepted
	err error
}

// handshake runs Connect on one end of a Mem connection and Accept on the
// other.
func handshake(t *testing.T, client, server *side, serverID, alpn string) (*tls.Conn, acceptResult, error) {
	t.Helper()
	cc, sc := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.2:8080"))
	ch := make(chan acceptResult, 1)
	go func() {
		_, dc, err := detect.DetectTLS(sc, time.Second)
		if err != nil {
			ch <- acceptResult{err: err}
			return
		}
		a, err := server.tls.Accept(dc, 5*time.Second)
		ch <- acceptResult{a, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.tls.Connect(ctx, cc, serverID, alpn)
	if err != nil {
		cc.Close()
		return nil, netxtest.Await(t, ch, "Accept"), err
	}
	return c.(*tls.Conn), netxtest.Await(t, ch, "Accept"), nil
}

// A handshake between two valid identities: the server learns the client's
// identity and the ALPN, and bytes flow both ways.
func TestHandshake(t *testing.T) {
	ca := pkitest.New(t)
	client := newSide(t, ca.Roots, webID, ca.Valid(t, webID))
	server := newSide(t, ca.Roots, dbID, ca.Valid(t, dbID))
	for _, alpn := range []string{mtls.ALPNHTTP2, mtls.ALPNHTTP1, mtls.ALPNOpaque} {
		t.Run(alpn, func(t *testing.T) {
			tc, r, err := handshake(t, client, server, dbID, alpn)
			if err != nil || r.err != nil {
				t.Fatalf("Connect: %v; Accept: %v", err, r.err)
			}
			if !r.a.Terminated || r.a.ClientID != webID || r.a.ALPN != alpn || r.a.SNI != dbID {
				t.Errorf("Accepted %+v; want terminated, client %s, ALPN %s", r.a, webID, alpn)
			}
			if cs := tc.ConnectionState(); cs.Version != tls.VersionTLS13 || cs.PeerCertificates[0].DNSNames[0] != dbID {
				t.Errorf("client sees version %x, server %v", cs.Version, cs.PeerCertificates[0].DNSNames)
			}
			go func() { r.a.Conn.Write([]byte("pong")); io.Copy(io.Discard, r.a.Conn) }()
			tc.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "pong" {
				t.Errorf("read %q, %v", buf, err)
			}
			tc.Close()
		})
	}
	if client.count(t, "tls_handshakes_total", map[string]string{"direction": "outbound"}) != 3 ||
		server.count(t, "tls_handshakes_total", map[string]string{"direction": "inbound"}) != 3 {
		t.Error("handshakes not counted")
	}
}

// Each certificate problem is its own error, with a message that names it,
// a log line and a count by reason.
func TestHandshakeFailures(t *testing.T) {
	ca, stranger := pkitest.New(t), pkitest.New(t)
	now := time.Now()
	webCert, dbCert := ca.Valid(t, webID), ca.Valid(t, dbID)
	for _, tc := range []struct {
		name                   string
		clientName             string
		clientCert, serverCert *tls.Certificate
		// The side that refuses, and how.
		dir, reason, msg string
	}{
		{name: "server identity mismatch", clientCert: webCert, serverCert: ca.Valid(t, otherID),
			dir: "outbound", reason: mtls.ReasonIdentityMismatch, msg: "tls: server identity mismatch: want " + dbID + ", got " + otherID},
		{name: "server from an unknown CA", clientCert: webCert, serverCert: stranger.Valid(t, dbID),
			dir: "outbound", reason: mtls.ReasonUnknownAuthority, msg: "tls: server certificate for " + dbID + " is from an unknown authority"},
		{name: "server certificate expired", clientCert: webCert, serverCert: ca.Issue(t, dbID, now.Add(-2*time.Hour), now.Add(-time.Hour)),
			dir: "outbound", reason: mtls.ReasonExpired, msg: "tls: server certificate for " + dbID + " expired at"},
		{name: "server certificate not yet valid", clientCert: webCert, serverCert: ca.Issue(t, dbID, now.Add(time.Hour), now.Add(2*time.Hour)),
			dir: "outbound", reason: mtls.ReasonNotYetValid, msg: "is not valid before"},
		{name: "no local certificate", clientCert: nil, serverCert: dbCert,
			dir: "outbound", reason: mtls.ReasonNoLocalCertificate, msg: "tls: no certificate for the local identity " + webID + " yet"},
		{name: "client from an unknown CA", clientCert: stranger.Valid(t, webID), serverCert: dbCert,
			dir: "inbound", reason: mtls.ReasonUnknownAuthority, msg: "tls: client certificate for " + webID + " is from an unknown authority"},
		{name: "client certificate expired", clientCert: ca.Issue(t, webID, now.Add(-2*time.Hour), now.Add(-time.Hour)), serverCert: dbCert,
			dir: "inbound", reason: mtls.ReasonExpired, msg: "tls: client certificate for " + webID + " expired at"},
		{name: "server without a certificate yet", clientCert: webCert, serverCert: nil,
			dir: "inbound", reason: mtls.ReasonNoLocalCertificate, msg: "tls: no certificate for the local identity " + dbID + " yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newSide(t, ca.Roots, webID, tc.clientCert)
			server := newSide(t, ca.Roots, dbID, tc.serverCert)
			conn, r, err := handshake(t, client, server, dbID, mtls.ALPNHTTP2)
			refuser, refused := client, err
			if tc.dir == "inbound" {
				refuser, refused = server, r.err
				if err == nil {
					// TLS 1.3: the client finishes first and reads the
					// server's refusal.
					_, err = conn.Read(make([]byte, 1))
					if err == nil || !strings.Contains(err.Error(), "remote error") {
						t.Errorf("client read after a refused handshake: %v, want the server's alert", err)
					}
				}
			}
			var e *mtls.Error
			if !errors.As(refused, &e) || e.Reason != tc.reason || e.Direction != tc.dir || !strings.Contains(e.Error(), tc.msg) {
				t.Fatalf("%s error %v (%#v); want reason %s with %q", tc.dir, refused, e, tc.reason, tc.msg)
			}
			if n := refuser.count(t, "tls_handshake_errors_total", map[string]string{"direction": tc.dir, "reason": tc.reason}); n != 1 {
				t.Errorf("tls_handshake_errors_total{direction=%q,reason=%q} = %v, want 1", tc.dir, tc.reason, n)
			}
			if !strings.Contains(refuser.logs.String(), "reason="+tc.reason) {
				t.Errorf("no log line with the reason:\n%s", refuser.logs.String())
			}
		})
	}
}

// A client without a certificate still gets TLS, without a client
// identity.
func TestClientWithoutCertificate(t *testing.T) {
	ca := pkitest.New(t)
	server := newSide(t, ca.Roots, dbID, ca.Valid(t, dbID))
	cc, sc := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.2:8080"))
	ch := make(chan acceptResult, 1)
	go func() { a, err := server.tls.Accept(sc, 5*time.Second); ch <- acceptResult{a, err} }()
	tc := tls.Client(cc, &tls.Config{ServerName: dbID, RootCAs: ca.Roots, NextProtos: []string{mtls.ALPNOpaque}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r := netxtest.Await(t, ch, "Accept")
	if r.err != nil || !r.a.Terminated || r.a.ClientID != "" || r.a.ALPN != mtls.ALPNOpaque {
		t.Errorf("Accepted %+v, %v; want terminated without a client identity", r.a, r.err)
	}
}

// A ClientHello for another name (the application's own TLS) is handed
// back untouched: the application completes its handshake with the client
// on the replayed bytes, and the proxy wrote nothing.
func TestPassthrough(t *testing.T) {
	ca := pkitest.New(t)
	server := newSide(t, ca.Roots, dbID, ca.Valid(t, dbID))
	// The application's own PKI.
	app := pkitest.New(t)
	appCert := app.Valid(t, "shop.example.com")
	for _, sni := range []string{"shop.example.com", ""} {
		t.Run("sni="+sni, func(t *testing.T) {
			cc, sc := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.2:443"))
			ch := make(chan acceptResult, 1)
			go func() {
				a, err := server.tls.Accept(sc, 5*time.Second)
				ch <- acceptResult{a, err}
			}()
			clientDone := make(chan error, 1)
			go func() {
				tc := tls.Client(cc, &tls.Config{ServerName: sni, RootCAs: app.Roots, InsecureSkipVerify: sni == ""})
				clientDone <- tc.Handshake()
			}()
			r := netxtest.Await(t, ch, "Accept")
			if r.err != nil || r.a.Terminated || r.a.SNI != sni {
				t.Fatalf("Accepted %+v, %v; want passthrough", r.a, r.err)
			}
			appConn := tls.Server(r.a.Conn, &tls.Config{Certificates: []tls.Certificate{*appCert}})
			if err := appConn.Handshake(); err != nil {
				t.Fatalf("the application's handshake on the replayed hello: %v", err)
			}
			if err := netxtest.Await(t, clientDone, "client handshake"); err != nil {
				t.Errorf("client handshake through passthrough: %v", err)
			}
		})
	}
}

// Bytes that start like a TLS record but are no ClientHello are replayed
// as they came.
func TestNotAClientHello(t *testing.T) {
	ca := pkitest.New(t)
	server := newSide(t, ca.Roots, dbID, ca.Valid(t, dbID))
	cc, sc := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.2:443"))
	garbage := "\x16\x03\x01\x00\x05hello, not a handshake|rest"
	netxtest.Write(t, cc, garbage)
	netxtest.CloseWrite(t, cc)
	a, err := server.tls.Accept(sc, 5*time.Second)
	if err != nil || a.Terminated {
		t.Fatalf("Accepted %+v, %v; want passthrough", a, err)
	}
	got, err := io.ReadAll(a.Conn)
	if err != nil || string(got) != garbage {
		t.Errorf("replayed %q, %v; want %q", got, err, garbage)
	}
	// Nothing was written to the client (no alert).
	cc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := cc.Read(make([]byte, 16)); n != 0 || !isTimeout(err) {
		t.Errorf("the client read %d bytes, %v; want nothing", n, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
