package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/mtls"
	"github.com/sluice-mesh/sluice/proxy/tcpstats"
)

// Originator originates mutual TLS on c to a meshed endpoint whose identity
// is serverID, offering alpn, and returns the secured connection
// (*mtls.TLS implements it). Its errors are *mtls.Error.
type Originator interface {
	Connect(ctx context.Context, c net.Conn, serverID, alpn string) (net.Conn, error)
}

// transports is a pair of pooled HTTP/1.1 and h2 transports whose
// connections all go to peers of one kind: plaintext, or mutual TLS to one
// server identity. Keeping them apart keeps a pooled connection from being
// reused for a request that needs another identity at the same address.
type transports struct{ h1, h2 *http.Transport }

// transportsFor returns the transports for connections to serverID (""
// for plaintext), creating them at first use.
func (p *Proxy) transportsFor(serverID string) *transports {
	if serverID == "" {
		return p.plain
	}
	if t, ok := p.secured.Load(serverID); ok {
		return t.(*transports)
	}
	t, _ := p.secured.LoadOrStore(serverID, p.newTransports(serverID))
	return t.(*transports)
}

// closeIdle closes every transport's idle connections.
func (p *Proxy) closeIdle() {
	p.plain.h1.CloseIdleConnections()
	p.plain.h2.CloseIdleConnections()
	p.secured.Range(func(_, v any) bool {
		v.(*transports).h1.CloseIdleConnections()
		v.(*transports).h2.CloseIdleConnections()
		return true
	})
}

// newTransports returns the pooled HTTP/1.1 and h2 transports to upstreams
// (to serverID over mutual TLS, when not ""). Both keep idle connections per
// endpoint for IdleTimeout, never compress or decompress, and dial through
// the proxy's Network with the connect timeout (which covers the TLS
// handshake), counting each connection's bytes as the "dst" peer. Over TLS
// the HTTP/1.1 transport offers ALPN http/1.1 and the h2 one h2, and both
// speak their protocol on the TLS connection as they would on TCP.
func (p *Proxy) newTransports(serverID string) *transports {
	var p1, p2 http.Protocols
	p1.SetHTTP1(true)
	p2.SetUnencryptedHTTP2(true)
	base := func(protos *http.Protocols, alpn string) *http.Transport {
		return &http.Transport{
			Protocols: protos,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return p.dial(ctx, addr, serverID, alpn)
			},
			MaxIdleConnsPerHost:   1024,
			IdleConnTimeout:       p.o.IdleTimeout,
			ResponseHeaderTimeout: p.o.ResponseHeaderTimeout,
			ExpectContinueTimeout: time.Second, // Expect: 100-continue waits for the upstream's 100 (as curl does) before the body moves
			DisableCompression:    true,
			WriteBufferSize:       32 << 10,
			ReadBufferSize:        32 << 10,
			HTTP2:                 &http.HTTP2Config{MaxConcurrentStreams: int(p.o.MaxConcurrentStreams)},
		}
	}
	return &transports{h1: base(&p1, mtls.ALPNHTTP1), h2: base(&p2, mtls.ALPNHTTP2)}
}

// dial connects to an upstream (addr is the request URL's host, which
// rewrite set to the target address) and, when serverID is not "",
// originates mutual TLS to it.
func (p *Proxy) dial(ctx context.Context, addr, serverID, alpn string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if p.o.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.o.ConnectTimeout)
		defer cancel()
	}
	c, err := p.o.Network.Dial(ctx, ap)
	if err != nil {
		return nil, err
	}
	if p.o.Metrics != nil {
		tg := metrics.Target{Direction: p.o.Direction, Addr: ap}
		if x := exchangeFrom(ctx); x != nil {
			tg.Dst = x.t.DstLabels
			tg.TLS = x.upstreamTLS()
		}
		c = tcpstats.Wrap(c, p.o.Metrics.TCP(tg, "dst"))
	}
	if serverID == "" {
		return c, nil
	}
	if p.o.TLS == nil {
		c.Close()
		return nil, fmt.Errorf("dial %s: mutual TLS to %s asked for without a local identity", addr, serverID)
	}
	tc, err := p.o.TLS.Connect(ctx, c, serverID, alpn)
	if err != nil {
		c.Close()
		return nil, err
	}
	if x := exchangeFrom(ctx); x != nil {
		return &refusalConn{Conn: tc, x: x}, nil
	}
	return tc, nil
}

// refusalConn notes, in the exchange that opened it, an alert with which
// the peer refuses the connection at its first read: a TLS 1.3 server
// checks the client's certificate after the client's side of the handshake
// is done.
type refusalConn struct {
	net.Conn
	x    *exchange
	read atomic.Bool // a read returned: later errors are not refusals
}

func (c *refusalConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if !c.read.Swap(true) && n == 0 {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "remote error" {
			c.x.refused.Store(op)
		}
	}
	return n, err
}

// NetConn returns the TLS connection.
func (c *refusalConn) NetConn() net.Conn { return c.Conn }

// roundTripper sends a request on the transport its target asks for: h2 or
// HTTP/1.1, plaintext or mutual TLS to the target's identity.
type roundTripper struct{ p *Proxy }

// RoundTrip implements http.RoundTripper.
func (rt roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	x := exchangeFrom(r.Context())
	if x == nil {
		return rt.p.plain.h1.RoundTrip(r)
	}
	t := rt.p.transportsFor(x.t.ServerID())
	if x.t.Proto == H2 {
		return t.h2.RoundTrip(r)
	}
	return t.h1.RoundTrip(r)
}
