package proxy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// The cases.
const (
	caseDirect = "direct"
	caseSluice = "sluice-proxy"
	caseNginx  = "nginx"
)

// run is one load run of one case: the load generator's result and what
// the proxy used meanwhile.
type run struct {
	res benchkit.LoadResult
	cpu time.Duration     // the proxy's CPU time during the run (all its processes)
	rss []benchkit.Memory // the proxy's peak VmRSS and RssAnon during the run, KiB, per process
}

// kind names a load: the fixed-rate loads per protocol and the closed loop.
type kind int

const (
	fixedHTTP kind = iota
	fixedGRPC
	maxHTTP
	numKinds
)

// caseResult is everything measured for one case over the rounds.
type caseResult struct {
	name  string
	procs []string // names of the proxy's processes (none for direct)
	runs  [numKinds][]run
	// Memory of the proxy's processes, KiB each: when idle after start,
	// and VmHWM after the fixed-rate runs and at the end.
	idle             []benchkit.Memory
	hwmFixed, hwmEnd []int64
	counters         map[string]uint64 // eBPF counters moved during its runs
}

// figure is one value taken from each round.
type figure func(r run) float64

var (
	p50   figure = func(r run) float64 { return float64(r.res.P50Ns) / 1e3 }
	p99   figure = func(r run) float64 { return float64(r.res.P99Ns) / 1e3 }
	p999  figure = func(r run) float64 { return float64(r.res.P999Ns) / 1e3 }
	rps   figure = func(r run) float64 { return r.res.RPS }
	lag99 figure = func(r run) float64 { return float64(r.res.SendLagP99Ns) / 1e3 }
	// cpuPerReq is the proxy's CPU time per request, µs.
	cpuPerReq figure = func(r run) float64 {
		return float64(r.cpu.Microseconds()) / float64(max(r.res.Requests, 1))
	}
	// cpuUse is the proxy's CPU use during the run, in % of one CPU.
	cpuUse figure = func(r run) float64 { return 100 * r.cpu.Seconds() / r.res.Seconds }
	// rpsPerCPU is requests per second of proxy CPU time.
	rpsPerCPU figure = func(r run) float64 {
		if r.cpu <= 0 {
			return 0
		}
		return float64(r.res.Requests) / r.cpu.Seconds()
	}
	// rssSum is the proxy's peak VmRSS during the run, MB, all processes.
	rssSum figure = func(r run) float64 {
		var s int64
		for _, m := range r.rss {
			s += m.RSS
		}
		return benchkit.KiBToMB(s)
	}
	// anonSum is the proxy's peak RssAnon during the run, MB, all processes.
	anonSum figure = func(r run) float64 {
		var s int64
		for _, m := range r.rss {
			s += m.Anon
		}
		return benchkit.KiBToMB(s)
	}
)

// env describes the run for the report.
type env struct {
	when, machine, versions, command, load string
	rounds, rate, conns, maxConns          int
	duration, maxDuration, warmup          time.Duration
	proxyCPU, clientCPU                    string
}

// methodology says what the cases and figures are.
func methodology(e env) string {
	return `
## How it is measured

Topology: one netns node (test/netns) with an eBPF-mode sluice-agent, a client pod and a server pod on the
node's bridge; every request crosses the client pod's veth, the bridge and the server pod's veth, then:

- **direct**: reaches the app (` + "`loadgen serve`" + `: HTTP/1.1 + h2c and grpc-go's health service, 64-byte
  answers) on a port the agent does not steer. The baseline: no proxy.
- **sluice-proxy**: goes to the app's steered port; the agent's sk_lookup program hands the connection to
  sluice-proxy's inbound listener (4143), which forwards it to the app on 127.0.0.1, same port: one proxied hop,
  the server side of a meshed request. sluice-proxy runs with its defaults (tap and admin listeners on,
  ` + "`SLUICE_PROXY_LOG_LEVEL=warn`" + `) and ` + "`SLUICE_PROXY_REQUIRE_STEERING=false`" + `; the pod is enrolled
  with the agent's defaults, so loopback socket pairs in it (proxy→app, and nginx→app) are in the sk_msg redirect's
  SOCKHASH.
- **nginx**: goes to nginx in the server pod on a port the agent does not steer; nginx forwards to the
  app on 127.0.0.1: ` + "`worker_processes 1`, `access_log off`" + `, HTTP/1.1 upstream keep-alive
  (` + "`proxy_http_version 1.1`, `keepalive 64`" + `, no request limit per connection on either side) and
  ` + "`grpc_pass`" + ` over h2c for gRPC. The configuration is in test/bench/proxy/procs_linux_test.go.

Placement: sluice-proxy and nginx (master and worker) run as uid 2102, pinned with taskset to CPU ` + e.proxyCPU + `,
alone; the load generator and the app are pinned to CPU ` + e.clientCPU + `. sluice-proxy's Go runtime therefore
runs with GOMAXPROCS=1, and "per proxy core" means on that one CPU. The proxy's CPU time comes from
utime+stime in /proc/<pid>/stat (for nginx, master + worker), counted over the whole run and scaled to the
measured part; "req/s per proxy CPU-second" divides the measured requests by it, which stays meaningful
when the client side and not the proxy is the bottleneck (then the proxy's CPU use stays under 100 %).

Load: ` + "`test/cmd/loadgen`" + ` in the client pod. The fixed-rate runs schedule request i at start + i/rate
and measure its latency from that scheduled time, whether or not a connection was free (wrk2's correction of
coordinated omission), into a log-linear histogram with under 1 % error. Sends wait with nanosleep; the
"send lag" column is how late sends started against the schedule, the load generator's own timing noise,
which lands in every case alike. The maximum-throughput runs are closed loops: each connection sends
its next request when the previous answer arrives.

Rounds: every round runs every case once, in an order that rotates from round to round, so drift
(other work on the machine, thermal, page cache) hits all cases alike; "added" latency is computed per
round against the direct run of the same round, then the median is taken. All fixed-rate rounds run first,
then the throughput rounds, so the memory figures at ` + fmt.Sprint(e.rate) + ` req/s are not inflated by the
maximum-throughput runs. Memory: VmRSS from /proc/<pid>/status idle after start, sampled every 100 ms during
each run (largest sample), and VmHWM (the peak since start). For nginx, the sum of master and worker counts the
pages they share twice.
`
}

// markdown renders the report: the tables and how they were measured.
func markdown(e env, cases []*caseResult, notes string) string {
	var sb strings.Builder
	direct := cases[0]
	fmt.Fprintf(&sb, "# Proxy benchmark\n\n")
	fmt.Fprintf(&sb, "Machine: %s.  \nVersions: %s.  \n", e.machine, e.versions)
	fmt.Fprintf(&sb, "Run: %s, %d rounds; %s.  \n", e.when, e.rounds, e.load)
	fmt.Fprintf(&sb, "Reproduce: `%s`\n\n", e.command)
	fmt.Fprintf(&sb, "Each cell: median over the %d rounds of that round's figure (min – max across rounds). "+
		"\"Added\" is the case's figure minus direct's in the same round.\n\n", e.rounds)

	for _, k := range []kind{fixedHTTP, fixedGRPC} {
		proto := map[kind]string{fixedHTTP: "HTTP/1.1", fixedGRPC: "gRPC (unary)"}[k]
		fmt.Fprintf(&sb, "## Latency at %d req/s, %s\n\n", e.rate, proto)
		sb.WriteString("| case | p50 (µs) | p99 (µs) | p99.9 (µs) | added p50 (µs) | added p99 (µs) | added p99.9 (µs) | proxy CPU per request (µs) | load generator's send lag p99 (µs) | failed requests |\n")
		sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, c := range cases {
			rs := c.runs[k]
			a50, a99, a999, cpu := "—", "—", "—", "—"
			if c != direct {
				a50 = benchkit.Added(rs, direct.runs[k], p50).Format(0)
				a99 = benchkit.Added(rs, direct.runs[k], p99).Format(0)
				a999 = benchkit.Added(rs, direct.runs[k], p999).Format(0)
				cpu = benchkit.Over(rs, cpuPerReq).Format(1)
			}
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", c.name,
				benchkit.Over(rs, p50).Format(0), benchkit.Over(rs, p99).Format(0), benchkit.Over(rs, p999).Format(0),
				a50, a99, a999, cpu, benchkit.Over(rs, lag99).Format(0), errorsOf(rs))
		}
		sb.WriteString("\n")
	}

	fmt.Fprintf(&sb, "## Maximum throughput, HTTP/1.1, %d connections, proxy pinned to one CPU\n\n", e.maxConns)
	sb.WriteString("| case | req/s | proxy CPU use (% of one CPU) | req/s per proxy CPU-second | limited by | failed requests |\n")
	sb.WriteString("|---|---:|---:|---:|---|---:|\n")
	for _, c := range cases {
		rs := c.runs[maxHTTP]
		use, per, bound := "—", "—", "the client and the app (CPU "+e.clientCPU+")"
		if c != direct {
			u := benchkit.Over(rs, cpuUse)
			use, per = u.Format(0), benchkit.Over(rs, rpsPerCPU).Format(0)
			if u.Med >= saturated {
				bound = "the proxy's CPU"
			}
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %d |\n", c.name, benchkit.Over(rs, rps).Format(0), use, per, bound, errorsOf(rs))
	}
	fmt.Fprintf(&sb, "\nA proxy whose CPU use stays under %d %% was not the bottleneck: the load generator and the app, sharing CPU %s, were. "+
		"Its req/s then understates what it can do on one core, and req/s per proxy CPU-second is the figure to compare; "+
		"if anything that figure understates it too, since a busier proxy serves more requests per wakeup and per epoll call.\n", saturated, e.clientCPU)

	sb.WriteString("\n## Proxy memory (MB = 10^6 bytes)\n\n")
	sb.WriteString("| case | processes | VmRSS idle, after start | RssAnon idle | VmRSS at " + fmt.Sprint(e.rate) + " req/s | RssAnon at " + fmt.Sprint(e.rate) + " req/s | VmHWM after the fixed-rate runs | VmHWM at the end (after the maximum-throughput runs) |\n")
	sb.WriteString("|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range cases[1:] {
		fixed := append(slices.Clone(c.runs[fixedHTTP]), c.runs[fixedGRPC]...)
		rss, anon := make([]int64, len(c.idle)), make([]int64, len(c.idle))
		for i, m := range c.idle {
			rss[i], anon[i] = m.RSS, m.Anon
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name, strings.Join(c.procs, " + "),
			memCell(rss), memCell(anon), benchkit.Over(fixed, rssSum).Format(1), benchkit.Over(fixed, anonSum).Format(1), memCell(c.hwmFixed), memCell(c.hwmEnd))
	}
	sb.WriteString("\nVmRSS includes the pages of the executable and libraries that the process has touched (file-backed, clean, " +
		"shared with the page cache); RssAnon is the process's own memory (heap, stacks). The figures at the fixed rate are " +
		"the largest of samples taken every 100 ms during each run, median (min – max) over the runs of both protocols.\n")

	sb.WriteString("\n## Targets (issue 3)\n\n")
	sb.WriteString(targets(e, cases))
	sb.WriteString(methodology(e))
	sb.WriteString(notes)
	return sb.String()
}

// memCell formats per-process KiB as the MB total, with the parts when
// there are several processes.
func memCell(kib []int64) string {
	var sum int64
	parts := make([]string, len(kib))
	for i, k := range kib {
		sum += k
		parts[i] = fmt.Sprintf("%.1f", benchkit.KiBToMB(k))
	}
	if len(kib) < 2 {
		return fmt.Sprintf("%.1f", benchkit.KiBToMB(sum))
	}
	return fmt.Sprintf("%.1f (%s)", benchkit.KiBToMB(sum), strings.Join(parts, " + "))
}

func errorsOf(rs []run) int64 {
	var n int64
	for _, r := range rs {
		n += r.res.Errors
	}
	return n
}

// saturated is the CPU use (% of one CPU) from which a proxy counts as the
// bottleneck of a maximum-throughput run.
const saturated = 90

// rssLimitMB is the memory target: RSS ≤ 20 MB at 1000 req/s.
const rssLimitMB = 20

// targets renders the three targets for sluice-proxy against nginx.
func targets(e env, cases []*caseResult) string {
	var sluice, nginx *caseResult
	for _, c := range cases {
		switch c.name {
		case caseSluice:
			sluice = c
		case caseNginx:
			nginx = c
		}
	}
	if sluice == nil || nginx == nil {
		return "Not evaluated: the run did not include both sluice-proxy and nginx.\n"
	}
	direct := cases[0]
	var sb strings.Builder
	sb.WriteString("| target | sluice-proxy | nginx | met |\n|---|---:|---:|---|\n")
	met := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	for _, k := range []kind{fixedHTTP, fixedGRPC} {
		proto := map[kind]string{fixedHTTP: "HTTP/1.1", fixedGRPC: "gRPC"}[k]
		s := benchkit.Added(sluice.runs[k], direct.runs[k], p99).Med
		n := benchkit.Added(nginx.runs[k], direct.runs[k], p99).Med
		fmt.Fprintf(&sb, "| p99 latency added per hop at %d req/s, %s: sluice-proxy ≤ nginx (µs) | %.0f | %.0f | %s |\n", e.rate, proto, s, n, met(s <= n))
	}
	fixed := append(slices.Clone(sluice.runs[fixedHTTP]), sluice.runs[fixedGRPC]...)
	nfixed := append(slices.Clone(nginx.runs[fixedHTTP]), nginx.runs[fixedGRPC]...)
	rss := benchkit.Over(fixed, rssSum).Hi
	fmt.Fprintf(&sb, "| RSS at %d req/s ≤ %d MB (largest sampled VmRSS over all fixed-rate runs, MB) | %.1f | %.1f | %s |\n",
		e.rate, rssLimitMB, rss, benchkit.Over(nfixed, rssSum).Hi, met(rss <= rssLimitMB))
	s, n := benchkit.Over(sluice.runs[maxHTTP], rpsPerCPU).Med, benchkit.Over(nginx.runs[maxHTTP], rpsPerCPU).Med
	fmt.Fprintf(&sb, "| HTTP/1.1 throughput per proxy core ≥ nginx's (req/s per proxy CPU-second) | %.0f | %.0f | %s |\n", s, n, met(s >= n))
	s, n = benchkit.Over(sluice.runs[maxHTTP], rps).Med, benchkit.Over(nginx.runs[maxHTTP], rps).Med
	fmt.Fprintf(&sb, "| HTTP/1.1 maximum req/s with the proxy pinned to one core ≥ nginx's | %.0f | %.0f | %s |\n", s, n, met(s >= n))
	return sb.String()
}
