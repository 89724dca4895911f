package metrics_test

import (
	"bytes"
	"flag"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluice-mesh/sluice/proxy/metrics"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// clock is a fake clock that moves only when told.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// scrape serves r through promhttp as Prometheus would scrape it, checks
// that the answer is a valid text exposition and returns its body.
func scrape(t *testing.T, r *metrics.Registry) []byte {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(r)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	defer srv.Close()
	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read scrape: %v", err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s: %s", res.Status, body)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Fatalf("scrape content type %q, want the text format", ct)
	}
	return body
}

// parse reads a text exposition back into families.
func parse(t *testing.T, body []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, body)
	}
	return fams
}

// samples scrapes r and returns every sample by its series name, such as
// `request_total{authority="a", direction="inbound", ...}` (labels sorted,
// histograms as _bucket/_sum/_count).
func samples(t *testing.T, r *metrics.Registry) map[string]float64 {
	t.Helper()
	fams := parse(t, scrape(t, r))
	out := map[string]float64{}
	for _, f := range fams {
		vec, err := expfmt.ExtractSamples(&expfmt.DecodeOptions{Timestamp: model.Now()}, f)
		if err != nil {
			t.Fatalf("extract samples: %v", err)
		}
		for _, s := range vec {
			k := s.Metric.String()
			if _, dup := out[k]; dup {
				t.Fatalf("series %s exposed twice", k)
			}
			out[k] = float64(s.Value)
		}
	}
	return out
}

// series formats a series name as samples does: labels sorted by name.
func series(name string, labels ...string) string {
	m := model.Metric{model.MetricNameLabel: model.LabelValue(name)}
	for i := 0; i+1 < len(labels); i += 2 {
		m[model.LabelName(labels[i])] = model.LabelValue(labels[i+1])
	}
	return m.String()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("exposition differs from %s (run with -update if intended)\n--- got\n%s", path, got)
	}
}

var (
	webTarget = metrics.Target{
		Direction: "outbound",
		Authority: "web-svc.emojivoto.svc.cluster.local:80",
		Addr:      netip.MustParseAddrPort("10.42.0.7:8080"),
		TLS:       metrics.TLS{Status: "true", ServerID: "web.emojivoto.serviceaccount.identity.sluice.cluster.local"},
		Dst: map[string]string{
			"namespace": "emojivoto", "service": "web-svc", "deployment": "web",
			"pod": "web-5f7b9c-x2x4q", "serviceaccount": "web", "pod-template-hash": "5f7b9c",
		},
	}
	emojiInbound = metrics.Target{
		Direction: "inbound",
		Authority: "emoji-svc.emojivoto.svc.cluster.local:8080",
		Addr:      netip.MustParseAddrPort("10.42.0.9:8080"),
		TLS:       metrics.TLS{Status: "true", ClientID: "web.emojivoto.serviceaccount.identity.sluice.cluster.local"},
	}
	unmeshed = metrics.Target{
		Direction: "outbound",
		Authority: "[fd00::5]",
		Addr:      netip.MustParseAddrPort("[fd00::5]:80"),
		TLS:       metrics.TLS{Status: "no_identity", NoTLSReason: "not_provided_by_service_discovery"},
	}
	dbTarget = metrics.Target{
		Direction: "outbound",
		Authority: "ignored on TCP series",
		Addr:      netip.MustParseAddrPort("[::ffff:10.42.0.11]:5432"),
		TLS:       metrics.TLS{Status: "disabled"},
		Dst:       map[string]string{"namespace": "data", "statefulset": "pg"},
	}
)

// scenario records a fixed mix of traffic: HTTP with dst labels, gRPC,
// an error without response, TCP with clean and failed closes, and HTTP
// errors before routing.
func scenario(r *metrics.Registry) {
	web := r.HTTP(webTarget)
	for _, x := range []struct {
		status int
		lat    time.Duration
	}{{200, 2 * time.Millisecond}, {200, 15 * time.Millisecond}, {503, 120 * time.Millisecond}} {
		web.Request()
		web.Response(x.status, -1, "", x.lat)
	}
	emoji := r.HTTP(emojiInbound)
	emoji.Request()
	emoji.Response(200, 0, "", 3*time.Millisecond)
	emoji.Request()
	emoji.Response(200, 14, "", 7500*time.Microsecond)
	u := r.HTTP(unmeshed)
	u.Request()
	u.Response(0, -1, "connect_refused", time.Second)

	src, dst := r.TCP(dbTarget, "src"), r.TCP(dbTarget, "dst")
	for i, errno := range []string{"", "ECONNRESET"} {
		src.Open()
		dst.Open()
		src.Read(100 * (i + 1))
		dst.Wrote(100 * (i + 1))
		dst.Read(1000)
		src.Wrote(1000)
		dst.Close(errno, time.Duration(i+1)*90*time.Second)
		src.Close(errno, time.Duration(i+1)*90*time.Second)
	}
	src.Open() // still open

	r.HTTPError("inbound", "malformed_request")
	r.HTTPError("inbound", "malformed_request")
	r.HTTPError("outbound", "detect_timeout")
}

func TestExpositionGolden(t *testing.T) {
	r := metrics.New(metrics.Options{Now: newClock().Now})
	scenario(r)
	body := scrape(t, r)
	golden(t, "exposition.golden", body)

	fams := parse(t, body)
	wantTypes := map[string]dto.MetricType{
		"request_total":              dto.MetricType_COUNTER,
		"response_total":             dto.MetricType_COUNTER,
		"response_latency_ms":        dto.MetricType_HISTOGRAM,
		"tcp_open_total":             dto.MetricType_COUNTER,
		"tcp_open_connections":       dto.MetricType_GAUGE,
		"tcp_read_bytes_total":       dto.MetricType_COUNTER,
		"tcp_write_bytes_total":      dto.MetricType_COUNTER,
		"tcp_close_total":            dto.MetricType_COUNTER,
		"tcp_connection_duration_ms": dto.MetricType_HISTOGRAM,
		"inbound_http_errors_total":  dto.MetricType_COUNTER,
		"outbound_http_errors_total": dto.MetricType_COUNTER,
	}
	for name, typ := range wantTypes {
		f, ok := fams[name]
		if !ok {
			t.Errorf("family %s missing", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("family %s has type %v, want %v", name, f.GetType(), typ)
		}
	}
	if len(fams) != len(wantTypes) {
		t.Errorf("got %d families, want %d", len(fams), len(wantTypes))
	}
	for _, name := range []string{"response_latency_ms", "tcp_connection_duration_ms"} {
		for _, m := range fams[name].GetMetric() {
			var le []float64
			for _, b := range m.GetHistogram().GetBucket() {
				le = append(le, b.GetUpperBound())
			}
			want := []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
				1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000, math.Inf(1)}
			if !slices.Equal(le, want) {
				t.Errorf("%s buckets %v, want Linkerd's %v", name, le, want)
			}
		}
	}
}

func TestScenarioSamples(t *testing.T) {
	r := metrics.New(metrics.Options{Now: newClock().Now})
	scenario(r)
	got := samples(t, r)
	web := []string{
		"direction", "outbound", "authority", "web-svc.emojivoto.svc.cluster.local:80",
		"target_addr", "10.42.0.7:8080", "target_ip", "10.42.0.7", "target_port", "8080",
		"tls", "true", "server_id", "web.emojivoto.serviceaccount.identity.sluice.cluster.local",
		"dst_namespace", "emojivoto", "dst_service", "web-svc", "dst_deployment", "web",
		"dst_pod", "web-5f7b9c-x2x4q", "dst_serviceaccount", "web", "dst_pod_template_hash", "5f7b9c",
	}
	emoji := []string{
		"direction", "inbound", "authority", "emoji-svc.emojivoto.svc.cluster.local:8080",
		"target_addr", "10.42.0.9:8080", "target_ip", "10.42.0.9", "target_port", "8080",
		"tls", "true", "client_id", "web.emojivoto.serviceaccount.identity.sluice.cluster.local",
	}
	unmeshed := []string{
		"direction", "outbound", "authority", "[fd00::5]",
		"target_addr", "[fd00::5]:80", "target_ip", "fd00::5", "target_port", "80",
		"tls", "no_identity", "no_tls_reason", "not_provided_by_service_discovery",
	}
	db := func(peer string, extra ...string) []string {
		return append([]string{
			"direction", "outbound", "peer", peer,
			"target_addr", "10.42.0.11:5432", "target_ip", "10.42.0.11", "target_port", "5432",
			"tls", "disabled", "dst_namespace", "data", "dst_statefulset", "pg",
		}, extra...)
	}
	with := func(base []string, extra ...string) []string { return append(slices.Clip(base), extra...) }
	for _, c := range []struct {
		series string
		want   float64
	}{
		{series("request_total", web...), 3},
		{series("response_total", with(web, "status_code", "200", "classification", "success")...), 2},
		{series("response_total", with(web, "status_code", "503", "classification", "failure")...), 1},
		{series("response_latency_ms_bucket", with(web, "status_code", "200", "le", "2")...), 1},
		{series("response_latency_ms_bucket", with(web, "status_code", "200", "le", "10")...), 1},
		{series("response_latency_ms_bucket", with(web, "status_code", "200", "le", "20")...), 2},
		{series("response_latency_ms_count", with(web, "status_code", "200")...), 2},
		{series("response_latency_ms_sum", with(web, "status_code", "200")...), 17},
		{series("response_latency_ms_bucket", with(web, "status_code", "503", "le", "100")...), 0},
		{series("response_latency_ms_bucket", with(web, "status_code", "503", "le", "200")...), 1},
		{series("request_total", emoji...), 2},
		{series("response_total", with(emoji, "status_code", "200", "classification", "success", "grpc_status", "0")...), 1},
		{series("response_total", with(emoji, "status_code", "200", "classification", "failure", "grpc_status", "14")...), 1},
		{series("response_latency_ms_sum", with(emoji, "status_code", "200")...), 10.5},
		{series("response_total", with(unmeshed, "classification", "failure", "error", "connect_refused")...), 1},
		{series("response_latency_ms_bucket", with(unmeshed, "le", "1000")...), 1},
		{series("tcp_open_total", db("src")...), 3},
		{series("tcp_open_connections", db("src")...), 1},
		{series("tcp_open_connections", db("dst")...), 0},
		{series("tcp_read_bytes_total", db("src")...), 300},
		{series("tcp_write_bytes_total", db("src")...), 2000},
		{series("tcp_read_bytes_total", db("dst")...), 2000},
		{series("tcp_write_bytes_total", db("dst")...), 300},
		{series("tcp_close_total", db("src", "classification", "success")...), 1},
		{series("tcp_close_total", db("dst", "classification", "failure", "errno", "ECONNRESET")...), 1},
		{series("tcp_connection_duration_ms_bucket", db("dst", "classification", "success", "le", "50000")...), 0},
		{series("tcp_connection_duration_ms_bucket", db("dst", "classification", "success", "le", "+Inf")...), 1},
		{series("tcp_connection_duration_ms_sum", db("dst", "classification", "failure", "errno", "ECONNRESET")...), 180000},
		{series("inbound_http_errors_total", "error", "malformed_request"), 2},
		{series("outbound_http_errors_total", "error", "detect_timeout"), 1},
	} {
		v, ok := got[c.series]
		if !ok {
			t.Errorf("series %s missing", c.series)
			continue
		}
		if v != c.want {
			t.Errorf("%s = %v, want %v", c.series, v, c.want)
		}
	}
	for k := range got {
		if strings.Contains(k, "ignored on TCP") {
			t.Errorf("TCP series carries the authority: %s", k)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		status, grpc int
		err          string
		want         string
	}{
		{200, -1, "", "success"},
		{204, -1, "", "success"},
		{302, -1, "", "success"},
		{404, -1, "", "success"},
		{499, -1, "", "success"},
		{500, -1, "", "failure"},
		{503, -1, "", "failure"},
		{200, 0, "", "success"},
		{200, 2, "", "failure"},
		{200, 14, "", "failure"},
		{500, 0, "", "success"}, // the gRPC status decides when present
		{200, -1, "stream_reset", "failure"},
		{0, -1, "connect_refused", "failure"},
		{200, 0, "response_timeout", "failure"},
	} {
		if got := metrics.Classify(c.status, c.grpc, c.err); got != c.want {
			t.Errorf("Classify(%d, %d, %q) = %q, want %q", c.status, c.grpc, c.err, got, c.want)
		}
	}
}

func TestResponseLabels(t *testing.T) {
	tg := metrics.Target{Direction: "inbound", Authority: "a:80", Addr: netip.MustParseAddrPort("10.0.0.1:80")}
	base := []string{"direction", "inbound", "authority", "a:80", "target_addr", "10.0.0.1:80",
		"target_ip", "10.0.0.1", "target_port", "80", "tls", "disabled"}
	for _, c := range []struct {
		name         string
		status, grpc int
		err          string
		labels       []string // beyond the target's
	}{
		{"http ok", 200, -1, "", []string{"status_code", "200", "classification", "success"}},
		{"http 5xx", 502, -1, "", []string{"status_code", "502", "classification", "failure"}},
		{"grpc ok", 200, 0, "", []string{"status_code", "200", "classification", "success", "grpc_status", "0"}},
		{"grpc error", 200, 5, "", []string{"status_code", "200", "classification", "failure", "grpc_status", "5"}},
		{"error only", 0, -1, "connect_timeout", []string{"classification", "failure", "error", "connect_timeout"}},
		{"error after status", 200, -1, "stream_reset", []string{"status_code", "200", "classification", "failure", "error", "stream_reset"}},
		{"grpc below -1 is none", 200, -7, "", []string{"status_code", "200", "classification", "success"}},
		{"negative status is none", -1, -1, "canceled", []string{"classification", "failure", "error", "canceled"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := metrics.New(metrics.Options{})
			r.HTTP(tg).Response(c.status, c.grpc, c.err, time.Millisecond)
			got := samples(t, r)
			want := series("response_total", append(slices.Clip(base), c.labels...)...)
			if got[want] != 1 {
				t.Errorf("want %s = 1; got series:\n%s", want, names(got, "response_total"))
			}
			if n := len(names(got, "response_total")); n != 1 {
				t.Errorf("got %d response_total series, want 1", n)
			}
		})
	}
}

// names lists the series of one family in got.
func names(got map[string]float64, family string) []string {
	var out []string
	for k := range got {
		if strings.HasPrefix(k, family+"{") {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func TestTargetLabels(t *testing.T) {
	for _, c := range []struct {
		name   string
		target metrics.Target
		want   []string
	}{
		{
			name:   "zero target",
			target: metrics.Target{Direction: "inbound"},
			want:   []string{"direction", "inbound", "tls", "disabled"},
		},
		{
			name:   "no_tls_reason only with no_identity",
			target: metrics.Target{Direction: "inbound", TLS: metrics.TLS{Status: "disabled", NoTLSReason: "loopback"}},
			want:   []string{"direction", "inbound", "tls", "disabled"},
		},
		{
			name:   "identities only with tls=true",
			target: metrics.Target{Direction: "inbound", TLS: metrics.TLS{Status: "no_identity", NoTLSReason: "not_provided_by_remote", ClientID: "x"}},
			want:   []string{"direction", "inbound", "tls", "no_identity", "no_tls_reason", "not_provided_by_remote"},
		},
		{
			name:   "ipv6 target",
			target: metrics.Target{Direction: "outbound", Addr: netip.MustParseAddrPort("[2001:db8::1]:443")},
			want: []string{"direction", "outbound", "target_addr", "[2001:db8::1]:443", "target_ip", "2001:db8::1",
				"target_port", "443", "tls", "disabled"},
		},
		{
			name: "dst keys sanitized, first of colliding keys wins",
			target: metrics.Target{Direction: "outbound", Dst: map[string]string{
				"app.kubernetes.io/name": "web", "app_kubernetes_io_name": "other", "": "dropped", "9lives": "cat",
			}},
			want: []string{"direction", "outbound", "tls", "disabled",
				"dst_app_kubernetes_io_name", "web", "dst_9lives", "cat"},
		},
		{
			name:   "values made valid UTF-8",
			target: metrics.Target{Direction: "outbound", Dst: map[string]string{"pod": "a\xffb"}},
			want:   []string{"direction", "outbound", "tls", "disabled", "dst_pod", "a\uFFFDb"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := metrics.New(metrics.Options{})
			r.TCP(c.target, "src").Open()
			got := samples(t, r)
			want := series("tcp_open_total", append([]string{"peer", "src"}, c.want...)...)
			if got[want] != 1 {
				t.Errorf("want %s = 1; got:\n%s", want, strings.Join(names(got, "tcp_open_total"), "\n"))
			}
		})
	}
}

func TestSharedSeries(t *testing.T) {
	r := metrics.New(metrics.Options{})
	a := r.HTTP(webTarget)
	same := webTarget
	same.Dst = map[string]string{}
	for k, v := range webTarget.Dst {
		same.Dst[k] = v
	}
	if b := r.HTTP(same); a != b {
		t.Error("equal targets got different HTTP series")
	}
	other := webTarget
	other.Authority = "web-svc"
	if r.HTTP(other) == a {
		t.Error("targets with different authorities share a series")
	}
	if r.TCP(webTarget, "src") == r.TCP(webTarget, "dst") {
		t.Error("TCP peers src and dst share a series")
	}
	noAuth := webTarget
	noAuth.Authority = ""
	if r.TCP(webTarget, "src") != r.TCP(noAuth, "src") {
		t.Error("the authority splits TCP series")
	}
}

// TestMixedLabelSets checks that one family may hold series with different
// label names (dst_* from discovery, optional labels) and still gathers
// without error and as valid text.
func TestMixedLabelSets(t *testing.T) {
	r := metrics.New(metrics.Options{})
	targets := []metrics.Target{
		{Direction: "outbound", Authority: "a", Dst: map[string]string{"service": "a"}},
		{Direction: "outbound", Authority: "b", Dst: map[string]string{"deployment": "b", "pod": "b-1"}},
		{Direction: "outbound", Authority: "c"},
		{Direction: "inbound", Authority: "c", TLS: metrics.TLS{Status: "true", ClientID: "id"}},
	}
	for _, tg := range targets {
		s := r.HTTP(tg)
		s.Request()
		s.Response(200, -1, "", time.Millisecond)
		s.Response(200, 0, "", time.Millisecond)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	counts := map[string]int{}
	for _, f := range fams {
		counts[f.GetName()] = len(f.GetMetric())
	}
	if counts["request_total"] != 4 || counts["response_total"] != 8 || counts["response_latency_ms"] != 4 {
		t.Errorf("series per family = %v, want 4 request_total, 8 response_total, 4 response_latency_ms", counts)
	}
	parse(t, scrape(t, r))
}

func TestHTTPErrorFamilies(t *testing.T) {
	r := metrics.New(metrics.Options{})
	r.HTTPError("inbound", "request_header_fields_too_large")
	r.HTTPError("outbound", "malformed_request")
	r.HTTPError("outbound", "malformed_request")
	got := samples(t, r)
	for k, want := range map[string]float64{
		series("inbound_http_errors_total", "error", "request_header_fields_too_large"): 1,
		series("outbound_http_errors_total", "error", "malformed_request"):              2,
	} {
		if got[k] != want {
			t.Errorf("%s = %v, want %v", k, got[k], want)
		}
	}
	if len(got) != 2 {
		t.Errorf("got %d series, want 2: %v", len(got), got)
	}
}
