package admin_test

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/sluice-mesh/sluice/proxy/admin"
	"github.com/sluice-mesh/sluice/proxy/metrics"
)

// fixture is an admin handler with observable hooks.
type fixture struct {
	h        http.Handler
	ready    atomic.Bool
	level    *slog.LevelVar
	shutdown atomic.Int32
}

func newFixture(g prometheus.Gatherer) *fixture {
	f := &fixture{level: new(slog.LevelVar)}
	f.h = admin.Handler(admin.Options{
		Gatherer: g,
		Ready:    f.ready.Load,
		LogLevel: f.level,
		Shutdown: func() { f.shutdown.Add(1) },
	})
	return f
}

func TestHandler(t *testing.T) {
	for _, c := range []struct {
		name      string
		setup     func(f *fixture)
		method    string
		path      string
		body      string
		remote    string // "" = httptest's 192.0.2.1:1234
		code      int
		resp      string
		level     slog.Level // after the request
		shutdowns int32
	}{
		{name: "live", method: "GET", path: "/live", code: 200, resp: "live\n"},
		{name: "not ready", method: "GET", path: "/ready", code: 503, resp: "not ready\n"},
		{name: "ready", setup: func(f *fixture) { f.ready.Store(true) }, method: "GET", path: "/ready", code: 200, resp: "ready\n"},
		{name: "unknown path", method: "GET", path: "/nope", code: 404},
		{name: "root", method: "GET", path: "/", code: 404},
		{name: "metrics subpath", method: "GET", path: "/metrics/x", code: 404},
		{name: "get level", method: "GET", path: "/proxy-log-level", code: 200, resp: "info\n"},
		{name: "get warn level", setup: func(f *fixture) { f.level.Set(slog.LevelWarn) }, method: "GET", path: "/proxy-log-level",
			code: 200, resp: "warn\n", level: slog.LevelWarn},
		{name: "put debug", method: "PUT", path: "/proxy-log-level", body: "debug", code: 200, resp: "debug\n", level: slog.LevelDebug},
		{name: "put any case and newline", method: "PUT", path: "/proxy-log-level", body: "ERROR\n", code: 200, resp: "error\n", level: slog.LevelError},
		{name: "put warn", method: "PUT", path: "/proxy-log-level", body: " Warn ", code: 200, resp: "warn\n", level: slog.LevelWarn},
		{name: "put bad level", setup: func(f *fixture) { f.level.Set(slog.LevelWarn) }, method: "PUT", path: "/proxy-log-level",
			body: "verbose", code: 400, level: slog.LevelWarn},
		{name: "put empty", method: "PUT", path: "/proxy-log-level", body: "", code: 400},
		{name: "put huge", method: "PUT", path: "/proxy-log-level", body: strings.Repeat("x", 1<<20), code: 400},
		{name: "post level", method: "POST", path: "/proxy-log-level", body: "debug", code: 405},
		{name: "shutdown from loopback", method: "POST", path: "/shutdown", remote: "127.0.0.1:5555", code: 202, shutdowns: 1},
		{name: "shutdown from 127.0.0.2", method: "POST", path: "/shutdown", remote: "127.0.0.2:5555", code: 202, shutdowns: 1},
		{name: "shutdown from ipv6 loopback", method: "POST", path: "/shutdown", remote: "[::1]:5555", code: 202, shutdowns: 1},
		{name: "shutdown from mapped loopback", method: "POST", path: "/shutdown", remote: "[::ffff:127.0.0.1]:5555", code: 202, shutdowns: 1},
		{name: "shutdown from pod network", method: "POST", path: "/shutdown", remote: "10.42.0.7:5555", code: 403},
		{name: "shutdown from ipv6", method: "POST", path: "/shutdown", remote: "[fd00::2]:5555", code: 403},
		{name: "shutdown from garbage", method: "POST", path: "/shutdown", remote: "garbage", code: 403},
		{name: "shutdown by GET", method: "GET", path: "/shutdown", remote: "127.0.0.1:5555", code: 405},
		{name: "shutdown by PUT", method: "PUT", path: "/shutdown", remote: "127.0.0.1:5555", code: 405},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(prometheus.NewRegistry())
			if c.setup != nil {
				c.setup(f)
			}
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
			if c.remote != "" {
				req.RemoteAddr = c.remote
			}
			rec := httptest.NewRecorder()
			f.h.ServeHTTP(rec, req)
			if rec.Code != c.code {
				t.Errorf("%s %s: status %d, want %d (body %q)", c.method, c.path, rec.Code, c.code, rec.Body.String())
			}
			if c.resp != "" && rec.Body.String() != c.resp {
				t.Errorf("%s %s: body %q, want %q", c.method, c.path, rec.Body.String(), c.resp)
			}
			if got := f.level.Level(); got != c.level {
				t.Errorf("log level %v after the request, want %v", got, c.level)
			}
			if got := f.shutdown.Load(); got != c.shutdowns {
				t.Errorf("Shutdown called %d times, want %d", got, c.shutdowns)
			}
		})
	}
}

func TestNilHooks(t *testing.T) {
	h := admin.Handler(admin.Options{})
	for _, c := range []struct {
		method, path, body string
		code               int
	}{
		{"GET", "/ready", "", 200},
		{"GET", "/proxy-log-level", "", 200},
		{"PUT", "/proxy-log-level", "debug", 501},
		{"POST", "/shutdown", "", 501},
		{"GET", "/metrics", "", 200},
	} {
		req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
		req.RemoteAddr = "127.0.0.1:1"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code {
			t.Errorf("%s %s with nil hooks: status %d, want %d", c.method, c.path, rec.Code, c.code)
		}
	}
}

// do sends a real request to srv.
func do(t *testing.T, c *http.Client, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read %s %s: %v", method, url, err)
	}
	return res.StatusCode, string(b)
}

// serve serves h on a listener at addr, closed at the end of the test.
func serve(t *testing.T, h http.Handler, addr string) *httptest.Server {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// TestOverTCP drives the handler with real requests over loopback: the
// metrics a scraper reads (the proxy's families next to the Go and process
// collectors), a log level change, and a shutdown from IPv4 and IPv6
// loopback that calls Shutdown once.
func TestOverTCP(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(metrics.Options{})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m)
	s := m.HTTP(metrics.Target{Direction: "inbound", Authority: "web:80", Addr: netip.MustParseAddrPort("10.0.0.1:80")})
	s.Request()
	s.Response(200, -1, "", time.Millisecond)
	f := newFixture(reg)
	c := &http.Client{Timeout: 30 * time.Second} // a hang guard

	v4 := serve(t, f.h, "127.0.0.1:0")
	code, body := do(t, c, "GET", v4.URL+"/metrics", "")
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	for _, name := range []string{"request_total", "response_total", "response_latency_ms", "go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	if code, body := do(t, c, "PUT", v4.URL+"/proxy-log-level", "debug\n"); code != 200 || body != "debug\n" {
		t.Errorf("PUT /proxy-log-level: %d %q", code, body)
	}
	if code, body := do(t, c, "GET", v4.URL+"/proxy-log-level", ""); code != 200 || body != "debug\n" {
		t.Errorf("GET /proxy-log-level after PUT: %d %q, want 200 \"debug\\n\"", code, body)
	}

	if code, _ := do(t, c, "POST", v4.URL+"/shutdown", ""); code != 202 {
		t.Errorf("POST /shutdown over 127.0.0.1: %d, want 202", code)
	}
	v6 := serve(t, f.h, "[::1]:0")
	if code, _ := do(t, c, "POST", v6.URL+"/shutdown", ""); code != 202 {
		t.Errorf("POST /shutdown over [::1]: %d, want 202", code)
	}
	if n := f.shutdown.Load(); n != 1 {
		t.Errorf("Shutdown called %d times after two requests, want once", n)
	}
}

// TestShutdownRefusedOverNetwork sends a real request from one of the
// machine's non-loopback addresses: /shutdown refuses it while the other
// endpoints answer.
func TestShutdownRefusedOverNetwork(t *testing.T) {
	addr := nonLoopback(t)
	f := newFixture(prometheus.NewRegistry())
	srv := serve(t, f.h, netip.AddrPortFrom(addr, 0).String())
	c := &http.Client{Timeout: 30 * time.Second}
	if code, body := do(t, c, "GET", srv.URL+"/live", ""); code != 200 || body != "live\n" {
		t.Errorf("GET /live over %s: %d %q", addr, code, body)
	}
	if code, _ := do(t, c, "POST", srv.URL+"/shutdown", ""); code != 403 {
		t.Errorf("POST /shutdown over %s: %d, want 403", addr, code)
	}
	if n := f.shutdown.Load(); n != 0 {
		t.Errorf("Shutdown called %d times from a non-loopback address", n)
	}
}

// nonLoopback returns a global unicast address of this machine, IPv4 if
// there is one.
func nonLoopback(t *testing.T) netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatalf("list interface addresses: %v", err)
	}
	var v6 netip.Addr
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		switch {
		case err != nil || !p.Addr().IsGlobalUnicast():
		case p.Addr().Is4():
			return p.Addr()
		case !v6.IsValid():
			v6 = p.Addr()
		}
	}
	if !v6.IsValid() {
		t.Fatalf("no non-loopback address on this machine to test /shutdown's refusal: %v", addrs)
	}
	return v6
}
