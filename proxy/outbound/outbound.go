// Package outbound routes what an application sends out of its pod: HTTP
// requests by authority, resolved through the destination service and
// balanced per request; opaque TCP by original destination, balanced per
// connection. What discovery does not know goes to the original
// destination. An endpoint with a TLS identity from discovery is reached
// over mutual TLS to that identity when the proxy has an identity itself
// (its TLS labels say so: tls="true", server_id).
package outbound

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-mesh/sluice/proxy/balance"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/proxy/httpproxy"
	"github.com/sluice-mesh/sluice/proxy/metrics"
)

// Options configure a Router.
type Options struct {
	Discovery *discovery.Client // nil: no discovery; everything goes to its original destination
	Names     discovery.Names
	Balance   balance.Options
	Metrics   *metrics.Registry
	// LocalIdentity says the proxy has a TLS identity: endpoints with an
	// identity are then reached over mutual TLS. false: in plaintext,
	// labelled tls="disabled".
	LocalIdentity bool
	// DiscoveryWait bounds how long a request waits for a destination's
	// first answer before going to its original destination; 0: 3s.
	DiscoveryWait time.Duration
	// IdleTimeout is how long an unused destination is kept; 0: 5m.
	IdleTimeout time.Duration
	Logger      *slog.Logger
}

// Router routes outbound requests and connections. It implements
// httpproxy.Router.
type Router struct {
	o     Options
	log   *slog.Logger
	mu    sync.RWMutex
	dests map[string]*dest
	pass  sync.Map // passKey → *metrics.HTTPSeries
	stop  chan struct{}
	once  sync.Once
}

var _ httpproxy.Router = (*Router)(nil)

// New returns a Router. Close stops its background sweep.
func New(o Options) *Router {
	if o.DiscoveryWait == 0 {
		o.DiscoveryWait = 3 * time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Router{o: o, log: o.Logger.With("component", "outbound"), dests: map[string]*dest{}, stop: make(chan struct{})}
	if o.Discovery != nil {
		go r.sweep()
	}
	return r
}

// Close releases every destination.
func (r *Router) Close() {
	r.once.Do(func() { close(r.stop) })
	r.mu.Lock()
	defer r.mu.Unlock()
	for p, d := range r.dests {
		d.watch.Release()
		delete(r.dests, p)
	}
}

// dest is one resolved destination with its balancer.
type dest struct {
	path          string
	localIdentity bool
	watch         *discovery.Watch
	bal           *balance.Balancer[*endpoint]
	lastUsed      atomic.Int64
	mu            sync.Mutex
	version       atomic.Uint64
	eps           map[netip.AddrPort]*endpoint
}

// endpoint is one endpoint of a destination and the series of requests
// sent to it, by authority.
type endpoint struct {
	ep     discovery.Endpoint
	tls    metrics.TLS
	series sync.Map // authority → *metrics.HTTPSeries
}

func (r *Router) dest(path string) *dest {
	r.mu.RLock()
	d := r.dests[path]
	r.mu.RUnlock()
	if d == nil {
		d = r.addDest(path)
	}
	d.lastUsed.Store(time.Now().UnixNano())
	return d
}

// addDest starts resolving path, unless another request just did.
func (r *Router) addDest(path string) *dest {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.dests[path]
	if d == nil {
		d = &dest{
			path:          path,
			localIdentity: r.o.LocalIdentity,
			watch:         r.o.Discovery.Watch(path),
			bal:           balance.New[*endpoint](r.o.Balance),
			eps:           map[netip.AddrPort]*endpoint{},
		}
		r.dests[path] = d
	}
	return d
}

// sweep releases destinations unused for IdleTimeout.
func (r *Router) sweep() {
	t := time.NewTicker(r.o.IdleTimeout / 4)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		cutoff := time.Now().Add(-r.o.IdleTimeout).UnixNano()
		r.mu.Lock()
		for p, d := range r.dests {
			if d.lastUsed.Load() < cutoff {
				d.watch.Release()
				delete(r.dests, p)
			}
		}
		r.mu.Unlock()
	}
}

// sync brings the balancer up to the snapshot's endpoints.
func (d *dest) sync(s discovery.Snapshot) {
	if d.version.Load() == s.Version {
		return // the common case: nothing changed since the last request
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.version.Load() == s.Version {
		return
	}
	defer d.version.Store(s.Version)
	next := make(map[netip.AddrPort]*endpoint, len(s.Endpoints))
	entries := make([]balance.Entry[*endpoint], 0, len(s.Endpoints))
	for _, ep := range s.Endpoints {
		e := d.eps[ep.Addr]
		if e == nil || !sameEndpoint(e.ep, ep) {
			e = &endpoint{ep: ep, tls: d.tlsOf(ep)}
		}
		next[ep.Addr] = e
		entries = append(entries, balance.Entry[*endpoint]{Key: ep.Addr, Weight: ep.Weight, Value: e})
	}
	d.eps = next
	d.bal.Update(entries)
}

func sameEndpoint(a, b discovery.Endpoint) bool {
	if a.Addr != b.Addr || a.Weight != b.Weight || a.Identity != b.Identity || a.H2 != b.H2 || a.Opaque != b.Opaque || len(a.Labels) != len(b.Labels) {
		return false
	}
	for k, v := range a.Labels {
		if b.Labels[k] != v {
			return false
		}
	}
	return true
}

// tlsOf says how an endpoint is reached and labelled: over mutual TLS to
// its identity (tls="true", server_id) when it has one and the proxy has an
// identity; in plaintext, labelled tls="disabled" as Linkerd labels a proxy
// without identity, when only the endpoint has one; and as NoIdentity when
// discovery gave none.
func (d *dest) tlsOf(ep discovery.Endpoint) metrics.TLS {
	switch {
	case ep.Identity == "":
		return NoIdentity
	case !d.localIdentity:
		return metrics.TLS{Status: "disabled"}
	}
	return metrics.TLS{Status: "true", ServerID: ep.Identity}
}

// NoIdentity labels outbound connections to destinations without a TLS
// identity from discovery.
var NoIdentity = metrics.TLS{Status: "no_identity", NoTLSReason: "not_provided_by_service_discovery"}

// resolve waits (boundedly) for a destination's endpoints and picks one.
// found is false when discovery does not know the destination, which then
// goes to its original destination.
func (r *Router) resolve(ctx context.Context, path string) (e *endpoint, call balance.Call, found bool, err error) {
	d := r.dest(path)
	snap := d.watch.Snapshot()
	if snap.State == discovery.Pending {
		wctx, cancel := context.WithTimeout(ctx, r.o.DiscoveryWait)
		snap, _ = d.watch.Wait(wctx)
		cancel()
	}
	switch snap.State {
	case discovery.Pending:
		r.log.Debug("discovery did not answer in time; using the original destination", "path", path)
		return nil, call, false, nil
	case discovery.NotFound:
		return nil, call, false, nil
	case discovery.NoEndpoints:
		return nil, call, true, &httpproxy.Error{Status: http.StatusServiceUnavailable, Reason: "no endpoints for " + path, Label: "no_endpoints"}
	}
	d.sync(snap)
	ep, err := d.bal.Pick()
	switch {
	case errors.Is(err, balance.ErrNoEndpoints):
		return nil, call, true, &httpproxy.Error{Status: http.StatusServiceUnavailable, Reason: "no endpoints for " + path, Label: "no_endpoints", Err: err}
	case errors.Is(err, balance.ErrUnavailable):
		return nil, call, true, &httpproxy.Error{Status: http.StatusServiceUnavailable, Reason: "every endpoint of " + path + " is failing", Label: "unavailable", Err: err}
	case err != nil:
		return nil, call, true, &httpproxy.Error{Status: http.StatusServiceUnavailable, Reason: "balance " + path, Label: "unavailable", Err: err}
	}
	return ep.Value(), ep.Start(), true, nil
}

// Route implements httpproxy.Router.
func (r *Router) Route(req *http.Request, ci *httpproxy.ConnInfo) (*httpproxy.Target, error) {
	host, port, err := discovery.SplitAuthority(req.Host)
	if err != nil && req.Host != "" {
		return nil, &httpproxy.Error{Status: http.StatusBadRequest, Reason: "invalid authority " + req.Host, Label: "invalid_authority", Err: err}
	}
	if port == 0 {
		port = ci.OrigDst.Port()
	}
	var path string
	ok := false
	if r.o.Discovery != nil && host != "" {
		path, ok = r.o.Names.Path(host, port)
	}
	if !ok {
		return r.passthrough(req, ci), nil
	}
	e, call, found, err := r.resolve(req.Context(), path)
	if err != nil {
		return nil, err
	}
	if !found {
		return r.passthrough(req, ci), nil
	}
	t := &httpproxy.Target{
		Addr:      e.ep.Addr,
		Series:    e.seriesFor(r.o.Metrics, req.Host),
		DstLabels: e.ep.Labels,
		TLS:       e.tls,
		Done:      call.End,
	}
	switch {
	case req.ProtoMajor == 2:
		t.Proto = httpproxy.H2
	case e.ep.H2 && !isUpgrade(req):
		// Both ends are Sluice proxies: carry HTTP/1 on HTTP/2, so one
		// connection serves every request.
		t.Proto, t.OrigProto = httpproxy.H2, true
	}
	return t, nil
}

func (e *endpoint) seriesFor(reg *metrics.Registry, authority string) *metrics.HTTPSeries {
	if s, ok := e.series.Load(authority); ok {
		return s.(*metrics.HTTPSeries)
	}
	s := reg.HTTP(metrics.Target{Direction: "outbound", Authority: authority, Addr: e.ep.Addr, TLS: e.tls, Dst: e.ep.Labels})
	e.series.Store(authority, s)
	return s
}

func isUpgrade(req *http.Request) bool { return req.Header.Get("Upgrade") != "" }

type passKey struct {
	authority string
	addr      netip.AddrPort
}

// passthrough sends a request to its original destination.
func (r *Router) passthrough(req *http.Request, ci *httpproxy.ConnInfo) *httpproxy.Target {
	t := &httpproxy.Target{Addr: ci.OrigDst, Series: r.Series(req, ci), TLS: NoIdentity}
	if req.ProtoMajor == 2 {
		t.Proto = httpproxy.H2
	}
	return t
}

// Series implements httpproxy.Router: requests to the original destination.
func (r *Router) Series(req *http.Request, ci *httpproxy.ConnInfo) *metrics.HTTPSeries {
	k := passKey{req.Host, ci.OrigDst}
	if s, ok := r.pass.Load(k); ok {
		return s.(*metrics.HTTPSeries)
	}
	s := r.o.Metrics.HTTP(metrics.Target{Direction: "outbound", Authority: req.Host, Addr: ci.OrigDst, TLS: NoIdentity})
	r.pass.Store(k, s)
	return s
}

// TCPTarget is where an opaque connection goes.
type TCPTarget struct {
	Addr   netip.AddrPort
	Labels map[string]string
	// TLS labels the connection; Status "true" asks for mutual TLS to
	// TLS.ServerID.
	TLS metrics.TLS
	// Done, when not nil, reports the connection's outcome to the balancer.
	Done func(failed bool)
}

// RouteTCP resolves an opaque connection by its original destination
// (a service's cluster IP or a pod IP, with the port) and picks an
// endpoint for the whole connection.
func (r *Router) RouteTCP(ctx context.Context, orig netip.AddrPort) (TCPTarget, error) {
	if r.o.Discovery == nil {
		return TCPTarget{Addr: orig, TLS: NoIdentity}, nil
	}
	e, call, found, err := r.resolve(ctx, orig.String())
	if err != nil {
		return TCPTarget{}, err
	}
	if !found {
		return TCPTarget{Addr: orig, TLS: NoIdentity}, nil
	}
	return TCPTarget{Addr: e.ep.Addr, Labels: e.ep.Labels, TLS: e.tls, Done: call.End}, nil
}
