package mesh

import (
	"flag"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

var (
	report            = flag.Bool("report", false, "write the report to docs/benchmarks.md and its charts to docs/benchmarks/")
	rounds            = flag.Int("rounds", 5, "rounds; each runs every workload against every case, rotating the order of the cases")
	duration          = flag.Duration("duration", 4*time.Second, "measured time of each fixed-rate run")
	maxDuration       = flag.Duration("max-duration", 2*time.Second, "measured time of each maximum-throughput run")
	warmup            = flag.Duration("warmup", 500*time.Millisecond, "unmeasured load before each run")
	bulkMiB           = flag.Int64("bulk-mib", 1024, "MiB of the bulk TCP run")
	profile           = flag.Bool("profile", true, "after the rounds, profile the proxies (perf) and the BPF programs (bpf_stats)")
	only              = flag.String("cases", strings.Join(Cases, ","), "cases to run (the no-mesh baseline always runs)")
	handshakeDuration = flag.Duration("handshake-duration", 3*time.Second, "time of each mutual-TLS handshake loop")
)

// handshakeClients is the parallel clients of the second handshake loop.
const handshakeClients = 4

const (
	reportFile   = "../../../docs/benchmarks.md"
	reproduceCmd = "make bench   # = go test -count=1 -timeout 45m -run '^$' -bench Mesh -benchtime 1x ./test/bench/mesh/ -args -report"
)

// benchConfig is the configuration of `make bench`.
func benchConfig() Config {
	return Config{Rounds: *rounds, HTTPRates: []int{100, 1000, 5000}, Conns: 8, MaxConns: []int{1, 16, 64},
		GRPCRate: 1000, NewConnRate: 500, BulkBytes: *bulkMiB << 20,
		Duration: *duration, MaxDuration: *maxDuration, Warmup: *warmup}
}

// BenchmarkMesh is `make bench`: every case, every workload, several
// rounds, then the report.
func BenchmarkMesh(b *testing.B) {
	var names []string
	for n := range strings.SplitSeq(*only, ",") {
		names = append(names, strings.TrimSpace(n))
	}
	cfg := benchConfig()
	// Handshakes first, while this process runs nothing else.
	hs := measureHandshakes(b, *handshakeDuration, handshakeClients)
	f := newFixture(b, cfg, names)
	load0 := benchkit.LoadAvg()
	start := time.Now()
	b.ResetTimer()
	f.runRounds()
	b.StopTimer()
	load1 := benchkit.LoadAvg()
	if b.Failed() {
		b.FailNow()
	}
	r := &Report{Env: describe(start, load0, load1), Config: cfg, Cases: f.results(), Evidence: f.evidence(), Handshakes: &hs}
	if *profile {
		r.Profile = f.profile()
	}
	md := r.Markdown()
	fmt.Print("\n" + md + "\n")
	for _, c := range r.Cases {
		b.ReportMetric(benchkit.Over(c.Runs["http-1000"], P50).Med, strings.ReplaceAll(c.Name, " ", "_")+"-http1000-p50-µs")
		b.ReportMetric(benchkit.Over(c.Runs["max-64"], RPS).Med, strings.ReplaceAll(c.Name, " ", "_")+"-max64-req/s")
	}
	for _, h := range hs.Runs {
		b.ReportMetric(h.PerSecond(), fmt.Sprintf("mtls-handshakes/s-%dclients", h.Clients))
	}
	if b.Failed() {
		b.Log("not writing the report: the run failed")
		return
	}
	if *report {
		if err := writeReport(r, reportFile); err != nil {
			b.Fatal(err)
		}
		b.Logf("wrote %s after %v", reportFile, time.Since(start).Round(time.Second))
	}
}

// TestMeshSmoke runs every case and workload once, briefly: a case that
// serves nothing, fails requests or takes another path than it names fails
// here, in `make test`, not only in `make bench`. It checks no figure.
func TestMeshSmoke(t *testing.T) {
	cfg := Config{Rounds: 1, HTTPRates: []int{200}, Conns: 4, MaxConns: []int{4}, GRPCRate: 200, NewConnRate: 100,
		BulkBytes: 8 << 20, Duration: 300 * time.Millisecond, MaxDuration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond}
	hs := measureHandshakes(t, 200*time.Millisecond, 2)
	f := newFixture(t, cfg, Cases)
	f.runRounds()
	if t.Failed() {
		t.FailNow()
	}
	ev := f.evidence()
	for _, c := range f.results() {
		for _, w := range cfg.Workloads() {
			if len(c.Runs[w.Key]) != 1 {
				t.Errorf("%s, %s: %d runs recorded, want 1", c.Name, w.Key, len(c.Runs[w.Key]))
			}
		}
		if !strings.Contains(ev, "| "+c.Name+" |") {
			t.Errorf("evidence lacks a row for %s:\n%s", c.Name, ev)
		}
	}
	r := &Report{Env: describe(time.Now(), "", ""), Config: cfg, Cases: f.results(), Evidence: ev, Handshakes: &hs}
	dir := t.TempDir() + "/benchmarks.md"
	if err := writeReport(r, dir); err != nil {
		t.Fatal(err)
	}
}

// describe fills in the report's header.
func describe(start time.Time, load0, load1 string) Env {
	nginxV, _ := exec.Command("nginx", "-v").CombinedOutput()
	return Env{
		When:    start.UTC().Format("2006-01-02 15:04 UTC"),
		Machine: fmt.Sprintf("%s; load average (1, 5, 15 min) %s at the start, %s at the end", benchkit.Host(), load0, load1),
		Versions: fmt.Sprintf("%s %s/%s; %s; sluice-proxy, sluice-agent and loadgen built from commit %s", runtime.Version(), runtime.GOOS, runtime.GOARCH,
			strings.TrimSpace(strings.TrimPrefix(string(nginxV), "nginx version: ")), benchkit.GitHead("proxy", "agent", "bpf", "test/cmd/loadgen", "test/bench")),
		Command:   reproduceCmd,
		ClientCPU: clientCPU(), ServerCPU: serverCPU(),
	}
}
