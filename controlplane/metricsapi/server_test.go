package metricsapi

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// closedURL returns the URL of a loopback port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + l.Addr().String()
	l.Close()
	return u
}

// TestHandlerErrors calls the handler with bad input, with resources that
// do not exist and with Prometheus down or refusing, and checks the status,
// the JSON error body and the server's request counter.
func TestHandlerErrors(t *testing.T) {
	down := closedURL(t)
	// A Prometheus that answers 503 to every query, and one that refuses
	// the query as bad_data.
	unavailable := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "tsdb not ready", http.StatusServiceUnavailable)
	}))
	defer unavailable.Close()
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"parse error"}`))
	}))
	defer refusing.Close()
	kube := fake.NewClientset(&appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	})

	for _, tc := range []struct {
		name      string
		prom      string
		target    string
		status    int
		param     string
		inMessage string
		endpoint  string
	}{
		{"unknown resource type", down, "/api/v1/stat?resource=widget", 400, "resource", `unknown resource type "widget"`, "stat"},
		{"missing resource", down, "/api/v1/top-routes", 400, "resource", "required", "top-routes"},
		{"bad window", down, "/api/v1/stat?resource=deploy&window=1y", 400, "window", `"1y" is not a duration`, "stat"},
		{"bad name", down, "/api/v1/stat?resource=deploy&name=" + "web%22%7D%20or%20vector(1)", 400, "name", "is not a deployment name", "stat"},
		{"edges of services", down, "/api/v1/edges?resource=svc", 400, "resource", "not services", "edges"},
		{"no such deployment", down, "/api/v1/stat?resource=deploy&namespace=shop&name=nope", 404, "name", "deployment shop/nope not found", "stat"},
		{"Prometheus unreachable", down, "/api/v1/stat?resource=deploy&namespace=shop", 503, "", "query Prometheus at " + down + ": ", "stat"},
		{"Prometheus unreachable, edges", down, "/api/v1/edges?resource=deploy", 503, "", "connection refused", "edges"},
		{"Prometheus unavailable", unavailable.URL, "/api/v1/top-routes?resource=deploy", 503, "", "query Prometheus at " + unavailable.URL, "top-routes"},
		{"Prometheus refuses the query", refusing.URL, "/api/v1/top-routes?resource=deploy", 500, "", "bad_data: parse error", "top-routes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			s, err := New(Config{PrometheusURL: tc.prom, Client: kube, Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.target, nil))
			if rec.Code != tc.status {
				t.Errorf("status %d, want %d; body %s", rec.Code, tc.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var e api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if e.Param != tc.param || !strings.Contains(e.Message, tc.inMessage) {
				t.Errorf("error %+v, want param %q and a message with %q", e, tc.param, tc.inMessage)
			}
			if n := counterValue(t, s.requests.WithLabelValues(tc.endpoint, strconv.Itoa(tc.status))); n != 1 {
				t.Errorf("sluice_metrics_api_requests_total{endpoint=%q,code=\"%d\"} = %v, want 1", tc.endpoint, tc.status, n)
			}
		})
	}
}

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestHandlerMethods refuses what is not GET on a known path and answers
// 404 elsewhere.
func TestHandlerMethods(t *testing.T) {
	s, err := New(Config{PrometheusURL: closedURL(t), Client: fake.NewClientset()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodPost, "/api/v1/stat?resource=deploy", http.StatusMethodNotAllowed},
		{http.MethodGet, "/api/v1/nothing", http.StatusNotFound},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: %s, want %d", tc.method, tc.path, resp.Status, tc.status)
		}
	}
}

// TestNewConfig refuses incomplete configurations.
func TestNewConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no URL", Config{Client: fake.NewClientset()}},
		{"URL without scheme", Config{PrometheusURL: "prometheus:9090", Client: fake.NewClientset()}},
		{"no Kubernetes client", Config{PrometheusURL: "http://prometheus:9090"}},
	} {
		if _, err := New(tc.cfg); err == nil {
			t.Errorf("%s: New accepted it", tc.name)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := New(Config{PrometheusURL: "http://p:9090", Client: fake.NewClientset(), Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{PrometheusURL: "http://p:9090", Client: fake.NewClientset(), Registerer: reg}); err == nil {
		t.Error("a second server registered its metrics in the same registry")
	}
}
