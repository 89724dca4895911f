package proxybehavior

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/proxytest"
)

// Endpoints are added and removed while a client sends a steady stream of
// requests: each change reaches the client's proxy (traffic moves to
// exactly the announced endpoints) and no request fails, also not those in
// flight to an endpoint that is being removed (its application still
// runs), and not during a burst of a change every 10 ms.
func TestDiscoveryChurn(t *testing.T) {
	eachMode(t, bothModes, func(t *testing.T, m *proxytest.Mesh) {
		s := newService(t, m, nil, serverSpec{name: "a"}, serverSpec{name: "b"}, serverSpec{name: "c"})
		l := s.loop(t, "--concurrency", "2", "--interval", "2ms")
		steps := [][]string{
			{"a", "b", "c"},
			{"a", "b"},
			{"b"},
			{"b", "c"},
			{"a", "c"},
			{"c"},
			{"a", "b", "c"},
		}
		for i, eps := range steps {
			if i > 0 {
				s.announce(eps...)
			}
			l.waitFor(t, "traffic to exactly "+strings.Join(eps, ","), time.Minute, func(rs []result) bool {
				return settled(rs, 40, eps...)
			})
		}
		// A burst: 200 changes, one every 10 ms, through every non-empty
		// subset, then back to one endpoint.
		subsets := [][]string{{"a"}, {"a", "b"}, {"b"}, {"b", "c"}, {"c"}, {"a", "c"}, {"a", "b", "c"}}
		for i := range 200 {
			s.announce(subsets[i*3%len(subsets)]...)
			time.Sleep(10 * time.Millisecond)
		}
		s.announce("b")
		l.waitFor(t, "traffic to exactly b after the burst", time.Minute, func(rs []result) bool { return settled(rs, 40, "b") })
		all := l.stop(t)
		if bad := failures(all); len(bad) > 0 {
			t.Fatalf("%d of %d requests failed during the changes, first: %v", len(bad), len(all), bad[:min(len(bad), 5)])
		}
		t.Logf("%d requests across %d changes, none failed: %v", len(all), len(steps)-1+201, countApps(all))
	})
}

// The destination service dies: the client's proxy keeps sending to the
// last endpoints it knew, and no request fails, neither while the service
// is down nor when it comes back. A change made while it was down is seen
// once it is back.
func TestDiscoveryKilled(t *testing.T) {
	eachMode(t, bothModes, func(t *testing.T, m *proxytest.Mesh) {
		s := newService(t, m, nil, serverSpec{name: "a"}, serverSpec{name: "b"}, serverSpec{name: "c"})
		s.announce("a", "b")
		l := s.loop(t, "--concurrency", "2", "--interval", "2ms")
		l.waitFor(t, "traffic to a and b", time.Minute, func(rs []result) bool { return settled(rs, 40, "a", "b") })

		m.Dest.Stop()
		if n := m.Dest.Streams(s.path); n != 0 {
			t.Fatalf("%d streams still open after the destination server stopped", n)
		}
		// The table changes while nobody can hear it.
		s.announce("b", "c")
		from := l.Len()
		down := l.waitCount(t, from, 500)
		if bad := failures(down); len(bad) > 0 {
			t.Fatalf("%d of %d requests failed while discovery was down, first: %v", len(bad), len(down), bad[0])
		}
		if got := countApps(down); got["a"] == 0 || got["b"] == 0 || got["c"] != 0 {
			t.Errorf("while discovery was down, requests went to %v; want the last known endpoints a and b only", got)
		}

		if err := m.Dest.Restart(); err != nil {
			t.Fatalf("restart the destination server: %v", err)
		}
		// The proxy reconnects (its backoff is at most 10 s) and gets the
		// current table.
		l.waitFor(t, "traffic to b and c after discovery came back", time.Minute, func(rs []result) bool {
			return settled(rs, 40, "b", "c")
		})
		all := l.stop(t)
		if bad := failures(all); len(bad) > 0 {
			t.Fatalf("%d of %d requests failed, first: %v", len(bad), len(all), bad[:min(len(bad), 5)])
		}
		if m.Dest.Streams(s.path) == 0 {
			t.Errorf("no Get stream for %s after the restart", s.path)
		}
		t.Logf("%d requests, none failed: %v", len(all), countApps(all))
	})
}
