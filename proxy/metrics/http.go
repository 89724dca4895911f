package metrics

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Help texts of the HTTP families, as Linkerd's proxy writes them.
const (
	helpRequestTotal      = "Total count of HTTP requests."
	helpResponseTotal     = "Total count of HTTP responses."
	helpResponseLatencyMs = "Elapsed times between a request's headers being received and its response stream completing"
)

// HTTPSeries records the requests and responses of one target. Obtain it
// once (Registry.HTTP) and keep it; its methods are safe for concurrent
// use and allocate nothing once a status code and class have been seen.
type HTTPSeries struct {
	series
	requests atomic.Uint64
	reqDesc  *prometheus.Desc
	statuses cowMap[int, *statusSeries]
}

// statusSeries holds the responses of one status code: their latency and
// their count per class.
type statusSeries struct {
	status  int
	labels  labelSet // the target's labels and status_code
	latency histogram
	latDesc *prometheus.Desc
	classes cowMap[class, *classSeries]
}

// class is what response_total adds to status_code.
type class struct {
	grpc int // < 0: none
	err  string
}

// classSeries is one response_total series.
type classSeries struct {
	n    atomic.Uint64
	desc *prometheus.Desc
}

// HTTP returns the (shared, get-or-create) HTTP series of a target.
func (r *Registry) HTTP(t Target) *HTTPSeries {
	l := targetLabels(t, true, "")
	key := l.key()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.http.get(key, func() *HTTPSeries {
		s := &HTTPSeries{series: series{reg: r, key: key, labels: l}}
		s.revive = func() { r.http.revive(s) }
		s.reqDesc = l.desc("request_total", helpRequestTotal)
		return s
	})
}

// Request counts one request (request_total).
func (s *HTTPSeries) Request() {
	s.requests.Add(1)
	s.touch()
}

// Response records one finished response: response_total and
// response_latency_ms. status 0 (or negative) means no status (only an
// error happened) and leaves status_code out; grpcStatus < 0 means none and leaves
// grpc_status out; errLabel "" means no error (e.g. "connect_refused",
// "response_timeout") and leaves error out. See Classify for the
// classification.
func (s *HTTPSeries) Response(status int, grpcStatus int, errLabel string, latency time.Duration) {
	st := s.statuses.get(max(status, 0), s.newStatus)
	st.latency.observe(latency)
	if grpcStatus < 0 {
		grpcStatus = -1
	}
	st.classes.get(class{grpcStatus, errLabel}, st.newClass).n.Add(1)
	s.touch()
}

// Classify returns the classification label of a response: "failure" when
// an error occurred, or a gRPC status is present (>= 0) and not 0 (OK), or,
// with no gRPC status, the HTTP status is 500 or more; else "success".
func Classify(status, grpcStatus int, errLabel string) string {
	switch {
	case errLabel != "":
		return "failure"
	case grpcStatus >= 0:
		if grpcStatus != 0 {
			return "failure"
		}
		return "success"
	case status >= 500:
		return "failure"
	}
	return "success"
}

func (s *HTTPSeries) newStatus(status int) *statusSeries {
	l := s.labels
	if status != 0 {
		l = l.with(labelPair{"status_code", strconv.Itoa(status)})
	}
	return &statusSeries{status: status, labels: l, latDesc: l.desc("response_latency_ms", helpResponseLatencyMs)}
}

func (st *statusSeries) newClass(c class) *classSeries {
	l := st.labels.with(labelPair{"classification", Classify(st.status, c.grpc, c.err)})
	if c.grpc >= 0 {
		l = append(l, labelPair{"grpc_status", strconv.Itoa(c.grpc)})
	}
	if c.err != "" {
		l = append(l, labelPair{"error", labelValue(c.err)})
	}
	return &classSeries{desc: l.desc("response_total", helpResponseTotal)}
}

// collect sends the series' metrics.
func (s *HTTPSeries) collect(ch chan<- prometheus.Metric) {
	ch <- value(s.reqDesc, prometheus.CounterValue, float64(s.requests.Load()))
	s.statuses.each(func(st *statusSeries) {
		ch <- st.latency.metric(st.latDesc)
		st.classes.each(func(c *classSeries) {
			ch <- value(c.desc, prometheus.CounterValue, float64(c.n.Load()))
		})
	})
}
