// Package mtls is the mutual TLS between two meshed proxies. The client's
// proxy originates TLS 1.3 (Connect) to the identity that discovery names
// for an endpoint: that identity is the SNI, the ALPN says what the
// connection carries (ALPNHTTP2, ALPNHTTP1, ALPNOpaque), the proxy presents
// its own certificate, and the server's certificate must chain to the trust
// anchors and carry exactly that identity. The server's proxy peeks at a
// TLS ClientHello (Accept): a hello for its own identity, or for another
// identity of its trust domain (a peer with stale discovery, who then sees
// the mismatch), is terminated, the client's certificate checked when it
// presents one, and the client's identity recorded; any other hello (the
// application's own TLS) is handed back untouched, to be carried as opaque
// TCP.
//
// Every refused handshake is an *Error whose Reason names the failure
// (identity mismatch, unknown authority, expired certificate, ...), is
// logged, and is counted in tls_handshake_errors_total{direction,reason};
// completed handshakes are counted in tls_handshakes_total{direction}.
package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/proxy/detect"
)

// ALPN protocol names between two Sluice proxies.
const (
	// ALPNHTTP2 carries HTTP/2, and HTTP/1 requests carried on HTTP/2
	// between proxies (the sluice-orig-proto header).
	ALPNHTTP2 = "h2"
	// ALPNHTTP1 carries HTTP/1.1, for requests that need it end to end
	// (upgrades) or endpoints without the h2 hint.
	ALPNHTTP1 = "http/1.1"
	// ALPNOpaque carries opaque TCP to the connection's original port.
	ALPNOpaque = "sluice.io/opaque"
)

// Directions, the direction label of the metrics.
const (
	Outbound = "outbound"
	Inbound  = "inbound"
)

// Reasons a handshake fails: the Reason of an *Error and the reason label
// of tls_handshake_errors_total.
const (
	// ReasonIdentityMismatch: the server's certificate is valid but for
	// another identity than discovery named.
	ReasonIdentityMismatch = "identity_mismatch"
	// ReasonUnknownAuthority: the peer's certificate does not chain to the
	// trust anchors.
	ReasonUnknownAuthority = "unknown_authority"
	// ReasonExpired: the peer's certificate (or one of its issuers) has
	// expired.
	ReasonExpired = "expired"
	// ReasonNotYetValid: the peer's certificate is not valid yet.
	ReasonNotYetValid = "not_yet_valid"
	// ReasonInvalidCertificate: any other problem with the peer's
	// certificate (wrong key usage, no identity, ...).
	ReasonInvalidCertificate = "invalid_certificate"
	// ReasonNoCertificate: the server presented no certificate.
	ReasonNoCertificate = "no_certificate"
	// ReasonNoLocalCertificate: the proxy has no certificate yet.
	ReasonNoLocalCertificate = "no_local_certificate"
	// ReasonPeerRefused: the peer aborted the handshake with an alert, such
	// as a server that refused our certificate.
	ReasonPeerRefused = "peer_refused"
	// ReasonTimeout: the handshake did not finish in time.
	ReasonTimeout = "timeout"
	// ReasonProtocol: anything else, such as a peer that does not speak
	// TLS 1.3 or agree on the ALPN, or a connection closed mid-handshake.
	ReasonProtocol = "protocol"
)

// Error is a failed mutual-TLS handshake.
type Error struct {
	// Direction is Outbound (we are the client) or Inbound.
	Direction string
	// Reason is one of the Reason* constants.
	Reason string
	// Want is, outbound, the server identity discovery named.
	Want string
	// Got is the identity (DNS SANs) of the peer's certificate, when it
	// presented one.
	Got string
	// Err is the underlying error, if any.
	Err error

	msg string
}

func (e *Error) Error() string {
	if e.msg == "" {
		return "tls: " + e.Direction + " handshake failed: " + e.Reason
	}
	return e.msg
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Credentials are the proxy's own identity: its name and current
// certificate (nil before the first one). *identity.Client implements it.
type Credentials interface {
	Name() string
	Certificate() *tls.Certificate
}

// Options configure a TLS.
type Options struct {
	// Local is the proxy's identity. Required.
	Local Credentials
	// Roots are the trust anchors. Required.
	Roots *x509.CertPool
	// TrustDomain is Local's trust domain: ClientHellos for any identity
	// of it are terminated. "" terminates only hellos for Local's name.
	TrustDomain string
	// Now tells the time for certificate checks; nil: time.Now.
	Now func() time.Time
	// Logger receives one line per refused handshake; nil discards.
	Logger *slog.Logger
	// Registerer receives tls_handshakes_total and
	// tls_handshake_errors_total; nil registers them nowhere.
	Registerer prometheus.Registerer
}

// TLS originates and terminates the proxy's mutual TLS. It is safe for
// concurrent use.
type TLS struct {
	o          Options
	log        *slog.Logger
	handshakes *prometheus.CounterVec
	errors     *prometheus.CounterVec
	server     *tls.Config
}

// New returns a TLS for o.
func New(o Options) (*TLS, error) {
	if o.Local == nil || o.Roots == nil {
		return nil, errors.New("mutual TLS: no local identity or trust anchors")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m := &TLS{
		o:   o,
		log: o.Logger.With("component", "mtls"),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tls_handshakes_total",
			Help: "Mutual-TLS handshakes completed with meshed peers, by direction (outbound: originated, inbound: terminated).",
		}, []string{"direction"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tls_handshake_errors_total",
			Help: "Mutual-TLS handshakes that failed, by direction and reason (identity_mismatch, unknown_authority, expired, ...).",
		}, []string{"direction", "reason"}),
	}
	for _, d := range []string{Outbound, Inbound} {
		m.handshakes.WithLabelValues(d)
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{m.handshakes, m.errors} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("mutual TLS: register metrics: %w", err)
			}
		}
	}
	m.server = &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPNHTTP2, ALPNHTTP1, ALPNOpaque},
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return m.localCert(Inbound) },
		ClientAuth:             tls.RequestClientCert, // verified below, when presented
		VerifyConnection:       m.verifyClient,
		SessionTicketsDisabled: true,
		Time:                   o.Now,
	}
	return m, nil
}

// Name returns the local identity.
func (m *TLS) Name() string { return m.o.Local.Name() }

func (m *TLS) localCert(dir string) (*tls.Certificate, error) {
	if c := m.o.Local.Certificate(); c != nil {
		return c, nil
	}
	return nil, &Error{Direction: dir, Reason: ReasonNoLocalCertificate,
		msg: "tls: no certificate for the local identity " + m.o.Local.Name() + " yet"}
}

// Connect originates mutual TLS on c to the proxy whose identity is
// serverID, offering alpn, and returns the connection (a *tls.Conn) once the
// handshake is done and the server's certificate checked. ctx bounds the
// handshake (ending it closes c). A failure is an *Error, logged and
// counted.
func (m *TLS) Connect(ctx context.Context, c net.Conn, serverID, alpn string) (net.Conn, error) {
	cert, err := m.localCert(Outbound)
	if err != nil {
		return nil, m.fail(err.(*Error), c)
	}
	tc := tls.Client(c, &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverID,
		NextProtos: []string{alpn},
		// The chain and the identity are checked in VerifyConnection, which
		// names what is wrong; the default check would say less.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return m.verify(Outbound, cs.PeerCertificates, serverID)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
		Time:                 m.o.Now,
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, m.fail(m.classify(Outbound, err, serverID), c)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != alpn {
		tc.Close()
		return nil, m.fail(&Error{Direction: Outbound, Reason: ReasonProtocol, Want: serverID,
			msg: fmt.Sprintf("tls: the server %s did not agree on the protocol %q (got %q)", serverID, alpn, p)}, c)
	}
	m.handshakes.WithLabelValues(Outbound).Inc()
	return tc, nil
}

// Accepted is what Accept found.
type Accepted struct {
	// Conn is the connection to serve: the terminated *tls.Conn, or, when
	// not Terminated, a connection that replays every byte Accept read.
	Conn net.Conn
	// Terminated says the hello was for the mesh and TLS was terminated.
	Terminated bool
	// SNI is the ClientHello's server name, when one was read.
	SNI string
	// ALPN is the negotiated protocol ("" if none).
	ALPN string
	// ClientID is the identity of the client's certificate; "" when the
	// client presented none.
	ClientID string
}

// errPassthrough aborts a handshake whose hello is not for the mesh.
var errPassthrough = errors.New("not for the mesh")

// Accept reads a TLS ClientHello from c, which has shown a TLS record
// header, within timeout. A hello whose SNI is the local identity, or
// another identity of its trust domain, is terminated: the proxy's
// certificate is presented and the client's, if any, must chain to the
// trust anchors. Anything else, a hello for another name or bytes that are
// not a ClientHello, is returned untouched (Terminated false, nil error)
// with nothing written to c. A failed handshake is an *Error, logged and
// counted; the caller closes c.
func (m *TLS) Accept(c net.Conn, timeout time.Duration) (Accepted, error) {
	hc := &helloConn{Conn: c}
	var sni atomic.Value // string; set in the handshake goroutine, read after
	tc := tls.Server(hc, &tls.Config{
		GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			sni.Store(hi.ServerName)
			if !m.forMesh(hi.ServerName) {
				return nil, errPassthrough
			}
			hc.terminate()
			return m.server, nil
		},
	})
	if timeout > 0 {
		_ = c.SetDeadline(time.Now().Add(timeout))
	}
	err := tc.Handshake()
	_ = c.SetDeadline(time.Time{})
	name, _ := sni.Load().(string)
	if !hc.terminating.Load() {
		return Accepted{Conn: detect.NewConn(c, hc.read), SNI: name}, nil
	}
	if err != nil {
		return Accepted{SNI: name}, m.fail(m.classify(Inbound, err, ""), c)
	}
	cs := tc.ConnectionState()
	a := Accepted{Conn: tc, Terminated: true, SNI: name, ALPN: cs.NegotiatedProtocol}
	if len(cs.PeerCertificates) > 0 {
		a.ClientID = cs.PeerCertificates[0].DNSNames[0] // verifyClient checked there is one
	}
	m.handshakes.WithLabelValues(Inbound).Inc()
	return a, nil
}

// forMesh reports whether a ClientHello for sni is the mesh's: for the
// local identity, or for another identity of the trust domain.
func (m *TLS) forMesh(sni string) bool {
	if sni == m.o.Local.Name() {
		return true
	}
	if m.o.TrustDomain == "" || sni == "" {
		return false
	}
	_, _, err := meshmeta.ParseIdentityName(sni, m.o.TrustDomain)
	return err == nil
}

func (m *TLS) verifyClient(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return nil // an unauthenticated client: TLS without client_id
	}
	return m.verify(Inbound, cs.PeerCertificates, "")
}

// verify checks a peer's chain against the trust anchors now and, for a
// server, that its certificate carries want.
func (m *TLS) verify(dir string, certs []*x509.Certificate, want string) error {
	peer, usage := "server", x509.ExtKeyUsageServerAuth
	if dir == Inbound {
		peer, usage = "client", x509.ExtKeyUsageClientAuth
	}
	if len(certs) == 0 {
		return &Error{Direction: dir, Reason: ReasonNoCertificate, Want: want,
			msg: fmt.Sprintf("tls: the %s presented no certificate", peer)}
	}
	leaf := certs[0]
	got := strings.Join(leaf.DNSNames, ",")
	if got == "" {
		got = "(no DNS name)"
	}
	mk := func(reason, format string, args ...any) *Error {
		return &Error{Direction: dir, Reason: reason, Want: want, Got: got, msg: fmt.Sprintf(format, args...)}
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	now := m.o.Now()
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.o.Roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		var ua x509.UnknownAuthorityError
		var ci x509.CertificateInvalidError
		switch {
		case errors.As(err, &ua):
			e := mk(ReasonUnknownAuthority, "tls: %s certificate for %s is from an unknown authority: its issuer %q does not chain to the trust anchors",
				peer, got, leaf.Issuer.CommonName)
			e.Err = err
			return e
		case errors.As(err, &ci) && ci.Reason == x509.Expired && now.After(ci.Cert.NotAfter):
			which := ""
			if ci.Cert != leaf {
				which = fmt.Sprintf(" (its issuer %q)", ci.Cert.Subject.CommonName)
			}
			e := mk(ReasonExpired, "tls: %s certificate for %s expired%s at %s", peer, got, which, ci.Cert.NotAfter.UTC().Format(time.RFC3339))
			e.Err = err
			return e
		case errors.As(err, &ci) && ci.Reason == x509.Expired:
			e := mk(ReasonNotYetValid, "tls: %s certificate for %s is not valid before %s", peer, got, ci.Cert.NotBefore.UTC().Format(time.RFC3339))
			e.Err = err
			return e
		default:
			e := mk(ReasonInvalidCertificate, "tls: %s certificate for %s is invalid: %v", peer, got, err)
			e.Err = err
			return e
		}
	}
	if dir == Outbound && !slices.Contains(leaf.DNSNames, want) {
		return mk(ReasonIdentityMismatch, "tls: server identity mismatch: want %s, got %s", want, got)
	}
	if dir == Inbound && len(leaf.DNSNames) != 1 {
		return mk(ReasonInvalidCertificate, "tls: client certificate names %q; exactly one identity expected", leaf.DNSNames)
	}
	return nil
}

// classify turns a handshake error into an *Error.
func (m *TLS) classify(dir string, err error, want string) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	peer := "server " + want
	if dir == Inbound {
		peer = "client"
	}
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.As(err, &op) && op.Op == "remote error":
		return &Error{Direction: dir, Reason: ReasonPeerRefused, Want: want, Err: err,
			msg: fmt.Sprintf("tls: the %s refused the handshake: %v", peer, op.Err)}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return &Error{Direction: dir, Reason: ReasonTimeout, Want: want, Err: err,
			msg: fmt.Sprintf("tls: handshake with the %s timed out", peer)}
	}
	return &Error{Direction: dir, Reason: ReasonProtocol, Want: want, Err: err,
		msg: fmt.Sprintf("tls: handshake with the %s failed: %v", peer, err)}
}

// fail logs and counts a failed handshake on c and returns e.
func (m *TLS) fail(e *Error, c net.Conn) *Error {
	if errors.Is(e.Err, context.Canceled) {
		return e // the client went away: nothing to report
	}
	m.errors.WithLabelValues(e.Direction, e.Reason).Inc()
	attrs := []any{"direction", e.Direction, "reason", e.Reason, "peer", c.RemoteAddr().String(), "error", e.Error()}
	if e.Want != "" {
		attrs = append(attrs, "want", e.Want)
	}
	if e.Got != "" {
		attrs = append(attrs, "got", e.Got)
	}
	if e.Direction == Outbound {
		m.log.Warn("mTLS: outbound handshake failed; the connection is refused", attrs...)
	} else {
		m.log.Warn("mTLS: inbound handshake refused", attrs...)
	}
	return e
}

// helloConn is the connection a server handshake reads the ClientHello
// from: until the hello is known to be the mesh's (terminate), it records
// what it reads, so that it can be replayed, and swallows what the
// handshake writes (an alert), so that the client sees nothing.
type helloConn struct {
	net.Conn
	terminating atomic.Bool
	mu          sync.Mutex
	read        []byte
}

func (h *helloConn) terminate() {
	h.mu.Lock()
	h.read = nil
	h.mu.Unlock()
	h.terminating.Store(true)
}

func (h *helloConn) Read(b []byte) (int, error) {
	n, err := h.Conn.Read(b)
	if n > 0 && !h.terminating.Load() {
		h.mu.Lock()
		h.read = append(h.read, b[:n]...)
		h.mu.Unlock()
	}
	return n, err
}

func (h *helloConn) Write(b []byte) (int, error) {
	if !h.terminating.Load() {
		return len(b), nil
	}
	return h.Conn.Write(b)
}

// CloseWrite half-closes the underlying connection.
func (h *helloConn) CloseWrite() error {
	if cw, ok := h.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return h.Conn.Close()
}

// NetConn returns the underlying connection.
func (h *helloConn) NetConn() net.Conn { return h.Conn }
