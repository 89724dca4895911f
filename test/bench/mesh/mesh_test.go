package mesh

import (
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

func testConfig() Config {
	return Config{Rounds: 3, HTTPRates: []int{100, 1000}, Conns: 8, MaxConns: []int{1, 64}, GRPCRate: 1000, NewConnRate: 500,
		BulkBytes: 64 << 20, Duration: 4 * time.Second, MaxDuration: 2 * time.Second, Warmup: 500 * time.Millisecond}
}

func TestValidate(t *testing.T) {
	http := Workload{Key: "http-1000", Kind: FixedRate, Proto: "http"}
	bulk := Workload{Key: "bulk", Kind: Bulk, Proto: "tcp", Bytes: 1 << 20}
	tests := []struct {
		name    string
		w       Workload
		res     benchkit.LoadResult
		wantErr string
	}{
		{"clean", http, benchkit.LoadResult{Requests: 4000}, ""},
		{"errors at the threshold", http, benchkit.LoadResult{Requests: 9990, Errors: 10}, ""},
		{"errors above it", http, benchkit.LoadResult{Requests: 9989, Errors: 11, FirstError: "reset"}, "11 of 10000 requests failed"},
		{"nothing served", http, benchkit.LoadResult{Errors: 3, FirstError: "refused"}, "no request was served"},
		{"nothing at all", http, benchkit.LoadResult{}, "no request was served"},
		{"bulk complete", bulk, benchkit.LoadResult{Requests: 1, Bytes: 1 << 20, MBps: 900}, ""},
		{"bulk short", bulk, benchkit.LoadResult{Requests: 1, Bytes: 1000, MBps: 900}, "want 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.w, tt.res)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Validate = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestWorkloadsAndArgs(t *testing.T) {
	cfg := testConfig()
	var keys []string
	for _, w := range cfg.Workloads() {
		keys = append(keys, w.Key)
	}
	want := []string{"http-100", "http-1000", "grpc-1000", "newconn-500", "max-1", "max-64", "bulk"}
	if !slices.Equal(keys, want) {
		t.Fatalf("workloads %v, want %v", keys, want)
	}
	ws := cfg.Workloads()
	tests := []struct {
		w    Workload
		want string
	}{
		{ws[1], "--rate 1000 --conns 8 --warmup 500ms --duration 4s"},
		{ws[3], "--rate 500 --conns 8 --warmup 500ms --duration 4s --new-conn"},
		{ws[5], "--max --conns 64 --warmup 500ms --duration 2s"},
		{ws[6], "--bytes 67108864 --conns 1"},
	}
	for _, tt := range tests {
		if got := strings.Join(cfg.Args(tt.w), " "); got != tt.want {
			t.Errorf("%s: args %q, want %q", tt.w.Key, got, tt.want)
		}
	}
	if s := cfg.Measured(ws[1], benchkit.LoadResult{Seconds: 4}); s != 4/4.5 {
		t.Errorf("measured share %v, want 4/4.5", s)
	}
}

// fakeCase makes a case whose every run has latency lat µs per
// percentile step, rps requests per second and cpu of proxy time per run.
func fakeCase(cfg Config, name string, lat []float64, rps float64, cpu time.Duration) *CaseResult {
	c := &CaseResult{Name: name, Runs: map[string][]Run{}, Counters: map[string]uint64{}}
	for _, w := range cfg.Workloads() {
		for r := range cfg.Rounds {
			jitter := 1 + 0.01*float64(r)
			res := benchkit.LoadResult{Requests: 4000, Seconds: 4, RPS: rps * jitter,
				P50Ns: int64(lat[0] * 1e3 * jitter), P90Ns: int64(lat[1] * 1e3 * jitter), P99Ns: int64(lat[2] * 1e3 * jitter), P999Ns: int64(lat[3] * 1e3 * jitter)}
			if w.Kind == Bulk {
				res.Bytes, res.MBps = w.Bytes, rps/10
			}
			c.Runs[w.Key] = append(c.Runs[w.Key], Run{Res: res, ClientCPU: cpu, ServerCPU: cpu, Pods: 3 * cpu, ClientRSS: 20000, ServerRSS: 21000})
		}
	}
	return c
}

func fakeCases(cfg Config, skP50 float64, skRPS float64) []*CaseResult {
	return []*CaseResult{
		fakeCase(cfg, CaseDirect, []float64{100, 150, 200, 400}, 20000, 0),
		fakeCase(cfg, CaseIPTables, []float64{300, 400, 600, 900}, 10000, 400*time.Millisecond),
		fakeCase(cfg, CaseEBPF, []float64{290, 390, 590, 890}, 10500, 390*time.Millisecond),
		fakeCase(cfg, CaseSKMsg, []float64{skP50, 380, 580, 880}, skRPS, 380*time.Millisecond),
		fakeCase(cfg, CaseMTLS, []float64{skP50 + 40, 430, 640, 950}, skRPS*0.8, 480*time.Millisecond),
		fakeCase(cfg, CaseNginx, []float64{250, 350, 700, 1000}, 15000, 200*time.Millisecond),
	}
}

func TestVerdicts(t *testing.T) {
	cfg := testConfig()
	tests := []struct {
		name            string
		skP50, skRPS    float64
		wantMet, wantNo int
	}{
		// Targets: added p50 against iptables at 2 rates, maximum req/s
		// against iptables at 2 concurrencies, added p99 against nginx on
		// the 4 fixed-rate workloads. iptables adds 200 µs p50: 150 added
		// is 25 % less; 12000 req/s is 20 % more; p99 added 380 vs nginx's
		// 500.
		{"met", 250, 12000, 2 + 2 + 4, 0},
		// 180 added is 10 % less; 10500 req/s is 5 % more.
		{"missed", 280, 10500, 4, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vs, err := Verdicts(cfg, fakeCases(cfg, tt.skP50, tt.skRPS))
			if err != nil {
				t.Fatal(err)
			}
			met, no := 0, 0
			for _, v := range vs {
				if !v.Targeted {
					continue
				}
				if v.Met() {
					met++
				} else {
					no++
				}
			}
			if met != tt.wantMet || no != tt.wantNo {
				t.Errorf("%d targets met and %d missed, want %d and %d: %+v", met, no, tt.wantMet, tt.wantNo, vs)
			}
		})
	}
	vs, _ := Verdicts(cfg, fakeCases(cfg, 250, 12000))
	first := vs[0]
	if first.Against != CaseIPTables || first.Ours != 151.5 || first.Theirs != 202 || first.Better != 0.25 || !first.Met() {
		t.Errorf("first verdict %+v, want added p50 151.5 against iptables' 202 (the rounds' median), 25 %% better, met", first)
	}
	if _, err := Verdicts(cfg, fakeCases(cfg, 250, 12000)[:3]); err == nil {
		t.Error("verdicts without nginx and eBPF+sk_msg: no error")
	}
}

func TestReport(t *testing.T) {
	cfg := testConfig()
	r := &Report{Env: Env{When: "now", Machine: "m", Versions: "v", Command: "make bench", ClientCPU: "0", ServerCPU: "1"},
		Config: cfg, Cases: fakeCases(cfg, 280, 10500), Profile: "PROFILE", Evidence: "EVIDENCE", ChartDir: "benchmarks",
		Handshakes: &Handshakes{Runs: []HandshakeRun{
			{Clients: 1, Handshakes: 2000, Wall: 2 * time.Second, CPU: 1600 * time.Millisecond},
			{Clients: 4, Handshakes: 5000, Wall: 2 * time.Second, CPU: 3500 * time.Millisecond},
		}}}
	md := r.Markdown()
	for _, s := range []string{
		"# Mesh benchmark", "Reproduce: `make bench`", "### Targets", "**no**", "| yes |",
		"## HTTP/1.1 keep-alive at 1000 req/s", "## gRPC unary at 1000 req/s", "## HTTP/1.1, a new TCP connection per request, at 500 req/s",
		"## HTTP/1.1 keep-alive maximum throughput, 64 connections", "## Bulk TCP, 64 MiB over one connection",
		"![HTTP/1.1 keep-alive maximum throughput](benchmarks/throughput-http.png)",
		// iptables at 1000 req/s: p50 300 (303, 306 in later rounds), added 200 (…), CPU 0.4 s per 4000 = 0.100 s/1000.
		"| sluice iptables | 303 (300 – 306) |", "| 0.100 (0.100 – 0.100) |",
		"## Where the time goes\n\nPROFILE",
		// mTLS: p50 +40 µs every round; CPU 0.96 s per 4000 requests (240 µs) against 0.76 s (190 µs).
		"## Cost of mutual TLS", "| HTTP/1.1 keep-alive at 1000 req/s | 40 (40 – 41) |", "| 190.0 (190.0 – 190.0) | 240.0 (240.0 – 240.0) | 50.0 (50.0 – 50.0) |",
		"| 0.80 (0.80 – 0.80) | 190.0 (190.0 – 190.0) | 240.0 (240.0 – 240.0) |",
		// 2000 in 2 s by one client: 1000/s, 1000 µs each, 800 µs CPU: 1250 per core.
		"| 1 | 1000 | 1000 | 800 | 1250 | 0 |", "| 4 | 2500 | 1600 | 700 | 1429 | 0 |", "EVIDENCE", "## How it is measured",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q", s)
		}
	}
	dir := t.TempDir()
	if err := r.WriteCharts(dir); err != nil {
		t.Fatal(err)
	}
	charts := r.Charts()
	if len(charts) != 6 { // 4 fixed-rate workloads, HTTP and bulk throughput
		t.Errorf("%d charts, want 6", len(charts))
	}
	for _, c := range charts {
		fh, err := os.Open(filepath.Join(dir, c.File))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(fh)
		fh.Close()
		if err != nil || img.Bounds().Dx() < 400 {
			t.Errorf("%s: %v %v", c.File, err, img)
		}
		if len(c.Bars.Series) != len(Cases) {
			t.Errorf("%s: %d series, want one per case", c.File, len(c.Bars.Series))
		}
	}
}
