// Package tap is the tap service (sluice-controller tap): an aggregated
// Kubernetes API server for the group tap.sluice.io/v1alpha1 through which
// `meshctl tap` and the dashboard watch the live requests of a resource's
// pods.
//
// The API server authenticates the user, checks RBAC (verb watch on
// <plural>/tap in tap.sluice.io) and forwards the request over TLS with its
// front-proxy client certificate and the user in X-Remote-User,
// X-Remote-Group and X-Remote-Extra-*. The Server verifies that
// certificate against the request-header CA (RequestHeaderConfig), checks
// the user again with a SubjectAccessReview, finds the target's running
// meshed pods, opens a Tap/Observe stream to each pod's proxy (port 4190)
// with a Match built from the request's filters, and streams the merged
// events back, each enriched with the metadata of the pods it knows.
//
// Routes (all below /apis/tap.sluice.io/v1alpha1 but discovery):
//
//	GET  /apis, /apis/tap.sluice.io, /apis/tap.sluice.io/v1alpha1   discovery (APIGroupList, APIGroup, APIResourceList)
//	POST .../watch/namespaces/{ns}/{plural}/{name}/tap               tap one object (a namespace: namespaces/{ns})
//	POST .../watch/namespaces/{ns}/tap                               tap the namespace, or every object of the body's target type in it
//
// The SubjectAccessReview asks for verb watch in group tap.sluice.io on
// resource <plural>, subresource tap, name {name}, namespace {ns}; for the
// short namespace path on namespaces/tap named {ns}, whatever type the
// body narrows the tap to. The API server's own RBAC check is the same for
// the first form; it parses the short path as resource "tap" in {ns}, so a
// user needs a rule for both (resources ["*"] covers them). tapclient
// uses the first form whenever the target has a name.
//
// The body is a TapByResourceRequest (controlplane/api/tap) in protobuf or
// JSON; the answer is 200 and a stream of TapEvents (see tapapi's media
// types), flushed after each, which ends when the client goes, the limit
// is reached or every proxy's stream ended. Failures are Kubernetes Status
// objects in JSON: 401 without a valid front-proxy certificate or user,
// 403 when the SubjectAccessReview denies, 404 for an unknown type, a
// missing object or a target without running meshed pods (reason NotFound,
// "deployment/web in namespace shop has no running meshed pods"), 400 for a
// bad body or more pods than Config.MaxPods, 413 for a body larger than
// Config.MaxBodyBytes, 415 for an unknown Content-Type, 503 when no proxy
// could be reached.
package tap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

// Defaults of Config.
const (
	DefaultTapPort        = 4190
	DefaultMaxRPS         = 100.0
	DefaultMaxPods        = 1000
	DefaultConnectTimeout = 5 * time.Second
	DefaultMaxBodyBytes   = 64 << 10
)

// Config configures a Server. Zero fields take the defaults in brackets.
type Config struct {
	// Client reads the targets' objects and pods and creates the
	// SubjectAccessReviews. Required.
	Client kubernetes.Interface
	// RequestHeader recognizes the API server's front proxy. Its ClientCA
	// is required; LoadRequestHeaderConfig reads it from the cluster.
	RequestHeader RequestHeaderConfig
	// Dial connects to a proxy's tap port [a TCP dial].
	Dial func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	// TapPort is the proxies' tap port [4190].
	TapPort uint16
	// Logger hears of taps starting and ending and of unreachable proxies
	// [discard].
	Logger *slog.Logger
	// Registerer gets the service's metrics [none registered].
	Registerer prometheus.Registerer
	// DefaultMaxRPS is the rate limit over all pods of a request whose
	// max_rps is 0 [100].
	DefaultMaxRPS float64
	// MaxPods bounds the pods one tap fans out to; a larger target is
	// refused with 400 [1000].
	MaxPods int
	// ConnectTimeout bounds connecting to one proxy [5s].
	ConnectTimeout time.Duration
	// MaxBodyBytes bounds the request's body [64 KiB].
	MaxBodyBytes int64
}

// Server is the tap service's HTTP handler. Serve it over TLS with a
// tls.Config from TLSConfig, so that the front proxy's client certificate
// reaches it.
type Server struct {
	cfg Config
	log *slog.Logger
	m   metrics
	mux *http.ServeMux
}

var _ http.Handler = (*Server)(nil)

// metrics are the service's Prometheus metrics.
type metrics struct {
	requests    *prometheus.CounterVec
	open        prometheus.Gauge
	events      prometheus.Counter
	proxyErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tap_requests_total",
			Help: "Tap requests by outcome: ok (the stream started), bad_request, unauthenticated, forbidden, not_found, no_meshed_pods, unavailable (no proxy reachable) or error.",
		}, []string{"outcome"}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tap_streams_open",
			Help: "Tap streams being served.",
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tap_events_forwarded_total",
			Help: "Tap events forwarded from proxies to clients.",
		}),
		proxyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tap_proxy_errors_total",
			Help: "Proxy tap streams that could not be opened or ended with an error.",
		}),
	}
	for _, o := range outcomes {
		m.requests.WithLabelValues(o)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.open, m.events, m.proxyErrors} {
			if err := reg.Register(c); err != nil {
				return m, fmt.Errorf("register tap metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New returns a Server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Client == nil {
		return nil, errors.New("new tap server: no Kubernetes client")
	}
	if cfg.RequestHeader.ClientCA == nil {
		return nil, errors.New("new tap server: no request-header client CA")
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr.String())
		}
	}
	if cfg.TapPort == 0 {
		cfg.TapPort = DefaultTapPort
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DefaultMaxRPS <= 0 {
		cfg.DefaultMaxRPS = DefaultMaxRPS
	}
	if cfg.MaxPods <= 0 {
		cfg.MaxPods = DefaultMaxPods
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "tap"), m: m, mux: http.NewServeMux()}
	base := "/apis/" + tapapi.GroupVersion
	s.mux.HandleFunc("/apis", func(w http.ResponseWriter, r *http.Request) { serveDocument(w, r, apiGroupList()) })
	s.mux.HandleFunc("/apis/"+tapapi.Group, func(w http.ResponseWriter, r *http.Request) { serveDocument(w, r, apiGroup()) })
	s.mux.HandleFunc(base, func(w http.ResponseWriter, r *http.Request) { serveDocument(w, r, apiResourceList()) })
	s.mux.HandleFunc(base+"/watch/namespaces/{ns}/tap", s.serveTap)
	s.mux.HandleFunc(base+"/watch/namespaces/{ns}/{type}/{name}/tap", s.serveTap)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, notFound(fmt.Sprintf("the server could not find the requested resource %s", r.URL.Path)))
	})
	return s, nil
}

// TLSConfig returns the server side of the tap service's TLS: the
// certificate from getCertificate (keypair.Reloader.GetCertificate) and a
// request for the client's certificate, which the handler verifies
// against the request-header CA (a client without one still reads
// discovery).
func TLSConfig(getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		GetCertificate: getCertificate,
		ClientAuth:     tls.RequestClientCert,
		MinVersion:     tls.VersionTLS12,
	}
}

// ServeHTTP serves discovery and taps.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

func (s *Server) serveTap(w http.ResponseWriter, r *http.Request) {
	if err := s.tap(w, r); err != nil {
		s.m.requests.WithLabelValues(err.outcome).Inc()
		lvl := slog.LevelInfo
		if err.code >= 500 {
			lvl = slog.LevelWarn
		}
		s.log.Log(r.Context(), lvl, "tap refused", "code", err.code, "reason", err.msg)
		writeStatus(w, err)
	}
}

// tap serves one tap: a refusal is returned before anything is written;
// once the stream started it returns nil.
func (s *Server) tap(w http.ResponseWriter, r *http.Request) *apiError {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return &apiError{code: http.StatusMethodNotAllowed, reason: metav1.StatusReasonMethodNotAllowed, outcome: outcomeBadRequest,
			msg: r.Method + " is not allowed: a tap is a POST of a TapByResourceRequest"}
	}
	body, aerr := s.readBody(w, r)
	if aerr != nil {
		return aerr
	}
	u, aerr := s.authenticate(r)
	if aerr != nil {
		return aerr
	}
	ns, typ, name := r.PathValue("ns"), r.PathValue("type"), r.PathValue("name")
	pathTarget := &tappb.Resource{Namespace: ns, Type: "namespace", Name: ns}
	if typ != "" {
		t, ok := tapapi.LookupType(typ)
		if !ok {
			return notFound(fmt.Sprintf("the server could not find the requested resource: %s has no type %q (there are %s)", tapapi.GroupVersion, typ, strings.Join(tapapi.TypeNames(), ", ")))
		}
		if t.Name == "namespace" && name != ns {
			return badRequest(fmt.Sprintf("namespace %q tapped through namespace %q: use .../watch/namespaces/%s/tap", name, ns, name))
		}
		pathTarget = &tappb.Resource{Namespace: ns, Type: t.Name, Name: name}
	}
	pt, _ := tapapi.LookupType(pathTarget.Type)
	if aerr := s.authorize(r.Context(), u, access{namespace: ns, resource: pt.Plural, name: pathTarget.Name}); aerr != nil {
		return aerr
	}
	req, aerr := decodeBody(r, body)
	if aerr != nil {
		return aerr
	}
	if aerr := normalize(req, pathTarget); aerr != nil {
		return aerr
	}
	return s.fanOut(w, r, u, req)
}
