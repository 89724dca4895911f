package prometheustest

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

// TestStart scrapes two Go HTTP servers with target labels and finds their
// series in Prometheus with those labels; after the test Prometheus is
// gone, its port closed and its directory removed.
func TestStart(t *testing.T) {
	serve := func(body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/metrics" && r.URL.Path != "/other" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			w.Write([]byte(body))
		}))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	web := serve("# TYPE request_total counter\nrequest_total{direction=\"inbound\"} 7\n")
	other := serve("# TYPE tcp_open_connections gauge\ntcp_open_connections 3\n")

	var url, dir string
	t.Run("running", func(t *testing.T) {
		p := Start(t, Options{Targets: []Target{
			{Addr: web, Labels: map[string]string{"namespace": "shop", "pod": "web-1", "deployment": "web"}},
			{Addr: other, Path: "/other", Labels: map[string]string{"namespace": "shop", "pod": "db-0"}},
		}})
		url, dir = p.URL, p.Dir
		for _, tc := range []struct {
			query string
			want  model.LabelSet
			value float64
		}{
			{`request_total`, model.LabelSet{"__name__": "request_total", "direction": "inbound", "namespace": "shop", "pod": "web-1", "deployment": "web", "job": JobName, "instance": model.LabelValue(web)}, 7},
			{`tcp_open_connections`, model.LabelSet{"__name__": "tcp_open_connections", "namespace": "shop", "pod": "db-0", "job": JobName, "instance": model.LabelValue(other)}, 3},
		} {
			v, _, _, err := p.API.Query(context.Background(), tc.query, time.Time{})
			if err != nil {
				t.Fatalf("query %s: %v", tc.query, err)
			}
			vec, ok := v.(model.Vector)
			if !ok || len(vec) != 1 {
				t.Fatalf("query %s: got %v, want one sample", tc.query, v)
			}
			if got := model.LabelSet(vec[0].Metric); !got.Equal(tc.want) {
				t.Errorf("query %s: labels %v, want %v", tc.query, got, tc.want)
			}
			if float64(vec[0].Value) != tc.value {
				t.Errorf("query %s: value %v, want %v", tc.query, vec[0].Value, tc.value)
			}
		}
	})
	if t.Failed() || t.Skipped() || url == "" {
		return
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after the test, %s: %v, want it removed", dir, err)
	}
	if resp, err := http.Get(url + "/-/ready"); err == nil {
		resp.Body.Close()
		t.Errorf("after the test, %s still answers: %s", url, resp.Status)
	}
}

// TestConfig checks the configuration Start writes: one job, the
// interval, each target's labels and path.
func TestConfig(t *testing.T) {
	b, err := config(Options{ScrapeInterval: 1500 * time.Millisecond, Targets: []Target{
		{Addr: "127.0.0.1:4191", Labels: map[string]string{"namespace": "shop", "pod": "web-1"}},
		{Addr: "127.0.0.1:4192", Path: "/m"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := `global:
  evaluation_interval: 1500ms
  scrape_interval: 1500ms
  scrape_timeout: 1500ms
scrape_configs:
- job_name: sluice-proxy
  static_configs:
  - labels:
      namespace: shop
      pod: web-1
    targets:
    - 127.0.0.1:4191
  - labels:
      __metrics_path__: /m
    targets:
    - 127.0.0.1:4192
`
	if string(b) != want {
		t.Errorf("config:\n%s\nwant:\n%s", b, want)
	}
	if _, err := config(Options{Targets: []Target{{Addr: "no-port"}}}); err == nil {
		t.Error("config accepted a target without a port")
	}
}
