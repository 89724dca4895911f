package httpproxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/tcpstats"
)

// transports returns the pooled HTTP/1.1 and h2c transports to upstreams.
// Both keep idle connections per endpoint for IdleTimeout, never compress
// or decompress, and dial through the proxy's Network with the connect
// timeout, counting each connection's bytes as the "dst" peer.
func (p *Proxy) transports() (h1, h2 *http.Transport) {
	var p1, p2 http.Protocols
	p1.SetHTTP1(true)
	p2.SetUnencryptedHTTP2(true)
	base := func(protos *http.Protocols) *http.Transport {
		return &http.Transport{
			Protocols:             protos,
			DialContext:           p.dial,
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
	return base(&p1), base(&p2)
}

// dial connects to an upstream (addr is the request URL's host, which
// rewrite set to the target address).
func (p *Proxy) dial(ctx context.Context, _, addr string) (net.Conn, error) {
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
	if p.o.Metrics == nil {
		return c, nil
	}
	tg := metrics.Target{Direction: p.o.Direction, Addr: ap}
	if x := exchangeFrom(ctx); x != nil {
		tg.Dst = x.t.DstLabels
		tg.TLS = x.ci.TLS
	}
	return tcpstats.Wrap(c, p.o.Metrics.TCP(tg, "dst")), nil
}

// roundTripper sends a request on the transport its target's protocol asks for.
type roundTripper struct{ p *Proxy }

// RoundTrip implements http.RoundTripper.
func (rt roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	if x := exchangeFrom(r.Context()); x != nil && x.t.Proto == H2 {
		return rt.p.h2.RoundTrip(r)
	}
	return rt.p.h1.RoundTrip(r)
}
