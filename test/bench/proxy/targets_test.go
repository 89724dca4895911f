package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// fakeRuns makes one run per round with the given p99 latencies (µs), each
// with 1000 requests over 1 s and cpu of proxy time.
func fakeRuns(cpu time.Duration, rssKiB int64, p99us ...int64) []run {
	rs := make([]run, len(p99us))
	for i, v := range p99us {
		rs[i] = run{
			res: benchkit.LoadResult{Requests: 1000, Seconds: 1, RPS: 1000, P50Ns: v * 500, P99Ns: v * 1000, P999Ns: v * 2000},
			cpu: cpu,
			rss: []benchkit.Memory{{RSS: rssKiB, Anon: rssKiB / 2}},
		}
	}
	return rs
}

// Added latency pairs rounds: a round where everything was slow does not
// make a case look better or worse.
func TestAddedPairsRounds(t *testing.T) {
	direct := fakeRuns(0, 0, 100, 1000, 100)
	proxy := fakeRuns(0, 0, 150, 1060, 140)
	got := benchkit.Added(proxy, direct, p99)
	if got != (benchkit.Spread{Med: 50, Lo: 40, Hi: 60}) {
		t.Errorf("added p99 = %+v, want median 50 (40 – 60)", got)
	}
}

func TestTargets(t *testing.T) {
	e := env{rate: 1000, rounds: 3, clientCPU: "0", proxyCPU: "1"}
	mk := func(name string, p99 int64, rssKiB int64, maxCPU time.Duration) *caseResult {
		c := &caseResult{name: name, procs: []string{name}}
		c.runs[fixedHTTP] = fakeRuns(50*time.Millisecond, rssKiB, p99, p99, p99)
		c.runs[fixedGRPC] = fakeRuns(50*time.Millisecond, rssKiB, p99, p99, p99)
		c.runs[maxHTTP] = fakeRuns(maxCPU, rssKiB, 500, 500, 500)
		c.idle, c.hwmFixed, c.hwmEnd = []benchkit.Memory{{RSS: rssKiB, Anon: rssKiB / 2}}, []int64{rssKiB}, []int64{rssKiB}
		return c
	}
	tests := []struct {
		name       string
		sluice     *caseResult
		wantMet    int
		wantInText []string
	}{
		{"all met", mk(caseSluice, 200, 10_000, 20*time.Millisecond), 5, []string{"| 100 | 200 | yes |", "| 10.2 | 10.2 | yes |", "| 50000 | 20000 | yes |"}},
		{"slower, bigger, hungrier", mk(caseSluice, 400, 30_000, 80*time.Millisecond), 1, []string{"| 300 | 200 | **no** |", "| 30.7 | 10.2 | **no** |", "| 12500 | 20000 | **no** |"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			direct := mk(caseDirect, 100, 0, 0)
			direct.procs = nil
			nginx := mk(caseNginx, 300, 10_000, 50*time.Millisecond)
			out := targets(e, []*caseResult{direct, tt.sluice, nginx})
			if got := strings.Count(out, "| yes |"); got != tt.wantMet {
				t.Errorf("%d targets met, want %d:\n%s", got, tt.wantMet, out)
			}
			for _, s := range tt.wantInText {
				if !strings.Contains(out, s) {
					t.Errorf("targets lack %q:\n%s", s, out)
				}
			}
			md := markdown(e, []*caseResult{direct, tt.sluice, nginx}, "NOTES")
			for _, s := range []string{"## Latency at 1000 req/s, HTTP/1.1", "## Latency at 1000 req/s, gRPC", "## Maximum throughput", "## Proxy memory", out, "NOTES"} {
				if !strings.Contains(md, s) {
					t.Errorf("report lacks %q", s)
				}
			}
		})
	}
	if out := targets(e, []*caseResult{mk(caseDirect, 1, 0, 0), mk(caseNginx, 1, 0, 0)}); !strings.Contains(out, "Not evaluated") {
		t.Errorf("targets without sluice-proxy: %s", out)
	}
}

func TestMemCell(t *testing.T) {
	tests := []struct {
		kib  []int64
		want string
	}{
		{[]int64{9766}, "10.0"},
		{[]int64{3906, 6836}, "11.0 (4.0 + 7.0)"},
		{nil, "0.0"},
	}
	for _, tt := range tests {
		if got := memCell(tt.kib); got != tt.want {
			t.Errorf("memCell(%v) = %q, want %q", tt.kib, got, tt.want)
		}
	}
}
