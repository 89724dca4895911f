package demoapp

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// targetServer is a test target for the load generator: it counts requests
// by path and echoes WebSocket messages after a greeting.
type targetServer struct {
	mu    sync.Mutex
	paths map[string]int
}

func newTargetServer() *targetServer { return &targetServer{paths: map[string]int{}} }

func (s *targetServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/ws" {
		var up websocket.Upgrader
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		if c.WriteMessage(websocket.TextMessage, []byte("welcome")) != nil {
			return
		}
		for {
			typ, data, err := c.ReadMessage()
			if err != nil || c.WriteMessage(typ, data) != nil {
				return
			}
		}
	}
	s.mu.Lock()
	s.paths[r.URL.Path]++
	s.mu.Unlock()
}

// count returns how many requests for path the server received.
func (s *targetServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paths[path]
}

// total returns how many HTTP requests the server received.
func (s *targetServer) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.paths {
		n += c
	}
	return n
}

// runLoadgen runs a load generator for cfg until the test ends (or the
// returned stop is called) and checks that it returns nil then.
func runLoadgen(t *testing.T, cfg LoadgenConfig) (*Loadgen, func()) {
	t.Helper()
	g, err := NewLoadgen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	stopped := false
	stop := func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("loadgen returned %v, want nil", err)
			}
		case <-time.After(hangGuard):
			t.Errorf("loadgen still running %v after its context ended", hangGuard)
		}
	}
	t.Cleanup(stop)
	return g, stop
}

func TestTickInterval(t *testing.T) {
	tests := []struct {
		rps  float64
		want time.Duration
	}{
		{1, time.Second},
		{10, 100 * time.Millisecond},
		{20, 50 * time.Millisecond},
		{0.5, 2 * time.Second},
		{1e12, 1},
	}
	for _, tt := range tests {
		if got := tickInterval(tt.rps); got != tt.want {
			t.Errorf("tickInterval(%v) = %v, want %v", tt.rps, got, tt.want)
		}
	}
}

func TestLoadgenOneRequestPerTick(t *testing.T) {
	srv := newTargetServer()
	ts := httptest.NewServer(srv)
	defer ts.Close()
	tick := make(chan time.Time)
	g, stop := runLoadgen(t, LoadgenConfig{Target: ts.URL, RPS: 1, Concurrency: 2, Tick: tick})

	const ticks = 20
	for range ticks {
		select {
		case tick <- time.Now():
		case <-time.After(hangGuard):
			t.Fatal("loadgen does not take ticks")
		}
	}
	waitFor(t, "an answered request per tick", func() bool {
		return srv.total() >= ticks && g.Stats().Status[http.StatusOK] >= ticks
	})
	stop()
	if got, want := srv.count("/api/books"), ticks/2; got != want {
		t.Errorf("target got %d GET /api/books, want %d", got, want)
	}
	if got, want := srv.count("/"), ticks/2; got != want {
		t.Errorf("target got %d GET /, want %d", got, want)
	}
	st := g.Stats()
	if st.Requests != ticks || st.Status[http.StatusOK] != ticks || st.Errors != 0 || st.Skipped != 0 {
		t.Errorf("stats = %+v, want %d requests, all 200, no errors, none skipped", st, ticks)
	}
	if st.Paths["/api/books"] != ticks/2 || st.Paths["/"] != ticks/2 {
		t.Errorf("stats paths = %v, want %d each", st.Paths, ticks/2)
	}
}

func TestLoadgenRate(t *testing.T) {
	srv := newTargetServer()
	ts := httptest.NewServer(srv)
	defer ts.Close()
	const rps = 200
	start := time.Now()
	g, stop := runLoadgen(t, LoadgenConfig{Target: ts.URL, RPS: rps, Concurrency: 4})
	waitFor(t, "40 requests", func() bool { return srv.total() >= 40 })
	stop()
	elapsed := time.Since(start)
	// The ticker can only be late, so the count is bounded by the rate
	// (plus one tick the ticker may hold).
	if n, most := srv.total(), int(rps*elapsed.Seconds())+2; n > most {
		t.Errorf("target got %d requests in %v, more than %d at %d rps", n, elapsed, most, rps)
	}
	// Stopping cancels the requests in flight (at most Concurrency): sent,
	// perhaps received, never answered.
	st, n := g.Stats(), uint64(srv.total())
	if ok := st.Status[http.StatusOK]; ok > n || n > st.Requests || st.Requests-ok > 4 || st.Errors != 0 {
		t.Errorf("stats = %+v, target counted %d requests", st, n)
	}
}

func TestLoadgenSurvivesRefusedTarget(t *testing.T) {
	addr := closedAddr(t)
	g, _ := runLoadgen(t, LoadgenConfig{
		Target: "http://" + addr, RPS: 200, Concurrency: 2, WSConns: 2,
		WSSendInterval: 10 * time.Millisecond,
		BackoffMin:     5 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
	})
	waitFor(t, "failed requests and WebSocket dials", func() bool {
		st := g.Stats()
		return st.Errors >= 5 && st.WSFailures >= 4 && st.Skipped > 0
	})
	if st := g.Stats(); len(st.Status) != 0 || st.WSConnects != 0 || st.LastError == "" {
		t.Fatalf("stats = %+v, want no answers and an error", st)
	}

	// The target appears: the load generator recovers on its own.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s again: %v", addr, err)
	}
	srv := newTargetServer()
	ts := httptest.NewUnstartedServer(srv)
	ts.Listener = l
	ts.Start()
	defer ts.Close()
	waitFor(t, "answered requests and WebSocket messages", func() bool {
		st := g.Stats()
		return st.Status[http.StatusOK] >= 10 && st.WSOpen == 2 && st.WSReceived >= 4 && st.WSSent >= 2
	})
}

func TestNewLoadgenValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  LoadgenConfig
		ok   bool
	}{
		{"valid", LoadgenConfig{Target: "http://web:8080", RPS: 10}, true},
		{"no scheme", LoadgenConfig{Target: "web:8080", RPS: 10}, false},
		{"no host", LoadgenConfig{Target: "http://", RPS: 10}, false},
		{"zero rps", LoadgenConfig{Target: "http://web:8080"}, false},
		{"negative concurrency", LoadgenConfig{Target: "http://web:8080", RPS: 1, Concurrency: -1}, false},
	}
	for _, tt := range tests {
		if _, err := NewLoadgen(tt.cfg); (err == nil) != tt.ok {
			t.Errorf("%s: NewLoadgen() = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

// TestDemoGraph runs every role in-process, wired as in the cluster, and
// checks that the load generator's traffic reaches every service: its
// requests are answered (GET / always, GET /api/books from books and
// authors, or 502 when authors fails), and its WebSocket connection gets
// ticker's ticks and echoes through web.
func TestDemoGraph(t *testing.T) {
	b, _ := startBackends(t, 0.5)
	base := startWeb(t, b)
	g, _ := runLoadgen(t, LoadgenConfig{
		Target: base, RPS: 200, Concurrency: 4, WSConns: 1,
		WSSendInterval: 10 * time.Millisecond, Report: 50 * time.Millisecond,
	})
	waitFor(t, "answers of both kinds and WebSocket messages", func() bool {
		st := g.Stats()
		return st.Status[http.StatusOK] >= 20 && st.Status[http.StatusBadGateway] >= 3 &&
			st.WSReceived >= 10 && st.WSSent >= 3
	})
	st := g.Stats()
	for code := range st.Status {
		if code != http.StatusOK && code != http.StatusBadGateway {
			t.Errorf("stats = %+v: status %d, want only 200 and 502", st, code)
		}
	}
	if st.Errors != 0 || st.WSFailures != 0 {
		t.Errorf("stats = %+v, want no errors", st)
	}
}

// TestLoadgenWSLifetime: with a lifetime, each WebSocket session ends
// normally and a new one starts, without counting failures.
func TestLoadgenWSLifetime(t *testing.T) {
	srv := httptest.NewServer(newTargetServer())
	t.Cleanup(srv.Close)
	g, _ := runLoadgen(t, LoadgenConfig{
		Target: srv.URL, RPS: 1, WSConns: 1,
		WSSendInterval: 5 * time.Millisecond, WSLifetime: 30 * time.Millisecond,
	})
	waitFor(t, "three WebSocket sessions", func() bool { return g.Stats().WSConnects >= 3 })
	if st := g.Stats(); st.WSFailures != 0 || st.WSOpen > 1 {
		t.Errorf("stats = %+v: want no WebSocket failure and at most one open", st)
	}
}
