// Package inbound routes what reaches a pod: every request and connection
// goes to the application on the loopback address, on the port the client
// asked for. Requests that another Sluice proxy carried over HTTP/2 on an
// HTTP/1 application's behalf are restored to HTTP/1.1.
package inbound

import (
	"net/http"
	"net/netip"
	"sync"

	"github.com/sluice-mesh/sluice/proxy/httpproxy"
	"github.com/sluice-mesh/sluice/proxy/metrics"
)

// Router routes inbound requests. It implements httpproxy.Router.
type Router struct {
	reg    *metrics.Registry
	series sync.Map // seriesKey → *metrics.HTTPSeries
}

var _ httpproxy.Router = (*Router)(nil)

// New returns a Router counting in reg.
func New(reg *metrics.Registry) *Router { return &Router{reg: reg} }

// AppAddr is where the application listens for a connection that was
// going to orig: loopback of the same family, same port.
func AppAddr(orig netip.AddrPort) netip.AddrPort {
	if orig.Addr().Is6() && !orig.Addr().Is4In6() {
		return netip.AddrPortFrom(netip.IPv6Loopback(), orig.Port())
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), orig.Port())
}

// Route implements httpproxy.Router.
func (r *Router) Route(req *http.Request, ci *httpproxy.ConnInfo) (*httpproxy.Target, error) {
	t := &httpproxy.Target{Addr: AppAddr(ci.OrigDst), Series: r.Series(req, ci)}
	if req.ProtoMajor == 2 && req.Header.Get(httpproxy.OrigProtoHeader) == "" {
		t.Proto = httpproxy.H2
	}
	return t, nil
}

type seriesKey struct {
	authority string
	addr      netip.AddrPort
	tls       metrics.TLS
}

// Series implements httpproxy.Router.
func (r *Router) Series(req *http.Request, ci *httpproxy.ConnInfo) *metrics.HTTPSeries {
	k := seriesKey{req.Host, ci.OrigDst, ci.TLS}
	if s, ok := r.series.Load(k); ok {
		return s.(*metrics.HTTPSeries)
	}
	s := r.reg.HTTP(metrics.Target{Direction: "inbound", Authority: req.Host, Addr: ci.OrigDst, TLS: ci.TLS})
	r.series.Store(k, s)
	return s
}
