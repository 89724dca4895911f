// Package metricsapi is the metrics API behind meshctl stat, top-routes
// and edges and the dashboard: an HTTP JSON API (types and client in
// package api) whose figures are PromQL queries over the proxies'
// Linkerd-compatible metrics, sent to Prometheus' HTTP API, joined with
// the resources and pods the Kubernetes API lists.
//
// It relies on Prometheus' relabelling to put the scraped pod's
// namespace, pod and owner (deployment, statefulset, daemonset, k8s_job)
// on every series, and on the destination service's metric labels for the
// dst_* labels of outbound series (see PromLabel).
//
// Label values from requests are validated as Kubernetes names and then
// written into PromQL as quoted, escaped string literals.
package metricsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"sync"
	"time"

	promapi "github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// DefaultQueryTimeout is how long a request's Prometheus queries may take
// when Config.QueryTimeout is zero.
const DefaultQueryTimeout = 30 * time.Second

// Config of a Server.
type Config struct {
	// PrometheusURL is the base URL of Prometheus' HTTP API, such as
	// "http://prometheus.sluice.svc.cluster.local:9090"; required.
	PrometheusURL string
	// Client lists the resources and pods of stat rows; required.
	Client kubernetes.Interface
	// Logger gets the server's logs (with component=metrics-api); nil
	// discards them.
	Logger *slog.Logger
	// Registerer gets the server's own metrics; nil leaves them
	// unregistered.
	Registerer prometheus.Registerer
	// TrustDomain of the mesh's identities, to read client identities in
	// edges; "" means meshmeta.DefaultTrustDomain.
	TrustDomain string
	// QueryTimeout bounds the Prometheus queries of one request; zero means
	// DefaultQueryTimeout.
	QueryTimeout time.Duration
	// RoundTripper carries the requests to Prometheus; nil means
	// promapi.DefaultRoundTripper.
	RoundTripper http.RoundTripper
}

// Server serves the metrics API. It is safe for concurrent use.
type Server struct {
	promURL     string
	prom        promv1.API
	kube        kubernetes.Interface
	log         *slog.Logger
	trustDomain string
	timeout     time.Duration
	requests    *prometheus.CounterVec
	queryTime   *prometheus.HistogramVec
}

// New returns a Server for cfg, with its metrics registered:
// sluice_metrics_api_requests_total{endpoint,code} and
// sluice_metrics_api_prometheus_query_duration_seconds{query,outcome}.
func New(cfg Config) (*Server, error) {
	u, err := url.Parse(cfg.PrometheusURL)
	if err != nil {
		return nil, fmt.Errorf("parse Prometheus URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("prometheus URL %q is not an http(s) URL with a host", cfg.PrometheusURL)
	}
	if cfg.Client == nil {
		return nil, errors.New("metrics API needs a Kubernetes client")
	}
	pc, err := promapi.NewClient(promapi.Config{Address: cfg.PrometheusURL, RoundTripper: cfg.RoundTripper})
	if err != nil {
		return nil, fmt.Errorf("make Prometheus client: %w", err)
	}
	s := &Server{
		promURL:     u.Redacted(),
		prom:        promv1.NewAPI(pc),
		kube:        cfg.Client,
		log:         cfg.Logger,
		trustDomain: cfg.TrustDomain,
		timeout:     cfg.QueryTimeout,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_metrics_api_requests_total",
			Help: "Requests the metrics API answered, by endpoint and HTTP status code.",
		}, []string{"endpoint", "code"}),
		queryTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_metrics_api_prometheus_query_duration_seconds",
			Help:    "Time the metrics API's Prometheus queries took, by query and outcome (ok or error).",
			Buckets: prometheus.DefBuckets,
		}, []string{"query", "outcome"}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "metrics-api")
	if s.trustDomain == "" {
		s.trustDomain = meshmeta.DefaultTrustDomain
	}
	if s.timeout <= 0 {
		s.timeout = DefaultQueryTimeout
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.requests, s.queryTime} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register metrics API metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Handler returns the API's HTTP handler: GET api.StatPath,
// api.EdgesPath and api.TopRoutesPath.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, e := range []struct {
		name, path string
		h          func(*http.Request) (any, error)
	}{
		{"stat", api.StatPath, s.stat},
		{"edges", api.EdgesPath, s.edges},
		{"top-routes", api.TopRoutesPath, s.topRoutes},
	} {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v, err := e.h(r)
			if err != nil {
				s.writeError(w, r, err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
		counter := s.requests.MustCurryWith(prometheus.Labels{"endpoint": e.name})
		mux.Handle("GET "+e.path, promhttp.InstrumentHandlerCounter(counter, h))
	}
	return mux
}

// promError is a failed Prometheus query.
type promError struct {
	url string
	err error
}

func (e *promError) Error() string { return fmt.Sprintf("query Prometheus at %s: %v", e.url, e.err) }
func (e *promError) Unwrap() error { return e.err }

// writeError answers with err's status and an api.Error body: an
// *api.Error as it is, a Prometheus that cannot answer 503, a query
// Prometheus refused 500 (a bug here), anything else 500.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *api.Error
	var pe *promError
	var pv1 *promv1.Error
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &pv1) && (pv1.Type == promv1.ErrBadData || pv1.Type == promv1.ErrExec):
		ae = &api.Error{Status: http.StatusInternalServerError, Message: err.Error()}
	case errors.As(err, &pe):
		ae = &api.Error{Status: http.StatusServiceUnavailable, Message: err.Error()}
	default:
		ae = &api.Error{Status: http.StatusInternalServerError, Message: err.Error()}
	}
	level := slog.LevelInfo
	if ae.Status >= 500 {
		level = slog.LevelWarn
	}
	s.log.Log(r.Context(), level, "request failed", "path", r.URL.Path, "query", r.URL.RawQuery, "status", ae.Status, "error", ae.Message)
	writeJSON(w, ae.Status, ae)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(&api.Error{Message: "encode answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// namedQuery is a PromQL query and the name its latency is recorded as.
type namedQuery struct {
	name, expr string
}

// queryAll runs the queries concurrently and returns their vectors in
// order, or the first error.
func (s *Server) queryAll(ctx context.Context, qs []namedQuery) ([]model.Vector, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	out := make([]model.Vector, len(qs))
	errs := make([]error, len(qs))
	var wg sync.WaitGroup
	for i, q := range qs {
		wg.Go(func() { out[i], errs[i] = s.query(ctx, q) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// query runs one instant query at Prometheus' current time.
func (s *Server) query(ctx context.Context, q namedQuery) (model.Vector, error) {
	start := time.Now()
	v, warnings, _, err := s.prom.Query(ctx, q.expr, time.Time{}, promv1.WithTimeout(s.timeout))
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	s.queryTime.WithLabelValues(q.name, outcome).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, &promError{url: s.promURL, err: fmt.Errorf("%s: %w", q.expr, err)}
	}
	if len(warnings) > 0 {
		s.log.Warn("Prometheus warned", "query", q.expr, "warnings", []string(warnings))
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, &promError{url: s.promURL, err: fmt.Errorf("%s: answer is a %s, not a vector", q.expr, v.Type())}
	}
	return vec, nil
}

// number returns v, or nil when it is not a number (no data).
func number(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return &v
}
