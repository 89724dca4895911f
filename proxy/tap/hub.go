// Package tap is the proxy's tap server: the gRPC Tap/Observe service of
// controlplane/api/tap, which streams events of live requests that match a
// client's filter (request init, response init, response end; headers only
// when asked for, never bodies).
//
// A Hub connects the proxy's requests to the open taps. When nobody taps,
// the request path costs one atomic load (Hub.Active). A tapped request's
// events go into a bounded queue per tap stream, so a slow tap client loses
// events (counted, and logged once per stream) and never slows the proxy.
// Each tap is rate-limited (a token bucket of max_rps requests per second,
// bursting up to one second's worth) and may ask for a limited number of
// requests, after which its stream ends.
package tap

import (
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
)

// Defaults of HubOptions.
const (
	DefaultMaxRPS    = 100.0
	DefaultMaxTaps   = 100
	DefaultQueueSize = 256
)

// HubOptions configure a Hub. Zero fields take the defaults in brackets.
type HubOptions struct {
	// DefaultMaxRPS is the rate limit of a tap whose ObserveRequest.max_rps
	// is 0 [100].
	DefaultMaxRPS float64
	// MaxTaps bounds the concurrent Observe streams; more are refused with
	// ResourceExhausted [100].
	MaxTaps int
	// QueueSize is the number of events buffered per stream; events that
	// find it full are dropped [256].
	QueueSize int
	// Logger receives stream starts, ends and drops [discard].
	Logger *slog.Logger
	// Now tells the time, for latencies and rate limits [time.Now].
	Now func() time.Time
}

// Hub connects requests to the taps observing them. It is safe for
// concurrent use.
type Hub struct {
	o      HubOptions
	log    *slog.Logger
	base   uint32
	stream atomic.Uint64
	n      atomic.Int32                 // open taps
	taps   atomic.Pointer[[]*tapStream] // open taps, replaced on change
	ids    atomic.Uint64
	drops  atomic.Uint64

	mu sync.Mutex // serializes changes of taps
}

// NewHub returns a Hub without taps.
func NewHub(o HubOptions) *Hub {
	if o.DefaultMaxRPS <= 0 {
		o.DefaultMaxRPS = DefaultMaxRPS
	}
	if o.MaxTaps <= 0 {
		o.MaxTaps = DefaultMaxTaps
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	h := &Hub{o: o, log: o.Logger.With("component", "tap"), base: rand.Uint32()}
	h.taps.Store(new([]*tapStream))
	return h
}

// Active reports whether any tap is open: one atomic load, for the hot
// path. A nil Hub is never active.
func (h *Hub) Active() bool { return h != nil && h.n.Load() > 0 }

// Taps returns the number of open taps.
func (h *Hub) Taps() int { return int(h.n.Load()) }

// Dropped returns the number of events dropped so far because a tap
// client did not keep up, over all taps.
func (h *Hub) Dropped() uint64 { return h.drops.Load() }

// RequestInfo describes a request as the proxy sees it.
type RequestInfo struct {
	// Direction says which listener took the request.
	Direction tappb.TapEvent_ProxyDirection
	// Source is the client's address; Destination the address the request
	// goes to (the chosen endpoint or the original destination).
	Source, Destination netip.AddrPort
	// SourceLabels and DestinationLabels describe the two ends; destination
	// labels come from discovery, with the "tls" key added by the caller.
	SourceLabels, DestinationLabels map[string]string
	// Method, Scheme, Authority and Path are the request's.
	Method, Scheme, Authority, Path string
	// Header is the request's header, read during Start only.
	Header http.Header
}

// Eos says how a response ended: GRPCStatus for a gRPC response (its
// grpc-status), ResetCode for a reset stream (an HTTP/2 error code); both
// nil for a response that simply ended.
type Eos struct {
	GRPCStatus *uint32
	ResetCode  *uint32
}

// Start returns the request's tap handle, or nil when no open tap matches
// (always nil when !Active()). A tap matches when its filter does and its
// rate limit and request limit admit the request.
func (h *Hub) Start(ri *RequestInfo) *Request {
	if !h.Active() {
		return nil
	}
	return h.start(ri)
}

func (h *Hub) start(ri *RequestInfo) *Request {
	var r *Request
	var now time.Time
	for _, t := range *h.taps.Load() {
		if t.closed.Load() || !t.m.match(ri) {
			continue
		}
		if r == nil {
			now = h.o.Now()
		}
		if !t.admit(now) {
			continue
		}
		if r == nil {
			r = h.newRequest(ri, now)
		}
		r.taps = append(r.taps, t)
	}
	if r == nil {
		return nil
	}
	r.sendEach(func(hs *tappb.Headers) *tappb.TapEvent {
		return r.event(&tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_RequestInit_{RequestInit: &tappb.TapEvent_Http_RequestInit{
			Id:        r.id,
			Method:    ri.Method,
			Scheme:    ri.Scheme,
			Authority: ri.Authority,
			Path:      ri.Path,
			Headers:   hs,
		}}})
	}, ri.Header)
	return r
}

func (h *Hub) newRequest(ri *RequestInfo, now time.Time) *Request {
	return &Request{
		h:       h,
		id:      &tappb.TapEvent_Http_StreamId{Base: h.base, Stream: h.stream.Add(1)},
		src:     tcpAddress(ri.Source),
		dst:     tcpAddress(ri.Destination),
		srcMeta: &tappb.TapEvent_EndpointMeta{Labels: maps.Clone(ri.SourceLabels)},
		dstMeta: &tappb.TapEvent_EndpointMeta{Labels: maps.Clone(ri.DestinationLabels)},
		dir:     ri.Direction,
		start:   now,
	}
}

// Request is a tapped request: the handle through which the proxy reports
// its response. Its methods are safe on a nil *Request (no-ops) and for
// concurrent use.
type Request struct {
	h       *Hub
	taps    []*tapStream
	id      *tappb.TapEvent_Http_StreamId
	src     *apinet.TcpAddress
	dst     *apinet.TcpAddress
	srcMeta *tappb.TapEvent_EndpointMeta
	dstMeta *tappb.TapEvent_EndpointMeta
	dir     tappb.TapEvent_ProxyDirection
	start   time.Time

	mu       sync.Mutex
	respInit time.Time
	inited   bool
	ended    bool
}

// event wraps an HTTP event with the request's addresses and labels.
func (r *Request) event(e *tappb.TapEvent_Http) *tappb.TapEvent {
	return &tappb.TapEvent{
		Source:          r.src,
		SourceMeta:      r.srcMeta,
		Destination:     r.dst,
		DestinationMeta: r.dstMeta,
		ProxyDirection:  r.dir,
		Event:           &tappb.TapEvent_Http_{Http: e},
	}
}

// ResponseInit reports the response's head. Only the first call counts, and
// none after ResponseEnd.
func (r *Request) ResponseInit(status int, header http.Header) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inited || r.ended {
		return
	}
	r.inited = true
	r.respInit = r.h.o.Now()
	mk := func(hs *tappb.Headers) *tappb.TapEvent {
		return r.event(&tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_ResponseInit_{ResponseInit: &tappb.TapEvent_Http_ResponseInit{
			Id:               r.id,
			SinceRequestInit: durationpb.New(r.respInit.Sub(r.start)),
			HttpStatus:       uint32(max(status, 0)),
			Headers:          hs,
		}}})
	}
	r.sendEach(mk, header)
}

// ResponseEnd reports the end of the response: the bytes of its body, how
// its stream ended and its trailers. Only the first call counts.
func (r *Request) ResponseEnd(bytes uint64, eos Eos, trailers http.Header) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return
	}
	r.ended = true
	now := r.h.o.Now()
	var sinceResp *durationpb.Duration
	if r.inited {
		sinceResp = durationpb.New(now.Sub(r.respInit))
	}
	var e *tappb.Eos
	switch {
	case eos.GRPCStatus != nil:
		e = &tappb.Eos{End: &tappb.Eos_GrpcStatusCode{GrpcStatusCode: *eos.GRPCStatus}}
	case eos.ResetCode != nil:
		e = &tappb.Eos{End: &tappb.Eos_ResetErrorCode{ResetErrorCode: *eos.ResetCode}}
	}
	mk := func(hs *tappb.Headers) *tappb.TapEvent {
		return r.event(&tappb.TapEvent_Http{Event: &tappb.TapEvent_Http_ResponseEnd_{ResponseEnd: &tappb.TapEvent_Http_ResponseEnd{
			Id:                r.id,
			SinceRequestInit:  durationpb.New(now.Sub(r.start)),
			SinceResponseInit: sinceResp,
			ResponseBytes:     bytes,
			Eos:               e,
			Trailers:          hs,
		}}})
	}
	r.sendEach(mk, trailers)
	for _, t := range r.taps {
		t.release()
	}
}

// sendEach sends each tap the event mk makes, with h's fields for the taps
// that asked for headers. Each variant is made once.
func (r *Request) sendEach(mk func(*tappb.Headers) *tappb.TapEvent, h http.Header) {
	var plain, withHeaders *tappb.TapEvent
	for _, t := range r.taps {
		if t.headers {
			if withHeaders == nil {
				withHeaders = mk(headers(h))
			}
			t.send(withHeaders)
			continue
		}
		if plain == nil {
			plain = mk(nil)
		}
		t.send(plain)
	}
}

// headers converts h, in the order of its sorted names, lowercased as in
// HTTP/2.
func headers(h http.Header) *tappb.Headers {
	out := &tappb.Headers{Headers: make([]*tappb.Headers_Header, 0, len(h))}
	for _, name := range slices.Sorted(maps.Keys(h)) {
		lower := strings.ToLower(name)
		for _, v := range h[name] {
			out.Headers = append(out.Headers, &tappb.Headers_Header{Name: lower, Value: []byte(v)})
		}
	}
	return out
}

func tcpAddress(ap netip.AddrPort) *apinet.TcpAddress {
	if !ap.IsValid() {
		return nil
	}
	return &apinet.TcpAddress{Ip: ap.Addr().Unmap().AsSlice(), Port: uint32(ap.Port())}
}

// tapStream is one open Observe stream.
type tapStream struct {
	h       *Hub
	id      uint64
	log     *slog.Logger
	m       matcher
	headers bool
	limit   uint32  // 0: none
	rps     float64 // +Inf: no rate limit
	burst   float64
	events  chan *tappb.TapEvent
	done    chan struct{} // closed when the limit is reached and every admitted request ended
	closed  atomic.Bool   // the stream ended: nothing more is sent
	dropped atomic.Uint64

	mu          sync.Mutex
	tokens      float64
	last        time.Time
	admitted    uint32
	outstanding int
	full        bool // limit reached
	finished    bool // done closed
}

// admit takes the request if the tap's limits allow.
func (t *tapStream) admit(now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.full {
		return false
	}
	if !math.IsInf(t.rps, 1) {
		if elapsed := now.Sub(t.last); elapsed > 0 {
			t.tokens = min(t.burst, t.tokens+elapsed.Seconds()*t.rps)
			t.last = now
		}
		if t.tokens < 1 {
			return false
		}
		t.tokens--
	}
	t.admitted++
	t.outstanding++
	if t.limit > 0 && t.admitted >= t.limit {
		t.full = true
	}
	return true
}

// release ends an admitted request; the last one after the limit ends the
// stream.
func (t *tapStream) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.outstanding--
	if t.full && t.outstanding == 0 && !t.finished {
		t.finished = true
		close(t.done)
	}
}

// send queues ev without blocking; a full queue drops it.
func (t *tapStream) send(ev *tappb.TapEvent) {
	if t.closed.Load() {
		return
	}
	select {
	case t.events <- ev:
	default:
		t.h.drops.Add(1)
		if t.dropped.Add(1) == 1 {
			t.log.Warn("tap client is too slow; dropping events", "queue", cap(t.events))
		}
	}
}

// open validates req and registers a tap for it; its errors are gRPC
// statuses.
func (h *Hub) open(req *tappb.ObserveRequest) (*tapStream, error) {
	rps := req.GetMaxRps()
	switch {
	case math.IsNaN(rps) || rps < 0:
		return nil, status.Errorf(codes.InvalidArgument, "invalid max_rps %v", rps)
	case rps == 0:
		rps = h.o.DefaultMaxRPS
	}
	m, err := compileMatch(req.GetMatch())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	now := h.o.Now()
	t := &tapStream{
		h:       h,
		id:      h.ids.Add(1),
		m:       m,
		headers: req.GetExtract().GetHttp().GetHeaders() != nil,
		limit:   req.GetLimit(),
		rps:     rps,
		burst:   max(1, rps),
		events:  make(chan *tappb.TapEvent, h.o.QueueSize),
		done:    make(chan struct{}),
		tokens:  max(1, rps),
		last:    now,
	}
	t.log = h.log.With("tap", t.id)
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.taps.Load()
	if len(old) >= h.o.MaxTaps {
		return nil, status.Errorf(codes.ResourceExhausted, "open tap: %d taps are open, the most allowed", len(old))
	}
	taps := append(slices.Clip(old), t)
	h.taps.Store(&taps)
	h.n.Store(int32(len(taps)))
	t.log.Debug("tap opened", "limit", t.limit, "max_rps", rps, "headers", t.headers)
	return t, nil
}

// close unregisters t.
func (h *Hub) close(t *tapStream) {
	t.closed.Store(true)
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.taps.Load()
	taps := slices.DeleteFunc(slices.Clone(old), func(x *tapStream) bool { return x == t })
	h.taps.Store(&taps)
	h.n.Store(int32(len(taps)))
	t.log.Debug("tap closed", "admitted", t.admittedCount(), "dropped", t.dropped.Load())
}

func (t *tapStream) admittedCount() uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.admitted
}
