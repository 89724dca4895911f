package metricsapi_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-mesh/sluice/controlplane/metricsapi"
	"github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/test/prometheustest"
)

// The proxies' latency buckets (Linkerd's), in milliseconds.
var bucketsMs = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
	1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}

// Every fake response's latency falls 40 % in (5, 10] ms, 30 % in
// (10, 20] ms and 30 % in (40, 50] ms; so p50 is in (10, 20] and p95 and
// p99 in (40, 50], away from the buckets' edges.
var latencyShares = []struct {
	le, share, typical float64
}{{10, 0.4, 8}, {20, 0.3, 15}, {50, 0.3, 45}}

// httpSeries is one HTTP target of a fake proxy: its requests grow at rps
// and a share of them (failures) are 500s.
type httpSeries struct {
	labels   prometheus.Labels
	rps      float64
	failures float64
}

// tcpSeries is one TCP target of a fake proxy with open connections.
type tcpSeries struct {
	labels prometheus.Labels
	open   float64
	bps    float64 // bytes per second, each way
}

// fakeProxy exposes, like sluice-proxy's /metrics, counters that grow
// linearly with the time since start, so that their rates are known.
type fakeProxy struct {
	start time.Time
	http  []httpSeries
	tcp   []tcpSeries
}

func (p *fakeProxy) Describe(chan<- *prometheus.Desc) {}

// with returns l plus extra, in a new map.
func with(l prometheus.Labels, extra ...string) prometheus.Labels {
	out := prometheus.Labels{}
	for k, v := range l {
		out[k] = v
	}
	for i := 0; i+1 < len(extra); i += 2 {
		out[extra[i]] = extra[i+1]
	}
	return out
}

// Collect sends the series' values now: counters as if the proxy had run
// for 1000 s before start, so that they never start from zero.
func (p *fakeProxy) Collect(ch chan<- prometheus.Metric) {
	elapsed := time.Since(p.start).Seconds() + 1000
	counter := func(name, help string, l prometheus.Labels, v float64) {
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, help, nil, l), prometheus.CounterValue, math.Floor(v))
	}
	for _, s := range p.http {
		n := math.Floor(s.rps * elapsed)
		fails := math.Floor(n * s.failures)
		counter("request_total", "Total count of HTTP requests.", s.labels, n)
		for _, st := range []struct {
			code, class string
			n           float64
		}{{"200", "success", n - fails}, {"500", "failure", fails}} {
			if st.n == 0 {
				continue
			}
			l := with(s.labels, "status_code", st.code)
			counter("response_total", "Total count of HTTP responses.", with(l, "classification", st.class), st.n)
			buckets := map[float64]uint64{}
			var cum, sum float64
			for _, b := range bucketsMs {
				for _, ls := range latencyShares {
					if ls.le == b {
						c := math.Floor(st.n * ls.share)
						if ls.le == latencyShares[len(latencyShares)-1].le {
							c = st.n - cum // the rest
						}
						cum += c
						sum += c * ls.typical
					}
				}
				buckets[b] = uint64(cum)
			}
			ch <- prometheus.MustNewConstHistogram(prometheus.NewDesc("response_latency_ms",
				"Elapsed times between a request's headers being received and its response stream completing", nil, l),
				uint64(st.n), sum, buckets)
		}
	}
	for _, s := range p.tcp {
		counter("tcp_open_total", "Total count of opened connections", s.labels, s.open)
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("tcp_open_connections", "Number of currently-open connections", nil, s.labels),
			prometheus.GaugeValue, s.open)
		counter("tcp_read_bytes_total", "Total count of bytes read from peers", s.labels, s.bps*elapsed)
		counter("tcp_write_bytes_total", "Total count of bytes written to peers", s.labels, s.bps*elapsed)
	}
}

func identity(sa string) string {
	return meshmeta.IdentityName(sa, "shop", meshmeta.DefaultTrustDomain)
}

// inbound and outbound return a proxy's HTTP target labels.
func inbound(authority, addr, client string) prometheus.Labels {
	ip, port, _ := strings.Cut(addr, ":")
	return prometheus.Labels{"direction": "inbound", "authority": authority, "target_addr": addr, "target_ip": ip,
		"target_port": port, "tls": "true", "client_id": identity(client)}
}

func outbound(authority, addr, server string, dst ...string) prometheus.Labels {
	ip, port, _ := strings.Cut(addr, ":")
	l := prometheus.Labels{"direction": "outbound", "authority": authority, "target_addr": addr, "target_ip": ip, "target_port": port}
	if server != "" {
		l["tls"], l["server_id"] = "true", identity(server)
	} else {
		l["tls"], l["no_tls_reason"] = "no_identity", "not_provided_by_service_discovery"
	}
	for i := 0; i+1 < len(dst); i += 2 {
		l["dst_"+dst[i]] = dst[i+1]
	}
	return l
}

// tcpOf returns the TCP labels of an HTTP target for a peer.
func tcpOf(l prometheus.Labels, peer string) prometheus.Labels {
	out := with(l, "peer", peer)
	delete(out, "authority")
	return out
}

const (
	webAuthority   = "web.shop.svc.cluster.local:80"
	adminAuthority = "web-admin.shop.svc.cluster.local:9000"
	apiAuthority   = "api.shop.svc.cluster.local:8080"
	oldAuthority   = "legacy.shop.svc.cluster.local:80"
)

// TestAgainstPrometheus serves fake proxies' metrics for a small shop,
// has the real Prometheus scrape them with the labels Kubernetes
// relabelling adds, and checks what the API answers:
//
//   - web (2 pods) gets 100 req/s from client and 10 from batch: 90 to
//     its main authority, 20 to its admin one; 3 open connections per pod;
//   - api (1 pod) gets 50 req/s from client, 20 % of them failing;
//   - client calls web (100 req/s, over mTLS), api (50) and legacy (10,
//     without TLS: legacy is not meshed);
//   - batch calls web (10 req/s) with another service account;
//   - idle is meshed and gets nothing.
func TestAgainstPrometheus(t *testing.T) {
	start := time.Now()
	webDst := func(pod string) []string {
		return []string{"namespace", "shop", "service", "web", "deployment", "web", "pod", pod, "serviceaccount", "web"}
	}
	proxies := []struct {
		pod, deployment string
		proxy           *fakeProxy
	}{
		{"web-1", "web", &fakeProxy{http: []httpSeries{
			{labels: inbound(webAuthority, "10.0.0.11:8080", "client"), rps: 45},
			{labels: inbound(webAuthority, "10.0.0.11:8080", "batch"), rps: 5},
			{labels: inbound(adminAuthority, "10.0.0.11:9000", "client"), rps: 5},
		}, tcp: []tcpSeries{{labels: tcpOf(inbound("", "10.0.0.11:8080", "client"), "src"), open: 3, bps: 100}}}},
		{"web-2", "web", &fakeProxy{http: []httpSeries{
			{labels: inbound(webAuthority, "10.0.0.12:8080", "client"), rps: 35},
			{labels: inbound(webAuthority, "10.0.0.12:8080", "batch"), rps: 5},
			{labels: inbound(adminAuthority, "10.0.0.12:9000", "client"), rps: 15},
		}, tcp: []tcpSeries{{labels: tcpOf(inbound("", "10.0.0.12:8080", "client"), "src"), open: 3, bps: 100}}}},
		{"api-1", "api", &fakeProxy{http: []httpSeries{
			{labels: inbound(apiAuthority, "10.0.0.21:8080", "client"), rps: 50, failures: 0.2},
		}, tcp: []tcpSeries{{labels: tcpOf(inbound("", "10.0.0.21:8080", "client"), "src"), open: 1}}}},
		{"client-1", "client", &fakeProxy{http: []httpSeries{
			{labels: outbound(webAuthority, "10.0.0.11:8080", "web", webDst("web-1")...), rps: 50},
			{labels: outbound(webAuthority, "10.0.0.12:8080", "web", webDst("web-2")...), rps: 50},
			{labels: outbound(apiAuthority, "10.0.0.21:8080", "api", "namespace", "shop", "service", "api", "deployment", "api", "pod", "api-1"), rps: 50, failures: 0.2},
			{labels: outbound(oldAuthority, "10.0.0.31:80", "", "namespace", "shop", "service", "legacy", "deployment", "legacy", "pod", "legacy-1"), rps: 10},
		}, tcp: []tcpSeries{
			{labels: tcpOf(outbound("", "10.0.0.11:8080", "web", webDst("web-1")...), "dst"), open: 2},
			{labels: tcpOf(outbound("", "10.0.0.12:8080", "web", webDst("web-2")...), "dst"), open: 2},
		}}},
		{"batch-1", "batch", &fakeProxy{http: []httpSeries{
			{labels: outbound(webAuthority, "10.0.0.11:8080", "web", webDst("web-1")...), rps: 10},
		}}},
	}
	var targets []prometheustest.Target
	for _, p := range proxies {
		p.proxy.start = start
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(p.proxy)
		srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		t.Cleanup(srv.Close)
		targets = append(targets, prometheustest.Target{
			Addr:   strings.TrimPrefix(srv.URL, "http://"),
			Labels: map[string]string{"namespace": "shop", "pod": p.pod, "deployment": p.deployment},
		})
	}
	prom := prometheustest.Start(t, prometheustest.Options{Targets: targets})

	reg := prometheus.NewRegistry()
	s, err := metricsapi.New(metricsapi.Config{PrometheusURL: prom.URL, Client: fake.NewClientset(shop()...), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	client, err := api.NewClient(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const window = 10 * time.Second

	// Rates over the window are right once the window is full of samples:
	// wait until every target has been scraped throughout it.
	full := fmt.Sprintf("min(count_over_time(up[%ds]))", int(window/time.Second)+2)
	eventually(t, func() (model.Value, error) {
		v, _, _, err := prom.API.Query(ctx, full, time.Time{})
		return v, err
	}, func(v model.Value) error {
		if vec, ok := v.(model.Vector); !ok || len(vec) != 1 || float64(vec[0].Value) < window.Seconds()+1 {
			return fmt.Errorf("%s = %v, want at least %v samples", full, v, window.Seconds()+1)
		}
		return nil
	})

	stat := func(r api.StatRequest) func() (*api.StatResponse, error) {
		return func() (*api.StatResponse, error) { r.Window = window; return client.Stat(ctx, r) }
	}
	t.Run("deployments", func(t *testing.T) {
		eventually(t, stat(api.StatRequest{Resource: api.Deployment, Namespace: "shop"}), func(r *api.StatResponse) error {
			return rows(r, []row{
				{name: "api", meshed: 1, total: 1, sr: 0.8, rps: 50, tcp: 1, latency: true, status: api.StatusOK},
				{name: "batch", meshed: 1, total: 1, sr: -1, status: api.StatusNoTraffic},
				{name: "client", meshed: 1, total: 1, sr: -1, status: api.StatusNoTraffic},
				{name: "idle", meshed: 1, total: 1, sr: -1, status: api.StatusNoTraffic},
				{name: "legacy", meshed: 0, total: 1, sr: -1, status: api.StatusNotMeshed},
				{name: "web", meshed: 2, total: 2, sr: 1, rps: 110, tcp: 6, latency: true, status: api.StatusOK},
			})
		})
	})
	t.Run("to", func(t *testing.T) {
		eventually(t, stat(api.StatRequest{Resource: api.Deployment, Namespace: "shop", Name: "client", To: &api.Resource{Kind: api.Deployment, Name: "web"}}),
			func(r *api.StatResponse) error {
				return rows(r, []row{{name: "client", meshed: 1, total: 1, sr: 1, rps: 100, tcp: 4, latency: true, status: api.StatusOK}})
			})
	})
	t.Run("from", func(t *testing.T) {
		eventually(t, stat(api.StatRequest{Resource: api.Deployment, Namespace: "shop", From: &api.Resource{Kind: api.Deployment, Name: "client"}}),
			func(r *api.StatResponse) error {
				return rows(r, []row{
					{name: "api", meshed: 1, total: 1, sr: 0.8, rps: 50, latency: true, status: api.StatusOK},
					{name: "batch", meshed: 1, total: 1, sr: -1, status: api.StatusNoTraffic},
					{name: "client", meshed: 1, total: 1, sr: -1, status: api.StatusNoTraffic},
					{name: "idle", meshed: 1, total: 1, sr: -1, status: api.StatusNoTraffic},
					{name: "legacy", meshed: 0, total: 1, sr: 1, rps: 10, latency: true, status: api.StatusOK},
					{name: "web", meshed: 2, total: 2, sr: 1, rps: 100, tcp: 4, latency: true, status: api.StatusOK},
				})
			})
	})
	t.Run("services", func(t *testing.T) {
		eventually(t, stat(api.StatRequest{Resource: api.Service, Namespace: "shop"}), func(r *api.StatResponse) error {
			return rows(r, []row{
				{name: "api", meshed: 1, total: 1, sr: 0.8, rps: 50, latency: true, status: api.StatusOK},
				{name: "legacy", meshed: 0, total: 1, sr: 1, rps: 10, latency: true, status: api.StatusOK},
				{name: "web", meshed: 2, total: 2, sr: 1, rps: 110, tcp: 4, latency: true, status: api.StatusOK},
			})
		})
	})
	t.Run("pod", func(t *testing.T) {
		eventually(t, stat(api.StatRequest{Resource: api.Pod, Namespace: "shop", Name: "web-2"}), func(r *api.StatResponse) error {
			return rows(r, []row{{name: "web-2", meshed: 1, total: 1, sr: 1, rps: 55, tcp: 3, latency: true, status: api.StatusOK}})
		})
	})
	t.Run("namespace", func(t *testing.T) {
		eventually(t, stat(api.StatRequest{Resource: api.Namespace, Name: "shop"}), func(r *api.StatResponse) error {
			return rows(r, []row{{ns: "-", name: "shop", meshed: 6, total: 7, sr: 150.0 / 160, rps: 160, tcp: 7, latency: true, status: api.StatusOK}})
		})
	})

	t.Run("edges", func(t *testing.T) {
		eventually(t, func() (*api.EdgesResponse, error) {
			return client.Edges(ctx, api.EdgesRequest{Resource: api.Deployment, Namespace: "shop"})
		}, func(r *api.EdgesResponse) error {
			dep := func(name string) api.Resource {
				return api.Resource{Namespace: "shop", Kind: api.Deployment, Name: name}
			}
			want := []api.Edge{
				{Src: dep("batch"), Dst: dep("web"), ClientID: identity("batch"), ServerID: identity("web"), Secured: true},
				{Src: dep("client"), Dst: dep("api"), ClientID: identity("client"), ServerID: identity("api"), Secured: true},
				{Src: dep("client"), Dst: dep("legacy"), NoTLSReason: "not_provided_by_service_discovery"},
				{Src: dep("client"), Dst: dep("web"), ClientID: identity("client"), ServerID: identity("web"), Secured: true},
			}
			if fmt.Sprint(r.Edges) != fmt.Sprint(want) {
				return fmt.Errorf("edges\n %+v\nwant\n %+v", r.Edges, want)
			}
			return nil
		})
	})
	t.Run("edges in another namespace", func(t *testing.T) {
		r, err := client.Edges(ctx, api.EdgesRequest{Resource: api.Deployment, Namespace: "elsewhere"})
		if err != nil || len(r.Edges) != 0 {
			t.Errorf("edges of namespace elsewhere: %+v, %v; want none", r, err)
		}
	})

	t.Run("top-routes", func(t *testing.T) {
		eventually(t, func() (*api.TopRoutesResponse, error) {
			return client.TopRoutes(ctx, api.TopRoutesRequest{Resource: api.Deployment, Namespace: "shop", Name: "web", Window: window})
		}, func(r *api.TopRoutesResponse) error {
			if len(r.Routes) != 2 {
				return fmt.Errorf("routes %+v, want 2", r.Routes)
			}
			for i, want := range []struct {
				authority string
				rps       float64
			}{{webAuthority, 90}, {adminAuthority, 20}} {
				rt := r.Routes[i]
				if rt.Authority != want.authority || !near(rt.RequestRate, want.rps) || rt.SuccessRate == nil || *rt.SuccessRate != 1 {
					return fmt.Errorf("route %d: %+v, want %s at %v req/s, all successful", i, rt, want.authority, want.rps)
				}
				if err := checkLatency(rt.LatencyP50Ms, rt.LatencyP95Ms, rt.LatencyP99Ms); err != nil {
					return fmt.Errorf("route %s: %w", rt.Authority, err)
				}
			}
			return nil
		})
	})

	t.Run("own metrics", func(t *testing.T) {
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+"="+l.GetValue())
				}
				found[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = true
			}
		}
		for _, want := range []string{
			"sluice_metrics_api_requests_total{code=200,endpoint=stat}",
			"sluice_metrics_api_requests_total{code=200,endpoint=edges}",
			"sluice_metrics_api_requests_total{code=200,endpoint=top-routes}",
			"sluice_metrics_api_prometheus_query_duration_seconds{outcome=ok,query=stat_responses}",
			"sluice_metrics_api_prometheus_query_duration_seconds{outcome=ok,query=edges_inbound}",
		} {
			if !found[want] {
				t.Errorf("no series %s among %v", want, found)
			}
		}
	})
}

// row is an expected stat row: sr -1 means no success rate; rates are
// compared within 10 %.
type row struct {
	ns, name      string
	meshed, total int
	sr, rps, tcp  float64
	latency       bool // latency quantiles expected (else none)
	status        string
}

func rows(r *api.StatResponse, want []row) error {
	if len(r.Rows) != len(want) {
		return fmt.Errorf("%d rows, want %d: %+v", len(r.Rows), len(want), r.Rows)
	}
	var errs []error
	for i, w := range want {
		g := r.Rows[i]
		ns := "shop"
		if w.ns == "-" {
			ns = ""
		}
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("row %s/%s: "+format, append([]any{g.Namespace, g.Name}, args...)...))
		}
		if g.Namespace != ns || g.Name != w.name {
			bad("want %s/%s", ns, w.name)
			continue
		}
		if g.MeshedPods != w.meshed || g.TotalPods != w.total {
			bad("meshed %d/%d, want %d/%d", g.MeshedPods, g.TotalPods, w.meshed, w.total)
		}
		switch {
		case w.sr < 0 && g.SuccessRate != nil:
			bad("success rate %v, want none", *g.SuccessRate)
		case w.sr >= 0 && (g.SuccessRate == nil || math.Abs(*g.SuccessRate-w.sr) > 0.02):
			bad("success rate %v, want %.3f ± 0.02", deref(g.SuccessRate), w.sr)
		}
		if !near(g.RequestRate, w.rps) {
			bad("%v req/s, want %v ± 10 %%", g.RequestRate, w.rps)
		}
		if g.TCPConnections != w.tcp {
			bad("%v TCP connections, want %v", g.TCPConnections, w.tcp)
		}
		if w.latency {
			if err := checkLatency(g.LatencyP50Ms, g.LatencyP95Ms, g.LatencyP99Ms); err != nil {
				bad("%v", err)
			}
		} else if g.LatencyP50Ms != nil || g.LatencyP95Ms != nil || g.LatencyP99Ms != nil {
			bad("latency %v/%v/%v, want none", deref(g.LatencyP50Ms), deref(g.LatencyP95Ms), deref(g.LatencyP99Ms))
		}
		if g.Status != w.status {
			bad("status %q, want %q", g.Status, w.status)
		}
	}
	return errors.Join(errs...)
}

// checkLatency checks the quantiles against the fake latency distribution.
func checkLatency(p50, p95, p99 *float64) error {
	for _, q := range []struct {
		name   string
		v      *float64
		lo, hi float64
	}{{"p50", p50, 10, 20}, {"p95", p95, 40, 50}, {"p99", p99, 40, 50}} {
		if q.v == nil || *q.v <= q.lo || *q.v > q.hi {
			return fmt.Errorf("latency %s %v ms, want in (%v, %v]", q.name, deref(q.v), q.lo, q.hi)
		}
	}
	return nil
}

func near(got, want float64) bool { return math.Abs(got-want) <= 0.1*want }

func deref(p *float64) any {
	if p == nil {
		return "none"
	}
	return *p
}

// eventually calls get until check accepts its answer, failing the test
// with the last complaint when that does not happen within a minute.
func eventually[T any](t *testing.T, get func() (T, error), check func(T) error) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		v, err := get()
		if err == nil {
			err = check(v)
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still, after a minute: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// shop returns the Kubernetes side of the test: namespace shop with its
// deployments, services and pods (legacy's pod not meshed).
func shop() []runtime.Object {
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere"}},
	}
	for _, d := range []struct {
		name   string
		pods   []string
		meshed bool
		svc    bool
	}{
		{"web", []string{"web-1", "web-2"}, true, true},
		{"api", []string{"api-1"}, true, true},
		{"client", []string{"client-1"}, true, false},
		{"batch", []string{"batch-1"}, true, false},
		{"idle", []string{"idle-1"}, true, false},
		{"legacy", []string{"legacy-1"}, false, true},
	} {
		sel := map[string]string{"app": d.name}
		objs = append(objs, &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: d.name},
			Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: sel}},
		})
		if d.svc {
			objs = append(objs, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: d.name},
				Spec:       corev1.ServiceSpec{Selector: sel},
			})
		}
		for _, p := range d.pods {
			labels := map[string]string{"app": d.name}
			if d.meshed {
				labels[meshmeta.LabelControlPlaneNS] = meshmeta.DefaultNamespace
				labels[meshmeta.LabelProxyDeployment] = d.name
			}
			objs = append(objs, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: p, Labels: labels},
				Spec:       corev1.PodSpec{ServiceAccountName: d.name},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning},
			})
		}
	}
	// A finished pod of web's counts nowhere.
	objs = append(objs, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-old", Labels: map[string]string{"app": "web"}},
		Status:     corev1.PodStatus{Phase: corev1.PodSucceeded},
	})
	return objs
}
