package server

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/sluice-mesh/sluice/proxy/detect"
	"github.com/sluice-mesh/sluice/proxy/httpproxy"
	"github.com/sluice-mesh/sluice/proxy/inbound"
	"github.com/sluice-mesh/sluice/proxy/metrics"
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

// inboundTLS labels plaintext inbound connections, until mutual TLS exists.
var inboundTLS = metrics.TLS{Status: "no_identity", NoTLSReason: "no_tls_from_remote"}

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
	ci := &httpproxy.ConnInfo{Direction: "outbound", Client: netx.AddrPortOf(c.RemoteAddr()), OrigDst: orig, TLS: outbound.NoIdentity}
	cc := tcpstats.Wrap(c, s.metrics.TCP(metrics.Target{Direction: "outbound", Addr: orig, TLS: outbound.NoIdentity}, "src"))
	s.serve(cc, ci, s.outHTTP, s.relayOutbound)
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
	ci := &httpproxy.ConnInfo{Direction: "inbound", Client: netx.AddrPortOf(c.RemoteAddr()), OrigDst: orig, TLS: inboundTLS}
	cc := tcpstats.Wrap(c, s.metrics.TCP(metrics.Target{Direction: "inbound", Addr: orig, TLS: inboundTLS}, "src"))
	s.serve(cc, ci, s.inHTTP, s.relayInbound)
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
	s.relay(c, ci, t.Addr, metrics.Target{Direction: "outbound", Addr: t.Addr, TLS: t.TLS, Dst: t.Labels}, t.Done)
}

// relayInbound carries an opaque inbound connection to the application.
func (s *Server) relayInbound(c net.Conn, ci *httpproxy.ConnInfo) {
	s.relays.Add(1)
	defer s.relays.Done()
	s.relay(c, ci, inbound.AppAddr(ci.OrigDst), metrics.Target{Direction: "inbound", Addr: ci.OrigDst, TLS: ci.TLS}, nil)
}

func (s *Server) relay(c net.Conn, ci *httpproxy.ConnInfo, to netip.AddrPort, tg metrics.Target, done func(bool)) {
	up, err := s.net.Dial(s.relayCtx, to)
	if err != nil {
		s.log.Info("opaque connect failed", "direction", ci.Direction, "dst", to, "error", err)
		if done != nil {
			done(true)
		}
		resetConn(c)
		return
	}
	up = tcpstats.Wrap(up, s.metrics.TCP(tg, "dst"))
	res := opaque.Relay(s.relayCtx, c, up, opaque.Counters{})
	if done != nil {
		done(res.Err != nil)
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
// refused or broken connection rather than an empty answer.
func resetConn(c net.Conn) {
	for {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
			break
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	c.Close()
}
