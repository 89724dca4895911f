package metrics

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestGhostsForgotten checks that a retired series is kept reachable only
// through its handles: once nobody holds one, the Registry forgets it (no
// memory grows with targets that come and go), and the same target later
// starts a fresh series.
func TestGhostsForgotten(t *testing.T) {
	now := time.Unix(1000, 0)
	r := New(Options{IdleTimeout: time.Minute, Now: func() time.Time { return now }})
	collect := func() int {
		ch := make(chan prometheus.Metric, 1024)
		r.Collect(ch)
		close(ch)
		return len(ch)
	}
	tg := Target{Direction: "outbound", Authority: "gone:80"}
	held := r.HTTP(tg)
	held.Request()
	func() { r.HTTP(Target{Direction: "outbound", Authority: "dropped:80"}).Request() }()
	if n := collect(); n != 2 {
		t.Fatalf("collected %d metrics, want 2 request_total", n)
	}
	now = now.Add(time.Minute)
	if n := collect(); n != 0 {
		t.Fatalf("collected %d metrics after the idle timeout, want 0", n)
	}
	ghosts := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.http.ghosts)
	}
	if g := ghosts(); g != 2 {
		t.Fatalf("%d ghosts right after retirement, want 2", g)
	}
	runtime.GC()
	collect()
	if g := ghosts(); g != 1 {
		t.Fatalf("%d ghosts after GC, want 1 (the held handle's)", g)
	}
	if again := r.HTTP(Target{Direction: "outbound", Authority: "dropped:80"}); again.requests.Load() != 0 {
		t.Errorf("a forgotten target came back with %d requests, want a fresh series", again.requests.Load())
	}
	if r.HTTP(tg) != held || held.requests.Load() != 1 {
		t.Error("the held handle's target did not get its series back")
	}
	runtime.KeepAlive(held)
}
