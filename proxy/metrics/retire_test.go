package metrics_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/proxy/metrics"
)

// present returns the value of the one exposed series of family, and
// whether there is one.
func present(t *testing.T, r *metrics.Registry, family string) (float64, bool) {
	t.Helper()
	got := samples(t, r)
	ns := names(got, family)
	if len(ns) > 1 {
		t.Fatalf("%d %s series, want at most 1: %v", len(ns), family, ns)
	}
	if len(ns) == 0 {
		return 0, false
	}
	return got[ns[0]], true
}

func TestRetirement(t *testing.T) {
	const idle = time.Minute
	tg := metrics.Target{Direction: "outbound", Authority: "web:80", Addr: netip.MustParseAddrPort("10.0.0.1:80")}
	type step struct {
		advance time.Duration
		do      func(r *metrics.Registry, h *metrics.HTTPSeries, tcp *metrics.TCPSeries)
		family  string
		want    float64 // with exposed
		exposed bool
	}
	request := func(_ *metrics.Registry, h *metrics.HTTPSeries, _ *metrics.TCPSeries) { h.Request() }
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"kept just before the timeout", []step{
			{0, request, "request_total", 1, true},
			{idle - time.Nanosecond, nil, "request_total", 1, true},
		}},
		{"retired at the timeout", []step{
			{0, request, "request_total", 1, true},
			{idle, nil, "request_total", 0, false},
		}},
		{"a change is exposed once even after a long silence", []step{
			{0, nil, "request_total", 0, true},
			{time.Hour, request, "request_total", 1, true},
			{0, nil, "request_total", 1, true},
			{idle, nil, "request_total", 0, false},
		}},
		{"each touch restarts the timeout", []step{
			{0, request, "request_total", 1, true},
			{idle / 2, request, "request_total", 2, true},
			{idle / 2, nil, "request_total", 2, true},
			{idle / 2, nil, "request_total", 0, false},
		}},
		{"a retired handle comes back with its counts", []step{
			{0, request, "request_total", 1, true},
			{idle, nil, "request_total", 0, false},
			{time.Hour, request, "request_total", 2, true},
		}},
		{"a response touches too", []step{
			{0, request, "request_total", 1, true},
			{idle, func(_ *metrics.Registry, h *metrics.HTTPSeries, _ *metrics.TCPSeries) {
				h.Response(200, -1, "", time.Millisecond)
			}, "response_total", 1, true},
		}},
		{"getting the target again revives the same series", []step{
			{0, request, "request_total", 1, true},
			{idle, nil, "request_total", 0, false},
			{0, func(r *metrics.Registry, _ *metrics.HTTPSeries, _ *metrics.TCPSeries) {
				r.HTTP(tg).Request()
			}, "request_total", 2, true},
		}},
		{"an open connection is never retired", []step{
			{0, func(_ *metrics.Registry, _ *metrics.HTTPSeries, s *metrics.TCPSeries) { s.Open() }, "tcp_open_connections", 1, true},
			{10 * idle, nil, "tcp_open_connections", 1, true},
			{0, func(_ *metrics.Registry, _ *metrics.HTTPSeries, s *metrics.TCPSeries) { s.Close("", time.Second) }, "tcp_open_connections", 0, true},
			{idle - 1, nil, "tcp_open_total", 1, true},
			{1, nil, "tcp_open_total", 0, false},
		}},
		{"bytes on a closed connection's series revive it", []step{
			{0, func(_ *metrics.Registry, _ *metrics.HTTPSeries, s *metrics.TCPSeries) { s.Open(); s.Close("", 0) }, "tcp_open_total", 1, true},
			{idle, nil, "tcp_open_total", 0, false},
			{0, func(_ *metrics.Registry, _ *metrics.HTTPSeries, s *metrics.TCPSeries) { s.Read(7) }, "tcp_read_bytes_total", 7, true},
		}},
		{"http errors retire", []step{
			{0, func(r *metrics.Registry, _ *metrics.HTTPSeries, _ *metrics.TCPSeries) {
				r.HTTPError("inbound", "malformed_request")
			}, "inbound_http_errors_total", 1, true},
			{idle, nil, "inbound_http_errors_total", 0, false},
			{0, func(r *metrics.Registry, _ *metrics.HTTPSeries, _ *metrics.TCPSeries) {
				r.HTTPError("inbound", "malformed_request")
			}, "inbound_http_errors_total", 1, true},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := newClock()
			r := metrics.New(metrics.Options{IdleTimeout: idle, Now: clk.Now})
			h, tcp := r.HTTP(tg), r.TCP(tg, "src")
			for i, s := range c.steps {
				clk.Advance(s.advance)
				if s.do != nil {
					s.do(r, h, tcp)
				}
				v, ok := present(t, r, s.family)
				if ok != s.exposed || v != s.want {
					t.Fatalf("step %d: %s exposed=%v value=%v, want exposed=%v value=%v", i, s.family, ok, v, s.exposed, s.want)
				}
			}
		})
	}
}

// TestDefaultIdleTimeout scrapes every 10 s, as Prometheus does, and
// checks that a series touched once leaves the exposition 10 minutes after.
func TestDefaultIdleTimeout(t *testing.T) {
	if metrics.DefaultIdleTimeout != 10*time.Minute {
		t.Errorf("DefaultIdleTimeout = %v, want Linkerd's 10m", metrics.DefaultIdleTimeout)
	}
	clk := newClock()
	r := metrics.New(metrics.Options{Now: clk.Now})
	start := clk.Now()
	r.HTTP(metrics.Target{Direction: "inbound"}).Request()
	for {
		if _, ok := present(t, r, "request_total"); !ok {
			break
		}
		clk.Advance(10 * time.Second)
	}
	if gone := clk.Now().Sub(start); gone != 10*time.Minute {
		t.Errorf("series retired %v after its last touch, want 10m", gone)
	}
}

// TestConcurrentRetirement records from many goroutines while a scraper
// keeps moving the clock past the idle timeout, so series are retired and
// revived under the recorders' feet. As long as handles are held no count
// may be lost, a target never gets a second series, no series is exposed
// twice, and every series touched last is exposed.
func TestConcurrentRetirement(t *testing.T) {
	const (
		workers = 8
		rounds  = 2000
		idle    = time.Minute
	)
	clk := newClock()
	r := metrics.New(metrics.Options{IdleTimeout: idle, Now: clk.Now})
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)

	stop := make(chan struct{})
	scraped := make(chan error, 1)
	go func() {
		var err error
		for {
			select {
			case <-stop:
				scraped <- err
				return
			default:
			}
			clk.Advance(idle)
			if _, e := reg.Gather(); e != nil && err == nil {
				err = e
			}
		}
	}()
	// Workers share HTTP series two by two, and the TCP series (which
	// ignores the authority) all together. The handles are held throughout,
	// as the proxy holds them.
	var (
		targets [2]metrics.Target
		https   [2]*metrics.HTTPSeries
		tcps    [2]*metrics.TCPSeries
	)
	for i := range 2 {
		targets[i] = metrics.Target{Direction: "inbound", Authority: fmt.Sprintf("svc-%d", i)}
		https[i], tcps[i] = r.HTTP(targets[i]), r.TCP(targets[i], "src")
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			tg, h, s := targets[w%2], https[w%2], tcps[w%2]
			for i := range rounds {
				if r.HTTP(tg) != h || r.TCP(tg, "src") != s {
					t.Error("a target got a second series while its handle was held")
					return
				}
				h.Request()
				h.Response(200+i%2*300, -1, "", time.Millisecond)
				s.Open()
				s.Read(1)
				s.Wrote(2)
				s.Close("", time.Millisecond)
				r.HTTPError("inbound", "malformed_request")
				if i%16 == 0 {
					runtime.Gosched() // let the scraper retire series
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-scraped; err != nil {
		t.Fatalf("gather during recording: %v", err)
	}
	// One last touch of each series, with the clock still, exposes them all.
	for i := range 2 {
		https[i].Request()
		tcps[i].Read(0)
	}
	got := samples(t, r)
	per := float64(workers / 2 * rounds)
	for i := range 2 {
		a := fmt.Sprintf("svc-%d", i)
		for k, want := range map[string]float64{
			series("request_total", "direction", "inbound", "authority", a, "tls", "disabled"):                                                     per + 1,
			series("response_total", "direction", "inbound", "authority", a, "tls", "disabled", "status_code", "200", "classification", "success"): per / 2,
			series("response_total", "direction", "inbound", "authority", a, "tls", "disabled", "status_code", "500", "classification", "failure"): per / 2,
			series("tcp_open_total", "direction", "inbound", "peer", "src", "tls", "disabled"):                                                     2 * per,
			series("tcp_open_connections", "direction", "inbound", "peer", "src", "tls", "disabled"):                                               0,
			series("tcp_write_bytes_total", "direction", "inbound", "peer", "src", "tls", "disabled"):                                              4 * per,
		} {
			if v, ok := got[k]; !ok || v != want {
				t.Errorf("%s = %v (exposed %v), want %v", k, v, ok, want)
			}
		}
	}
}
