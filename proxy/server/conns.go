package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/sluice-mesh/sluice/proxy/detect"
	"github.com/sluice-mesh/sluice/proxy/httpproxy"
	"github.com/sluice-mesh/sluice/proxy/inbound"
	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/mtls"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/opaque"
	"github.com/sluice-mesh/sluice/proxy/outbound"
	"github.com/sluice-mesh/sluice/proxy/tcpstats"
)

// Probe lines of the steering probe (see proxy/README.md, Readiness).
const (
	ProbeRequest = "SLUICE-PROBE\n"
	ProbeReply   = "SLUICE-STEERED\n"
)

// inboundPlain labels inbound connections that are not the mesh's mutual
// TLS: plaintext from unmeshed clients (served: the default inbound policy
// admits them), the application's own TLS carried through, and every
// inbound connection of a proxy without identity.
var inboundPlain = metrics.TLS{Status: "no_identity", NoTLSReason: "no_tls_from_remote"}

// handleOutbound serves a connection the application made.
func (s *Server) handleOutbound(c net.Conn) {
	orig, err := netx.OriginalDst(c)
	if err != nil {
		s.log.Warn("outbound connection without an original destination; closing", "client", c.RemoteAddr().String(), "error", err)
		c.Close()
		return
	}
	if s.isOwn(orig) {
		s.log.Warn("outbound connection to the proxy itself; closing to avoid a loop", "client", c.RemoteAddr().String(), "dst", orig)
		c.Close()
		return
	}
	ci := &httpproxy.ConnInfo{Direction: "outbound", Client: s.application(netx.AddrPortOf(c.RemoteAddr())), OrigDst: orig, TLS: outbound.NoIdentity}
	cc := tcpstats.Wrap(c, s.metrics.TCP(metrics.Target{Direction: "outbound", Addr: orig, TLS: outbound.NoIdentity}, "src"))
	s.serve(cc, ci, s.outHTTP, s.relayOutbound)
}

// application names the application's end of an outbound connection for
// tap: steering makes the application connect to the proxy over loopback,
// so a loopback client is shown with the pod's address of its family (the
// port stays the application's). Anything else, or a pod address unknown,
// is returned as it is.
func (s *Server) application(client netip.AddrPort) netip.AddrPort {
	if !client.Addr().IsLoopback() {
		return client
	}
	for _, ip := range s.cfg.PodIPs {
		if ip.Is4() == client.Addr().Unmap().Is4() {
			return netip.AddrPortFrom(ip, client.Port())
		}
	}
	return client
}

// handleInbound serves a connection that reached the pod.
func (s *Server) handleInbound(c net.Conn) {
	local := netx.AddrPortOf(c.LocalAddr())
	orig, err := netx.OriginalDst(c)
	if err != nil {
		// eBPF steering (sk_lookup) keeps the original destination as the
		// local address; iptables REDIRECT leaves it to conntrack.
		orig = local
	}
	if orig.Port() == s.cfg.SteeringProbePort {
		s.answerProbe(c)
		return
	}
	if s.isOwn(orig) || s.isOwnPort(orig.Port()) {
		s.log.Warn("inbound connection to the proxy's own port; closing to avoid a loop", "client", c.RemoteAddr().String(), "dst", orig)
		c.Close()
		return
	}
	ci := &httpproxy.ConnInfo{Direction: "inbound", Client: netx.AddrPortOf(c.RemoteAddr()), OrigDst: orig, TLS: inboundPlain}
	// The connection's labels (tls, client_id) are known once it is known
	// whether it is the mesh's TLS.
	cc := tcpstats.Pending(c)
	if s.tls == nil {
		cc.Attach(s.inboundSeries(ci))
		s.serve(cc, ci, s.inHTTP, s.relayInbound)
		return
	}
	s.serveInbound(cc, ci)
}

// inboundSeries is the TCP series of an inbound connection from its client.
func (s *Server) inboundSeries(ci *httpproxy.ConnInfo) *metrics.TCPSeries {
	return s.metrics.TCP(metrics.Target{Direction: "inbound", Addr: ci.OrigDst, TLS: ci.TLS}, "src")
}

// serveInbound serves an inbound connection of a proxy with identity: it
// detects the protocol (on an opaque port, only whether TLS starts) and
// hands TLS to serveInboundTLS; the rest is served as without identity.
func (s *Server) serveInbound(cc *tcpstats.Conn, ci *httpproxy.ConnInfo) {
	opaquePort := s.cfg.OpaquePorts.Contains(ci.OrigDst.Port())
	detectProto := detect.Detect
	if opaquePort {
		detectProto = detect.DetectTLS
	}
	proto, dc, err := detectProto(cc, s.cfg.DetectTimeout)
	if proto == detect.TLS {
		s.serveInboundTLS(cc, dc, ci, opaquePort)
		return
	}
	cc.Attach(s.inboundSeries(ci))
	switch {
	case err != nil && len(dc.Peeked()) == 0 && !errors.Is(err, io.EOF):
		cc.Close()
	case proto == detect.HTTP1 || proto == detect.HTTP2:
		s.inHTTP.ServeConn(dc, ci)
	default:
		s.relayInbound(dc, ci)
	}
}

// serveInboundTLS terminates a ClientHello for the mesh and serves what it
// carries by ALPN: h2 and http/1.1 as HTTP, sluice.io/opaque relayed to the
// application's port, anything else as a plaintext connection would be. A
// hello for another name (the application's own TLS) is relayed untouched.
// A refused handshake (logged and counted by mtls) is closed, recorded in no
// tcp_* series.
func (s *Server) serveInboundTLS(cc *tcpstats.Conn, dc *detect.Conn, ci *httpproxy.ConnInfo, opaquePort bool) {
	a, err := s.tls.Accept(dc, s.cfg.DetectTimeout)
	if err != nil {
		cc.Close()
		return
	}
	if !a.Terminated {
		cc.Attach(s.inboundSeries(ci))
		s.relayInbound(a.Conn, ci)
		return
	}
	ci.TLS = metrics.TLS{Status: "true", ClientID: a.ClientID}
	cc.Attach(s.inboundSeries(ci))
	switch a.ALPN {
	case mtls.ALPNOpaque:
		s.relayInbound(a.Conn, ci)
	case mtls.ALPNHTTP2, mtls.ALPNHTTP1:
		s.inHTTP.ServeConn(a.Conn, ci)
	default:
		if opaquePort {
			s.relayInbound(a.Conn, ci)
			return
		}
		s.serve(a.Conn, ci, s.inHTTP, s.relayInbound)
	}
}

// serve detects the protocol (unless the port is opaque) and hands the
// connection on.
func (s *Server) serve(c net.Conn, ci *httpproxy.ConnInfo, hp *httpproxy.Proxy, relay func(net.Conn, *httpproxy.ConnInfo)) {
	if s.cfg.OpaquePorts.Contains(ci.OrigDst.Port()) {
		relay(c, ci)
		return
	}
	proto, dc, err := detect.Detect(c, s.cfg.DetectTimeout)
	if err != nil && len(dc.Peeked()) == 0 && !errors.Is(err, io.EOF) {
		// Reset before a byte: nothing to forward. (A clean half-close
		// before any byte is relayed: the server may still speak.)
		c.Close()
		return
	}
	switch proto {
	case detect.HTTP1, detect.HTTP2:
		hp.ServeConn(dc, ci)
	default:
		relay(dc, ci)
	}
}

// relayOutbound carries an opaque outbound connection to the endpoint
// discovery picks for its original destination.
func (s *Server) relayOutbound(c net.Conn, ci *httpproxy.ConnInfo) {
	s.relays.Add(1)
	defer s.relays.Done()
	t, err := s.out.RouteTCP(s.relayCtx, ci.OrigDst)
	if err != nil {
		s.log.Info("opaque connection refused", "dst", ci.OrigDst, "error", err)
		c.Close()
		return
	}
	serverID := ""
	if t.TLS.Status == "true" {
		serverID = t.TLS.ServerID
	}
	s.relay(c, ci, t.Addr, metrics.Target{Direction: "outbound", Addr: t.Addr, TLS: t.TLS, Dst: t.Labels}, t.Done, serverID)
}

// relayInbound carries an opaque inbound connection to the application.
func (s *Server) relayInbound(c net.Conn, ci *httpproxy.ConnInfo) {
	s.relays.Add(1)
	defer s.relays.Done()
	s.relay(c, ci, inbound.AppAddr(ci.OrigDst), metrics.Target{Direction: "inbound", Addr: ci.OrigDst, TLS: ci.TLS}, nil, "")
}

// relay connects to to (over mutual TLS with ALPN sluice.io/opaque when
// serverID is not "") and copies both ways. A failed connect or handshake
// resets the client's connection.
func (s *Server) relay(c net.Conn, ci *httpproxy.ConnInfo, to netip.AddrPort, tg metrics.Target, done func(bool), serverID string) {
	fail := func() {
		if done != nil {
			done(true)
		}
		resetConn(c)
	}
	up, err := s.net.Dial(s.relayCtx, to)
	if err != nil {
		s.log.Info("opaque connect failed", "direction", ci.Direction, "dst", to, "error", err)
		fail()
		return
	}
	up = tcpstats.Wrap(up, s.metrics.TCP(tg, "dst"))
	if serverID != "" {
		if s.tls == nil {
			s.log.Error("mutual TLS asked for without a local identity", "dst", to, "server_id", serverID)
			up.Close()
			fail()
			return
		}
		ctx, cancel := context.WithTimeout(s.relayCtx, s.cfg.ConnectTimeout)
		tc, err := s.tls.Connect(ctx, up, serverID, mtls.ALPNOpaque)
		cancel()
		if err != nil {
			// mtls logged and counted it; the client sees a reset.
			up.Close()
			fail()
			return
		}
		up = tc
	}
	res := opaque.Relay(s.relayCtx, c, up, opaque.Counters{})
	if done != nil {
		done(res.Err != nil)
	}
	var op *net.OpError
	if serverID != "" && res.ServerToClient == 0 && errors.As(res.Err, &op) && op.Op == "remote error" {
		// A TLS 1.3 server refuses our certificate after our side of the
		// handshake is done: its alert arrives at the first read.
		s.log.Warn("mTLS: the server refused the connection; the client's connection is reset",
			"dst", to, "server_id", serverID, "error", op.Error())
	}
}

// answerProbe answers the node agent's steering probe: a connection that
// reached the inbound listener on the probe port proves that steering works.
func (s *Server) answerProbe(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReaderSize(c, 64).ReadString('\n')
	if err != nil || line != ProbeRequest {
		return
	}
	if _, err := c.Write([]byte(ProbeReply)); err != nil {
		return
	}
	if !s.steered.Swap(true) {
		s.log.Info("steering confirmed by the node agent's probe", "from", c.RemoteAddr().String())
	}
}

func (s *Server) isOwn(a netip.AddrPort) bool {
	if s.own[a] {
		return true
	}
	// A listener on an unspecified address owns its port on every address.
	for l := range s.own {
		if l.Addr().IsUnspecified() && l.Port() == a.Port() && l.Addr().Is4() == a.Addr().Unmap().Is4() {
			return true
		}
	}
	return false
}

func (s *Server) isOwnPort(p uint16) bool {
	for l := range s.own {
		if l.Port() == p {
			return true
		}
	}
	return false
}

// resetConn closes c with a TCP reset, so the client sees the failure as a
// refused or broken connection rather than an empty answer: the innermost
// connection that implements SetLinger (found through NetConn) gets
// SetLinger(0) before the close.
func resetConn(c net.Conn) {
	for inner := c; inner != nil; {
		if l, ok := inner.(interface{ SetLinger(int) error }); ok {
			_ = l.SetLinger(0)
			break
		}
		u, ok := inner.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		inner = u.NetConn()
	}
	c.Close()
}
