package mesh

import (
	"fmt"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// The cases, in report order: the baseline first.
const (
	CaseDirect   = "no mesh"
	CaseIPTables = "sluice iptables"
	CaseEBPF     = "sluice eBPF"
	CaseSKMsg    = "sluice eBPF+sk_msg"
	// CaseMTLS is CaseSKMsg with mutual TLS between the two proxies: the
	// cost of mTLS is its difference from CaseSKMsg.
	CaseMTLS  = "sluice eBPF+sk_msg mTLS"
	CaseNginx = "nginx iptables"
)

// Cases lists every case in report order.
var Cases = []string{CaseDirect, CaseIPTables, CaseEBPF, CaseSKMsg, CaseMTLS, CaseNginx}

// Kind is what a workload measures.
type Kind int

const (
	// FixedRate is an open load at a fixed request rate: latency
	// percentiles free of coordinated omission.
	FixedRate Kind = iota
	// MaxRate is a closed loop: the request rate the path sustains.
	MaxRate
	// Bulk is one TCP connection carrying bytes as fast as it can.
	Bulk
)

// Workload is one load the benchmark runs against every case.
type Workload struct {
	// Key names it in tables, charts and file names ("http-1000").
	Key string
	// Title is its heading in the report.
	Title string
	Kind  Kind
	// Proto is the load generator's mode: http, grpc or tcp.
	Proto string
	// Rate is the fixed rate (requests per second), Conns the connections
	// (HTTP/1.1) or concurrent calls (gRPC).
	Rate, Conns int
	// NewConn opens a TCP connection per request.
	NewConn bool
	// Bytes is the payload of a Bulk run.
	Bytes int64
}

// Config sizes a run.
type Config struct {
	Rounds int
	// HTTPRates are the fixed rates of HTTP/1.1 keep-alive; Conns its
	// connections.
	HTTPRates []int
	Conns     int
	// MaxConns are the concurrency levels of the maximum-throughput runs.
	MaxConns []int
	// GRPCRate is the fixed rate of gRPC unary calls; NewConnRate that of
	// HTTP/1.1 requests on a new connection each.
	GRPCRate, NewConnRate int
	// BulkBytes is the payload of the bulk TCP run.
	BulkBytes int64
	// Duration is the measured time of a fixed-rate run, MaxDuration of a
	// closed-loop run; Warmup the unmeasured load before either.
	Duration, MaxDuration, Warmup time.Duration
}

// Workloads returns the workloads of c in the order a round runs them.
func (c Config) Workloads() []Workload {
	var ws []Workload
	for _, r := range c.HTTPRates {
		ws = append(ws, Workload{Key: fmt.Sprintf("http-%d", r), Title: fmt.Sprintf("HTTP/1.1 keep-alive at %d req/s", r),
			Kind: FixedRate, Proto: "http", Rate: r, Conns: c.Conns})
	}
	ws = append(ws, Workload{Key: fmt.Sprintf("grpc-%d", c.GRPCRate), Title: fmt.Sprintf("gRPC unary at %d req/s", c.GRPCRate),
		Kind: FixedRate, Proto: "grpc", Rate: c.GRPCRate, Conns: c.Conns})
	ws = append(ws, Workload{Key: fmt.Sprintf("newconn-%d", c.NewConnRate), Title: fmt.Sprintf("HTTP/1.1, a new TCP connection per request, at %d req/s", c.NewConnRate),
		Kind: FixedRate, Proto: "http", Rate: c.NewConnRate, Conns: c.Conns, NewConn: true})
	for _, n := range c.MaxConns {
		ws = append(ws, Workload{Key: fmt.Sprintf("max-%d", n), Title: fmt.Sprintf("HTTP/1.1 keep-alive maximum throughput, %d connections", n),
			Kind: MaxRate, Proto: "http", Conns: n})
	}
	ws = append(ws, Workload{Key: "bulk", Title: fmt.Sprintf("Bulk TCP, %d MiB over one connection", c.BulkBytes>>20),
		Kind: Bulk, Proto: "tcp", Conns: 1, Bytes: c.BulkBytes})
	return ws
}

// Args are the load generator's arguments for w (after the mode and --to).
func (c Config) Args(w Workload) []string {
	switch w.Kind {
	case MaxRate:
		return []string{"--max", "--conns", fmt.Sprint(w.Conns), "--warmup", c.Warmup.String(), "--duration", c.MaxDuration.String()}
	case Bulk:
		return []string{"--bytes", fmt.Sprint(w.Bytes), "--conns", "1"}
	}
	args := []string{"--rate", fmt.Sprint(w.Rate), "--conns", fmt.Sprint(w.Conns), "--warmup", c.Warmup.String(), "--duration", c.Duration.String()}
	if w.NewConn {
		args = append(args, "--new-conn")
	}
	return args
}

// Measured is the part of a run's CPU time that belongs to its measured
// phase: the warm-up runs the same load, so time scales.
func (c Config) Measured(w Workload, res benchkit.LoadResult) float64 {
	if w.Kind == Bulk || res.Seconds <= 0 {
		return 1
	}
	return res.Seconds / (res.Seconds + c.Warmup.Seconds())
}

// MaxErrorRatio is the largest share of failed requests a run may have and
// still count: above it the run is an error, not a row.
const MaxErrorRatio = 0.001

// Validate returns why res cannot be a row of the report: no request
// served, or more than MaxErrorRatio of them failed.
func Validate(w Workload, res benchkit.LoadResult) error {
	if res.Requests <= 0 {
		return fmt.Errorf("%s: no request was served (%d failed, first: %q)", w.Key, res.Errors, res.FirstError)
	}
	if ratio := float64(res.Errors) / float64(res.Requests+res.Errors); ratio > MaxErrorRatio {
		return fmt.Errorf("%s: %d of %d requests failed (%.2f %%, more than %.1f %%), first: %q",
			w.Key, res.Errors, res.Requests+res.Errors, 100*ratio, 100*MaxErrorRatio, res.FirstError)
	}
	if w.Kind == Bulk && (res.Bytes != w.Bytes || res.MBps <= 0) {
		return fmt.Errorf("%s: %d bytes at %.1f MB/s, want %d bytes", w.Key, res.Bytes, res.MBps, w.Bytes)
	}
	return nil
}

// Run is one load run of one case: the load generator's result and what
// the proxies and the pods used meanwhile (measured phase only).
type Run struct {
	Res benchkit.LoadResult
	// ClientCPU and ServerCPU are the client and server proxies' CPU time
	// (all their processes); Pods the CPU time of everything in the two
	// pods (load generator, application, proxies, and the kernel's work in
	// their context), from their cgroups.
	ClientCPU, ServerCPU, Pods time.Duration
	// ClientRSS and ServerRSS are the proxies' peak VmRSS during the run,
	// KiB, all their processes.
	ClientRSS, ServerRSS int64
}

// CaseResult is everything measured for one case.
type CaseResult struct {
	Name string
	// Runs per workload key, one per round.
	Runs map[string][]Run
	// IdleRSS is the proxies' VmRSS after start (client, server), KiB.
	IdleRSS [2]int64
	// Counters are the eBPF counters that moved during the case's runs.
	Counters map[string]uint64
}

// Proxied reports whether the case has proxies.
func (c *CaseResult) Proxied() bool { return c.Name != CaseDirect }
