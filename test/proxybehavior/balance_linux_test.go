package proxybehavior

import (
	"fmt"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/proxytest"
)

// Three endpoints behind one service, one of them 50 ms slower than the
// others: after a warm-up, the client's proxy sends it under 10 % of the
// requests (peak-EWMA latency with power of two choices), and every
// request succeeds. The client's metrics count the same split by dst_pod.
func TestBalancingAvoidsSlowEndpoint(t *testing.T) {
	eachMode(t, bothModes, func(t *testing.T, m *proxytest.Mesh) {
		s := newService(t, m, nil,
			serverSpec{name: "fast-a"},
			serverSpec{name: "fast-b"},
			serverSpec{name: "slow", args: []string{"--delay", "50ms"}},
		)
		const warmup, measured = 100, 600
		l := s.loop(t, "--count", fmt.Sprint(warmup+measured))
		all := l.stop(t)
		if len(all) != warmup+measured {
			t.Fatalf("reqloop finished %d requests, want %d", len(all), warmup+measured)
		}
		if bad := failures(all); len(bad) > 0 {
			t.Fatalf("%d of %d requests failed, first: %v", len(bad), len(all), bad[0])
		}
		got := countApps(all[warmup:])
		t.Logf("after %d warm-up requests, %d requests went to %v", warmup, measured, got)
		if got["slow"]*10 >= measured {
			t.Errorf("the slow endpoint answered %d of %d requests, want under 10 %%", got["slow"], measured)
		}
		if got["fast-a"] == 0 || got["fast-b"] == 0 {
			t.Errorf("both fast endpoints should share the load, got %v", got)
		}

		// The client's outbound metrics say the same, per destination pod.
		total := countApps(all)
		s.client.Eventually(t, func(mt proxytest.Metrics) error {
			for pod, n := range total {
				labels := proxytest.Labels{"direction": "outbound", "authority": "web:8080", "dst_pod": pod, "status_code": "200", "classification": "success"}
				if got := mt.Sum("response_total", labels); got != float64(n) {
					return fmt.Errorf("response_total%s = %g, want %d (answers from %s seen by the client)\n%s",
						labels, got, n, pod, mt.Format("response_total", proxytest.Labels{"direction": "outbound"}))
				}
			}
			return nil
		})
	})
}

// One endpoint's application is killed: its proxy answers 502 for the
// requests it still gets, until the client's proxy backs it off after the
// consecutive-failure limit and the other endpoints take the traffic. When
// the application comes back, the endpoint is probed again after its
// backoff and receives requests again.
func TestFailureAccrual(t *testing.T) {
	eachMode(t, bothModes, func(t *testing.T, m *proxytest.Mesh) {
		const limit = 7 // SLUICE_PROXY_FAILURE_ACCRUAL_CONSECUTIVE_FAILURES
		s := newService(t, m, map[string]string{
			"SLUICE_PROXY_FAILURE_ACCRUAL_CONSECUTIVE_FAILURES": fmt.Sprint(limit),
			"SLUICE_PROXY_FAILURE_ACCRUAL_BACKOFF_MIN":          "1s",
			"SLUICE_PROXY_FAILURE_ACCRUAL_BACKOFF_MAX":          "2s",
		}, serverSpec{name: "a"}, serverSpec{name: "b"}, serverSpec{name: "c"})
		// A steady stream, paced so that a backoff of 1-2 s spans many
		// requests: at most one request every 10 ms.
		l := s.loop(t, "--interval", "10ms")
		l.waitFor(t, "answers from every endpoint", time.Minute, func(rs []result) bool { return settled(rs, 30, "a", "b", "c") })
		if rs, _ := l.snapshot(); len(failures(rs)) > 0 {
			t.Fatalf("requests failed while every endpoint was up: %v", failures(rs))
		}

		killApp(t, s.servers["c"])
		down := l.Len()
		// Requests that reach c fail with 502 from its proxy, until c is
		// backed off.
		rs := l.waitFor(t, fmt.Sprintf("%d failed requests", limit), time.Minute, func(rs []result) bool {
			return len(failures(rs[down:])) >= limit
		})
		for _, r := range failures(rs[down:]) {
			if r.Status != 502 || r.ProxyError == "" {
				t.Errorf("a request to the dead endpoint got %v, want a 502 with a sluice-proxy-error header", r)
			}
		}
		// From now on c gets at most a probe per backoff (1-2 s): of the
		// next 300 requests (3 s or more) nearly all succeed, where c
		// would fail a third of them (more, since a fast failure looks
		// cheap) without failure accrual.
		window := l.waitCount(t, len(rs), 300)
		if bad := failures(window); len(bad)*10 > len(window) {
			t.Errorf("after %d failures, %d of the next %d requests still failed (want under 10 %%): %v",
				limit, len(bad), len(window), tail(bad, 5))
		} else {
			t.Logf("after %d failures, %d of the next %d requests failed (probes of the backed-off endpoint)", limit, len(bad), len(window))
		}

		s.servers["c"].App(t, "--http", fmt.Sprintf(":%d", appPort), "--name", "c")
		up := l.Len()
		l.waitFor(t, "answers from the recovered endpoint", time.Minute, func(rs []result) bool {
			return countApps(rs[up:])["c"] >= 3
		})
		// Once c answers again, nothing fails any more.
		from := l.Len()
		if bad := failures(l.waitCount(t, from, 200)); len(bad) > 0 {
			t.Errorf("requests failed after the endpoint recovered: %v", bad)
		}
		all := l.stop(t)

		// The client's metrics count each failure against c.
		failed := len(failures(all))
		s.client.Eventually(t, func(mt proxytest.Metrics) error {
			labels := proxytest.Labels{"direction": "outbound", "dst_pod": "c", "classification": "failure"}
			if got := mt.Sum("response_total", labels); got != float64(failed) {
				return fmt.Errorf("response_total%s = %g, want the %d failures the client saw\n%s",
					labels, got, failed, mt.Format("response_total", proxytest.Labels{"direction": "outbound"}))
			}
			return nil
		})
	})
}
