package taptest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sluice-mesh/sluice/controlplane/tap"
)

// FrontProxyName is the common name of the front proxy's client
// certificate, the one allowed name of an Env's request-header config.
const FrontProxyName = "front-proxy-client"

// Options configure an Env.
type Options struct {
	// Objects are in the fake clientset: pods, deployments, services...
	Objects []runtime.Object
	// Proxies are the fake proxies by pod IP.
	Proxies map[netip.Addr]*Proxy
	// Allow decides each SubjectAccessReview, with a reason for a denial
	// [everyone allowed].
	Allow func(authorizationv1.SubjectAccessReviewSpec) (allowed bool, reason string)
	// Adjust, when set, changes the tap.Config before the Server is made.
	Adjust func(*tap.Config)
}

// Env is a tap Server on a TLS httptest server, with a request-header CA,
// a fake clientset and an aggregator stand-in in front of it.
type Env struct {
	// Client is the Server's clientset.
	Client *fake.Clientset
	// CA is the request-header CA, and FrontProxyCert the aggregator's
	// client certificate it issued (common name FrontProxyName).
	CA             *CA
	FrontProxyCert tls.Certificate
	// Registry holds the Server's metrics.
	Registry *prometheus.Registry
	// Server serves the tap Server directly; Aggregator forwards to it as
	// the API server does, for users named by their bearer token (see
	// RESTConfig).
	Server     *httptest.Server
	Aggregator *httptest.Server

	mu      sync.Mutex
	reviews []authorizationv1.SubjectAccessReviewSpec
}

// NewEnv starts an Env, stopped when the test ends.
func NewEnv(t testing.TB, o Options) *Env {
	t.Helper()
	e := &Env{Client: fake.NewClientset(o.Objects...), CA: NewCA(t, "front-proxy-ca"), Registry: prometheus.NewRegistry()}
	e.FrontProxyCert = e.CA.ClientCert(t, FrontProxyName)
	e.Client.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview).DeepCopy()
		e.mu.Lock()
		e.reviews = append(e.reviews, sar.Spec)
		e.mu.Unlock()
		sar.Status.Allowed = true
		if o.Allow != nil {
			sar.Status.Allowed, sar.Status.Reason = o.Allow(sar.Spec)
			sar.Status.Denied = !sar.Status.Allowed
		}
		return true, sar, nil
	})
	cfg := tap.Config{
		Client: e.Client,
		RequestHeader: tap.RequestHeaderConfig{
			ClientCA:            e.CA.Pool(),
			AllowedNames:        []string{FrontProxyName},
			UsernameHeaders:     []string{"X-Remote-User"},
			GroupHeaders:        []string{"X-Remote-Group"},
			ExtraHeaderPrefixes: []string{"X-Remote-Extra-"},
		},
		Dial:       Dialer(o.Proxies),
		Registerer: e.Registry,
		Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if o.Adjust != nil {
		o.Adjust(&cfg)
	}
	srv, err := tap.New(cfg)
	if err != nil {
		t.Fatalf("new tap server: %v", err)
	}
	e.Server = httptest.NewUnstartedServer(srv)
	e.Server.EnableHTTP2 = true
	e.Server.TLS = tap.TLSConfig(nil)
	e.Server.StartTLS()
	t.Cleanup(e.Server.Close)
	// The handler of a tap whose client went ends a moment later; wait for
	// it, so that it does not outlive the test (and its logger).
	t.Cleanup(func() {
		deadline := time.Now().Add(10 * time.Second)
		for e.Metric(t, "tap_streams_open", nil) > 0 {
			if time.Now().After(deadline) {
				t.Errorf("%v tap streams still open 10s after the test", e.Metric(t, "tap_streams_open", nil))
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	backend, _ := url.Parse(e.Server.URL)
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: serverPool(e.Server), Certificates: []tls.Certificate{e.FrontProxyCert}},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(backend)
			user, groups, _ := strings.Cut(strings.TrimPrefix(pr.In.Header.Get("Authorization"), "Bearer "), "|")
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Set("X-Remote-User", user)
			pr.Out.Header.Del("X-Remote-Group")
			for g := range strings.SplitSeq(groups, ",") {
				if g != "" {
					pr.Out.Header.Add("X-Remote-Group", g)
				}
			}
		},
		Transport:     tr,
		FlushInterval: -1,
	}
	e.Aggregator = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(metav1.Status{
				TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
				Status:   metav1.StatusFailure, Message: "Unauthorized", Reason: metav1.StatusReasonUnauthorized, Code: http.StatusUnauthorized,
			})
			return
		}
		rp.ServeHTTP(w, r)
	}))
	e.Aggregator.EnableHTTP2 = true
	e.Aggregator.StartTLS()
	t.Cleanup(e.Aggregator.Close)
	return e
}

func serverPool(s *httptest.Server) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.Certificate())
	return p
}

// Reviews returns the SubjectAccessReviews the Server made so far.
func (e *Env) Reviews() []authorizationv1.SubjectAccessReviewSpec {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]authorizationv1.SubjectAccessReviewSpec(nil), e.reviews...)
}

// RESTConfig returns a client configuration that reaches the Server through
// the aggregator as user in groups.
func (e *Env) RESTConfig(user string, groups ...string) *rest.Config {
	return &rest.Config{
		Host:            e.Aggregator.URL,
		BearerToken:     user + "|" + strings.Join(groups, ","),
		TLSClientConfig: rest.TLSClientConfig{CAData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.Aggregator.Certificate().Raw})},
	}
}

// HTTPClient returns a client of the Server itself (not through the
// aggregator) presenting cert when not nil.
func (e *Env) HTTPClient(t testing.TB, cert *tls.Certificate) *http.Client {
	tc := &tls.Config{RootCAs: serverPool(e.Server)}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// Metric returns the value of the Server's counter or gauge name with
// the labels, or -1 when there is no such series.
func (e *Env) Metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.Registry.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}
