// Package balance picks the endpoint of each HTTP request (or TCP
// connection) among a destination's endpoints, as Linkerd and Finagle do:
// power of two random choices over a peak-EWMA latency estimate weighted by
// the load in flight, with failure accrual that backs failing endpoints off
// and lets them back in after a single successful probe.
//
// The cost of an endpoint is rtt·(pending+1)/weight, where rtt is a
// peak-sensitive exponentially weighted moving average of its latencies: a
// sample above the estimate replaces it at once, a lower one is blended in
// with the weight 1-exp(-elapsed/Decay), and between samples the estimate
// decays towards zero with the same time constant, so an endpoint that was
// slow once is tried again after a while. New endpoints start at DefaultRTT.
package balance

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoEndpoints is returned by Pick when the balancer has no endpoints.
var ErrNoEndpoints = errors.New("balance: no endpoints")

// ErrUnavailable is returned by Pick when every endpoint is backed off and
// none is due for a probe: the caller should fail fast.
var ErrUnavailable = errors.New("balance: every endpoint is failing")

// Defaults of Options.
const (
	DefaultRTT          = 30 * time.Millisecond
	DefaultDecay        = 10 * time.Second
	DefaultFailureLimit = 7
	DefaultBackoffMin   = time.Second
	DefaultBackoffMax   = 60 * time.Second
)

// jitter is the relative spread of a backoff: each lasts its nominal
// duration times a factor drawn uniformly from [1-jitter, 1+jitter).
const jitter = 0.25

// penalty is the cost of an endpoint whose estimate decayed to zero but that
// has calls in flight (Finagle's rule): it must not attract every request.
const penalty = float64(math.MaxInt32 >> 16)

// Options of a Balancer. Zero fields take the defaults in brackets.
type Options struct {
	// DefaultRTT is the latency estimate of a new endpoint [30ms].
	DefaultRTT time.Duration
	// Decay is the time constant of the latency estimate [10s].
	Decay time.Duration
	// FailureLimit is the number of consecutive failed calls after which an
	// endpoint is backed off [7].
	FailureLimit int
	// BackoffMin is the nominal duration of an endpoint's first backoff;
	// each failed probe doubles it up to BackoffMax [1s, 60s]. A backoff is
	// jittered by ±25% and never exceeds BackoffMax.
	BackoffMin time.Duration
	// BackoffMax caps every backoff [60s].
	BackoffMax time.Duration
	// Now tells the time [time.Now]. It is called concurrently.
	Now func() time.Time
	// Rand returns uniformly random 64-bit numbers for the random choices
	// and the jitter [math/rand/v2.Uint64]. It is called concurrently.
	Rand func() uint64
}

func (o Options) withDefaults() Options {
	if o.DefaultRTT <= 0 {
		o.DefaultRTT = DefaultRTT
	}
	if o.Decay <= 0 {
		o.Decay = DefaultDecay
	}
	if o.FailureLimit <= 0 {
		o.FailureLimit = DefaultFailureLimit
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = DefaultBackoffMin
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	o.BackoffMax = max(o.BackoffMax, o.BackoffMin)
	if o.Rand == nil {
		o.Rand = rand.Uint64
	}
	return o
}

// Entry is an endpoint as given by discovery.
type Entry[T any] struct {
	// Key identifies the endpoint across updates.
	Key netip.AddrPort
	// Weight scales the endpoint's share: its cost is divided by it. 0
	// counts as 1.
	Weight uint32
	// Value is the caller's data, returned by Endpoint.Value.
	Value T
}

// Endpoint is an endpoint chosen by Pick. It stays usable after an Update
// removed it (its calls may still End), and keeps the Value it had when
// picked.
type Endpoint[T any] struct {
	key    netip.AddrPort
	weight uint32
	cw     float64 // cost divisor: weight, at least 1
	value  T
	st     *state
	probe  bool // given out by Pick as the probe of a backed-off endpoint
}

// Key returns the endpoint's address.
func (e *Endpoint[T]) Key() netip.AddrPort { return e.key }

// Value returns the endpoint's Value, as of the Update that last gave it.
func (e *Endpoint[T]) Value() T { return e.value }

// Start begins a call to the endpoint: it counts as pending until its End.
func (e *Endpoint[T]) Start() Call {
	return e.st.start(e.probe)
}

// Call is a call in flight, begun by Endpoint.Start. The zero Call's End
// does nothing.
type Call struct {
	st    *state
	start int64 // core clock, ns
	probe bool  // the call probes a backed-off endpoint
}

// End finishes the call, exactly once: its latency (from Start until now)
// feeds the endpoint's estimate and failed feeds failure accrual, where a
// success resets the count of consecutive failures. For a backed-off
// endpoint only the probe's outcome counts: success restores it, failure
// backs it off again for twice as long.
func (c Call) End(failed bool) {
	if c.st != nil {
		c.st.end(c, failed)
	}
}

// EndpointStats describes one endpoint, for tests and debugging.
type EndpointStats struct {
	Key    netip.AddrPort
	Weight uint32
	// RTT is the latency estimate now (decayed since its last sample).
	RTT time.Duration
	// Pending counts the calls in flight.
	Pending int
	// Failures counts the consecutive failed calls.
	Failures int
	// BackedOffUntil is when a backed-off endpoint may be probed; zero when
	// the endpoint is available.
	BackedOffUntil time.Time
	// Probing says a probe call is in flight.
	Probing bool
}

// core is the part of a balancer that calls need: the options and the
// clock, and the hook that refreshes the balancer's view when an endpoint
// is backed off or restored.
type core struct {
	o       Options
	epoch   time.Time
	decayNs float64
	changed func()
}

// now returns the time in ns since the epoch (monotonic when Now is).
// Without Now, it reads only the monotonic clock, which is about twice as
// fast as time.Now.
func (k *core) now() int64 {
	if k.o.Now == nil {
		return int64(time.Since(k.epoch))
	}
	return int64(k.o.Now().Sub(k.epoch))
}

func (k *core) time(ns int64) time.Time { return k.epoch.Add(time.Duration(ns)) }

// backoff returns the duration of the n-th consecutive backoff (n ≥ 1).
func (k *core) backoff(n int) int64 {
	base := float64(k.o.BackoffMin)
	limit := float64(k.o.BackoffMax)
	for i := 1; i < n && base < limit; i++ {
		base *= 2
	}
	base = min(base, limit)
	u := float64(k.o.Rand()>>11) / (1 << 53) // [0, 1)
	return int64(min(base*(1-jitter+2*jitter*u), limit))
}

// state is the mutable state of one endpoint, shared by the Endpoint values
// that successive Updates make for its key.
type state struct {
	k       *core
	pending atomic.Int64

	mu         sync.Mutex
	rtt        float64 // estimate (ns) as of at
	at         int64   // ns
	failures   int
	off        bool  // backed off
	backoffs   int   // consecutive backoffs; 0 when available
	backoff    int64 // duration of the current backoff (ns)
	until      int64 // when off: backed off until then (ns)
	probeUntil int64 // when off: a probe is in flight until then (ns); 0 if none
}

func newState(k *core, now int64) *state {
	return &state{k: k, rtt: float64(k.o.DefaultRTT), at: now}
}

// estimate returns the latency estimate at now. s.mu is held.
func (s *state) estimate(now int64) float64 {
	elapsed := max(now-s.at, 0)
	return s.rtt * math.Exp(-float64(elapsed)/s.k.decayNs)
}

// observe feeds a latency sample. s.mu is held.
func (s *state) observe(sample float64, now int64) {
	elapsed := max(now-s.at, 0)
	w := math.Exp(-float64(elapsed) / s.k.decayNs)
	if cur := s.rtt * w; sample > cur {
		s.rtt = sample // peak-sensitive
	} else {
		s.rtt = cur + sample*(1-w)
	}
	s.at = max(now, s.at)
}

// cost returns the endpoint's cost at now divided by weight, and whether
// it is available.
func (s *state) cost(now int64, weight float64) (float64, bool) {
	s.mu.Lock()
	est, ok := s.estimate(now), !s.off
	s.mu.Unlock()
	p := float64(s.pending.Load())
	if est == 0 && p > 0 {
		return (penalty + p) / weight, ok
	}
	return est * (p + 1) / weight, ok
}

// available reports whether the endpoint is not backed off.
func (s *state) available() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.off
}

func (s *state) start(probe bool) Call {
	s.pending.Add(1)
	return Call{st: s, start: s.k.now(), probe: probe}
}

func (s *state) end(c Call, failed bool) {
	k := s.k
	now := k.now()
	s.pending.Add(-1)
	changed := false
	s.mu.Lock()
	s.observe(float64(max(now-c.start, 0)), now)
	switch {
	case s.off:
		if !c.probe {
			break // began before the backoff: does not count
		}
		s.probeUntil = 0
		if failed {
			s.backOff(now)
		} else {
			s.failures, s.backoffs, s.backoff, s.off = 0, 0, 0, false
		}
		changed = true
	case !failed:
		s.failures = 0
	default:
		s.failures++
		if s.failures >= k.o.FailureLimit {
			s.backOff(now)
			changed = true
		}
	}
	s.mu.Unlock()
	if changed {
		k.changed()
	}
}

// backOff starts the next backoff. s.mu is held.
func (s *state) backOff(now int64) {
	s.off = true
	s.backoffs++
	s.backoff = s.k.backoff(s.backoffs)
	s.until = now + s.backoff
}

// view is an immutable picture of the endpoints, replaced when they change
// or one is backed off or restored.
type view[T any] struct {
	all   []*Endpoint[T]
	avail []*Endpoint[T] // not backed off
}

// Balancer picks endpoints for requests (HTTP) or connections (TCP). It is
// safe for concurrent use.
type Balancer[T any] struct {
	k    core
	view atomic.Pointer[view[T]]
	// nextProbe is when the earliest backed-off endpoint is due for a probe
	// (core ns); math.MaxInt64 when none is.
	nextProbe atomic.Int64

	mu sync.Mutex // held to change view and nextProbe, and to claim probes
}

// New returns a Balancer without endpoints.
func New[T any](o Options) *Balancer[T] {
	o = o.withDefaults()
	b := &Balancer[T]{}
	epoch := time.Now()
	if o.Now != nil {
		epoch = o.Now()
	}
	b.k = core{o: o, epoch: epoch, decayNs: float64(o.Decay)}
	b.k.changed = b.refresh
	b.view.Store(&view[T]{})
	b.nextProbe.Store(math.MaxInt64)
	return b
}

// Update sets the endpoints. Endpoints whose Key stays keep their latency,
// load and failure state (and their Value and Weight are replaced); new ones
// start fresh; removed ones are dropped (calls in flight on them may still
// End). Of entries with the same Key, the first counts.
func (b *Balancer[T]) Update(entries []Entry[T]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.view.Load().all
	prev := make(map[netip.AddrPort]*state, len(old))
	for _, e := range old {
		prev[e.key] = e.st
	}
	now := b.k.now()
	all := make([]*Endpoint[T], 0, len(entries))
	seen := make(map[netip.AddrPort]bool, len(entries))
	for _, en := range entries {
		if seen[en.Key] {
			continue
		}
		seen[en.Key] = true
		st := prev[en.Key]
		if st == nil {
			st = newState(&b.k, now)
		}
		all = append(all, &Endpoint[T]{key: en.Key, weight: en.Weight, cw: float64(max(en.Weight, 1)), value: en.Value, st: st})
	}
	b.rebuild(all)
}

// refresh rebuilds the view after an endpoint's availability changed.
func (b *Balancer[T]) refresh() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rebuild(b.view.Load().all)
}

// rebuild stores a view of all and the time of the next probe. b.mu is held.
func (b *Balancer[T]) rebuild(all []*Endpoint[T]) {
	v := &view[T]{all: all, avail: make([]*Endpoint[T], 0, len(all))}
	next := int64(math.MaxInt64)
	for _, e := range all {
		s := e.st
		s.mu.Lock()
		if !s.off {
			v.avail = append(v.avail, e)
		} else {
			next = min(next, max(s.until, s.probeUntil))
		}
		s.mu.Unlock()
	}
	b.view.Store(v)
	b.nextProbe.Store(next)
}

// Endpoint returns the endpoint with key, bypassing the choice (for
// debugging, tests, or a caller that must reach one endpoint); its calls
// count like any other. It reports false when there is no such endpoint.
func (b *Balancer[T]) Endpoint(key netip.AddrPort) (*Endpoint[T], bool) {
	for _, e := range b.view.Load().all {
		if e.key == key {
			return e, true
		}
	}
	return nil, false
}

// Len returns the number of endpoints.
func (b *Balancer[T]) Len() int { return len(b.view.Load().all) }

// Pick chooses an endpoint by power of two random choices among the
// available endpoints (not backed off), taking the one of lower
// cost/weight; with one available endpoint, that one. A backed-off
// endpoint whose backoff expired is given to exactly one caller as a probe
// (half-open) before any other choice; its Start begins the probe. Pick
// returns ErrNoEndpoints without endpoints and ErrUnavailable when all are
// backed off.
func (b *Balancer[T]) Pick() (*Endpoint[T], error) {
	var now int64
	clocked := false // now is read at most once, and only when needed
	if next := b.nextProbe.Load(); next != math.MaxInt64 {
		now, clocked = b.k.now(), true
		if now >= next {
			if e := b.claimProbe(now); e != nil {
				return e, nil
			}
		}
	}
	// A view may be stale by an endpoint backed off since; try again with
	// a fresh one.
	for range 3 {
		v := b.view.Load()
		switch len(v.avail) {
		case 0:
			if len(v.all) == 0 {
				return nil, ErrNoEndpoints
			}
			return nil, ErrUnavailable
		case 1:
			e := v.avail[0]
			if e.st.available() {
				return e, nil
			}
			continue
		}
		if !clocked {
			now, clocked = b.k.now(), true
		}
		n := uint64(len(v.avail))
		r := b.k.o.Rand()
		i := (r & math.MaxUint32) * n >> 32
		j := (r >> 32) * (n - 1) >> 32
		if j >= i {
			j++
		}
		x, y := v.avail[i], v.avail[j]
		cx, okx := x.st.cost(now, x.cw)
		cy, oky := y.st.cost(now, y.cw)
		switch {
		case okx && (!oky || cx <= cy):
			return x, nil
		case oky:
			return y, nil
		}
	}
	return nil, ErrUnavailable
}

// claimProbe gives out the first backed-off endpoint due for a probe, if
// any, as an Endpoint whose Start begins the probe call.
func (b *Balancer[T]) claimProbe(now int64) *Endpoint[T] {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.view.Load()
	var claimed *Endpoint[T]
	for _, e := range v.all {
		s := e.st
		s.mu.Lock()
		if s.off && now >= s.until && now >= s.probeUntil {
			// The probe has as long as the backoff to end; then another
			// caller may probe.
			s.probeUntil = now + s.backoff
			p := *e
			p.probe = true
			claimed = &p
		}
		s.mu.Unlock()
		if claimed != nil {
			break
		}
	}
	b.rebuild(v.all)
	return claimed
}

// Snapshot returns the state of every endpoint, in the order of the last
// Update.
func (b *Balancer[T]) Snapshot() []EndpointStats {
	all := b.view.Load().all
	now := b.k.now()
	out := make([]EndpointStats, 0, len(all))
	for _, e := range all {
		s := e.st
		s.mu.Lock()
		es := EndpointStats{
			Key:      e.key,
			Weight:   e.weight,
			RTT:      time.Duration(s.estimate(now)),
			Pending:  int(s.pending.Load()),
			Failures: s.failures,
			Probing:  s.off && s.probeUntil != 0 && now < s.probeUntil,
		}
		if s.off {
			es.BackedOffUntil = b.k.time(s.until)
		}
		s.mu.Unlock()
		out = append(out, es)
	}
	return out
}
