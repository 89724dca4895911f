// Package metrics holds the proxy's Linkerd-compatible traffic metrics:
// request_total, response_total, response_latency_ms, the tcp_* families
// and {inbound,outbound}_http_errors_total, with Linkerd 2.x's names,
// labels and buckets so that Linkerd's dashboards and queries work
// unchanged.
//
// Label sets differ from series to series (dst_* labels come from
// discovery, grpc_status and error only when they apply), so Registry is an
// unchecked prometheus.Collector that emits const metrics. Callers obtain a
// series handle once per target or connection (Registry.HTTP, Registry.TCP);
// recording through a handle touches only atomics, reads no clock and
// allocates nothing.
//
// Idle series are retired lazily, at Collect. Time is measured in scrapes:
// each Collect opens a new epoch and a touch stamps the series with the
// current one, so a series is retired at the first Collect that finds it
// untouched since a Collect at least Options.IdleTimeout earlier (TCP
// series: and with no open connection). With Prometheus scraping every
// 10 s that is between IdleTimeout and IdleTimeout+10 s after the last
// touch, and every change is exposed by at least one Collect before its
// series can go. A handle stays valid forever: using a retired series
// brings it back, counts intact.
package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultIdleTimeout is how long a series may stay untouched before it is
// retired when Options.IdleTimeout is zero (Linkerd's default).
const DefaultIdleTimeout = 10 * time.Minute

// Options of a Registry.
type Options struct {
	// IdleTimeout is how long a series may stay untouched before it leaves
	// the exposition; zero or negative means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Now is the clock read at each Collect; nil means time.Now.
	Now func() time.Time
}

// Registry holds the proxy's traffic metrics and implements
// prometheus.Collector. It is safe for concurrent use.
type Registry struct {
	idle  time.Duration
	now   func() time.Time
	epoch atomic.Uint64 // the current epoch; each Collect starts the next

	mu     sync.Mutex
	starts []epochStart // the epochs' start times, from the newest that is idle-old on
	http   table[HTTPSeries, *HTTPSeries]
	tcp    table[TCPSeries, *TCPSeries]
	errors map[[2]string]*errorSeries
}

// epochStart is when a Collect started an epoch.
type epochStart struct {
	epoch uint64
	at    time.Time
}

var _ prometheus.Collector = (*Registry)(nil)

// New returns an empty Registry.
func New(o Options) *Registry {
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Registry{
		idle:   o.IdleTimeout,
		now:    o.Now,
		http:   newTable[HTTPSeries](),
		tcp:    newTable[TCPSeries](),
		errors: map[[2]string]*errorSeries{},
	}
	r.epoch.Store(1)
	return r
}

// Describe sends nothing: the Registry is an unchecked collector, because
// its families' label sets vary from series to series.
func (r *Registry) Describe(chan<- *prometheus.Desc) {}

// Collect starts a new epoch, retires idle series, then sends every live
// series' metrics.
func (r *Registry) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	idle := r.nextEpoch()
	r.http.sweep(idle, func(*HTTPSeries) bool { return false })
	r.tcp.sweep(idle, func(s *TCPSeries) bool { return s.conns.Load() != 0 })
	https := r.http.snapshot()
	tcps := r.tcp.snapshot()
	var errs []prometheus.Metric
	for k, e := range r.errors {
		if e.last < idle {
			delete(r.errors, k)
			continue
		}
		errs = append(errs, value(e.desc, prometheus.CounterValue, float64(e.n)))
	}
	r.mu.Unlock()

	for _, s := range https {
		s.collect(ch)
	}
	for _, s := range tcps {
		s.collect(ch)
	}
	for _, m := range errs {
		ch <- m
	}
}

// nextEpoch starts a new epoch and returns the idle epoch: a series whose
// last touch is in an earlier epoch has not been touched since a Collect
// at least IdleTimeout ago. It is the newest epoch that started at or
// before now-IdleTimeout (0 if none). r.mu is held.
func (r *Registry) nextEpoch() uint64 {
	now := r.now()
	r.starts = append(r.starts, epochStart{r.epoch.Add(1), now})
	cutoff := now.Add(-r.idle)
	i := -1
	for i+1 < len(r.starts) && !r.starts[i+1].at.After(cutoff) {
		i++
	}
	if i < 0 {
		return 0
	}
	r.starts = r.starts[i:] // later cutoffs are later: older starts are not needed
	return r.starts[0].epoch
}

// HTTPError counts one error for which no request reached the proxy's
// routing, in <direction>_http_errors_total{error=errLabel}: for example
// "malformed_request", "request_header_fields_too_large" or
// "detect_timeout". direction is "inbound" or "outbound" (other values are
// sanitized into the metric name). Such series retire like the others,
// and then start again from zero.
func (r *Registry) HTTPError(direction, errLabel string) {
	k := [2]string{direction, errLabel}
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.errors[k]
	if e == nil {
		name := labelName(direction) + "_http_errors_total"
		help := "The total number of " + direction + " HTTP requests that could not be processed due to a proxy error."
		e = &errorSeries{desc: labelSet{{"error", labelValue(errLabel)}}.desc(name, help)}
		r.errors[k] = e
	}
	e.n++
	e.last = r.epoch.Load()
}

// errorSeries is one {inbound,outbound}_http_errors_total series, guarded
// by Registry.mu.
type errorSeries struct {
	desc *prometheus.Desc
	n    uint64
	last uint64 // epoch of the last touch
}
