package proxy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/bench/benchkit"
	"github.com/sluice-mesh/sluice/test/netns"
)

var (
	report      = flag.Bool("report", false, "also write the Markdown report to docs/proxy-benchmark.md")
	rounds      = flag.Int("rounds", 5, "rounds; each runs every case once, in a rotating order")
	rate        = flag.Int("rate", 1000, "requests per second of the fixed-rate runs")
	duration    = flag.Duration("duration", 10*time.Second, "measured time of each fixed-rate run")
	maxDuration = flag.Duration("max-duration", 5*time.Second, "measured time of each maximum-throughput run")
	warmup      = flag.Duration("warmup", time.Second, "unmeasured load before each run")
	conns       = flag.Int("conns", 8, "HTTP/1.1 connections (gRPC: concurrent calls on one connection) of the fixed-rate runs")
	maxConns    = flag.Int("max-conns", 32, "HTTP/1.1 connections of the maximum-throughput runs")
	only        = flag.String("cases", caseDirect+","+caseSluice+","+caseNginx, "cases to run (direct is always run: it is the baseline)")
)

const (
	appUID   = 1000
	proxyUID = int(api.DefaultProxyUID)
	// Ports on the server pod. The app listens on the first two of each
	// protocol; 8080 and 9090 are steered into sluice-proxy (which forwards
	// to the app on loopback, same port); the rest are skipped by steering.
	portHTTPSluice = 8080
	portHTTPDirect = 8081
	portHTTPNginx  = 8082 // nginx → 127.0.0.1:8081
	portGRPCSluice = 9090
	portGRPCDirect = 9091
	portGRPCNginx  = 9092 // nginx → 127.0.0.1:9091
	portAppStats   = 7070
	adminPort      = 4191
	rssInterval    = 100 * time.Millisecond
	reportFile     = "../../../docs/proxy-benchmark.md"
	reproduceCmd   = "make bench-proxy   # = go test -count=1 -timeout 30m -run '^$' -bench . -benchtime 1x ./test/bench/proxy/ -args -report"
)

// CPUs: the proxy (sluice-proxy or nginx) alone on the last CPU; the load
// generator and the app share the other.
func proxyCPU() string  { return fmt.Sprint(runtime.NumCPU() - 1) }
func clientCPU() string { return "0" }

// benchCase is one way from the client to the app.
type benchCase struct {
	*caseResult
	httpPort, grpcPort uint16
	procs              benchkit.Procs // the proxy's processes (none for direct)
	proxy              *benchkit.Process
}

// fixture is the node: an eBPF agent, a client pod and a server pod with the
// app, sluice-proxy and nginx.
type fixture struct {
	agent   *agenttest.Agent
	cli     *netns.Pod
	srv     *netns.Pod
	loadgen string
	cases   []*benchCase
}

func BenchmarkProxy(b *testing.B) {
	netns.RequireRoot(b)
	for _, cmd := range []string{"nsenter", "taskset", "nginx"} {
		netns.RequireCommand(b, cmd)
	}
	want := map[string]bool{caseDirect: true}
	for c := range strings.SplitSeq(*only, ",") {
		want[strings.TrimSpace(c)] = true
	}
	f := &fixture{loadgen: netns.BuildTool(b, "./test/cmd/loadgen")}
	node := netns.NewNode(b)
	f.agent = agenttest.Start(b, node, agenttest.Options{Mode: api.ModeEBPF})
	f.cli = node.AddPod(b, "client", netns.PodOptions{})
	f.srv = node.AddPod(b, "server", netns.PodOptions{})
	en := f.agent.Enroll(b, f.srv, api.PodConfig{SkipInboundPorts: []api.PortRange{
		{Lo: portAppStats, Hi: portAppStats}, {Lo: portHTTPDirect, Hi: portHTTPNginx}, {Lo: portGRPCDirect, Hi: portGRPCNginx},
	}})

	app := benchkit.StartProcess(b, f.srv, appUID, clientCPU(), nil, f.loadgen, "serve",
		"--http", fmt.Sprintf(":%d,:%d", portHTTPSluice, portHTTPDirect),
		"--grpc", fmt.Sprintf(":%d,:%d", portGRPCSluice, portGRPCDirect),
		"--stats", fmt.Sprintf(":%d", portAppStats))
	lines := make(chan string, 4)
	app.Run(b, lines)
	select {
	case l := <-lines:
		if l != "READY" {
			b.Fatalf("app: %q, want READY; stderr: %s", l, app.Stderr())
		}
	case <-time.After(time.Minute):
		b.Fatalf("app not ready: %s", app.Stderr())
	}

	f.cases = append(f.cases, &benchCase{caseResult: &caseResult{name: caseDirect}, httpPort: portHTTPDirect, grpcPort: portGRPCDirect})
	if want[caseSluice] {
		f.cases = append(f.cases, f.startSluice(b, en.NetNSCookie))
	}
	if want[caseNginx] {
		f.cases = append(f.cases, f.startNginx(b))
	}
	for _, c := range f.cases {
		c.counters = map[string]uint64{}
		if len(c.procs) == 0 {
			continue
		}
		var err error
		if c.idle, err = c.procs.Memory(); err != nil {
			b.Fatal(err)
		}
	}
	// Every path answers before anything is measured.
	for _, c := range f.cases {
		for _, proto := range []string{"http", "grpc"} {
			if _, err := f.load(b, c, proto, "--rate", "200", "--warmup", "0", "--duration", "500ms"); err != nil {
				b.Fatalf("%s %s: %v", c.name, proto, err)
			}
		}
	}

	load0 := benchkit.LoadAvg()
	b.ResetTimer()
	start := time.Now()
	for r := range *rounds {
		for i := range f.cases {
			c := f.cases[(i+r)%len(f.cases)]
			f.measure(b, c, fixedHTTP)
			f.measure(b, c, fixedGRPC)
		}
		b.Logf("fixed-rate round %d/%d done after %v", r+1, *rounds, time.Since(start).Round(time.Second))
	}
	f.recordHWM(b, func(c *benchCase) *[]int64 { return &c.hwmFixed })
	for r := range *rounds {
		for i := range f.cases {
			f.measure(b, f.cases[(i+r)%len(f.cases)], maxHTTP)
		}
		b.Logf("throughput round %d/%d done after %v", r+1, *rounds, time.Since(start).Round(time.Second))
	}
	f.recordHWM(b, func(c *benchCase) *[]int64 { return &c.hwmEnd })
	b.StopTimer()
	load1 := benchkit.LoadAvg()

	notes := f.evidence(b)
	results := make([]*caseResult, len(f.cases))
	for i, c := range f.cases {
		results[i] = c.caseResult
	}
	md := markdown(f.describe(start, load0, load1), results, notes)
	fmt.Print("\n" + md + "\n")
	for _, c := range f.cases {
		b.ReportMetric(benchkit.Over(c.runs[fixedHTTP], p99).Med, c.name+"-http-p99-µs")
		b.ReportMetric(benchkit.Over(c.runs[maxHTTP], rps).Med, c.name+"-max-req/s")
	}
	if b.Failed() {
		b.Log("not writing the report: the run failed")
		return
	}
	if *report {
		if err := os.WriteFile(reportFile, []byte(md), 0o644); err != nil {
			b.Fatalf("write report: %v", err)
		}
		b.Logf("wrote %s", reportFile)
	}
}

// startSluice runs sluice-proxy in the server pod as the proxy user, pinned
// to the proxy CPU, and waits until it is ready and the agent steers the
// pod's inbound connections to it.
func (f *fixture) startSluice(b *testing.B, cookie uint64) *benchCase {
	b.Helper()
	bin := netns.BuildTool(b, "./proxy/cmd/sluice-proxy")
	p := benchkit.StartProcess(b, f.srv, proxyUID, proxyCPU(), []string{
		"SLUICE_PROXY_REQUIRE_STEERING=false",
		"SLUICE_PROXY_LOG_LEVEL=warn",
	}, bin)
	p.Run(b, nil)
	ready := fmt.Sprintf("http://%s/ready", netip.AddrPortFrom(f.srv.IPv4(), adminPort))
	p.WaitFor(b, "ready", func() error { _, err := benchkit.HTTPGet(ready); return err })
	f.agent.WaitListener(b, cookie)
	return &benchCase{caseResult: &caseResult{name: caseSluice, procs: []string{"sluice-proxy"}},
		httpPort: portHTTPSluice, grpcPort: portGRPCSluice, procs: benchkit.Procs{p.PID()}, proxy: p}
}

// startNginx runs nginx (master and one worker) in the server pod as the
// proxy user, pinned to the proxy CPU.
func (f *fixture) startNginx(b *testing.B) *benchCase {
	b.Helper()
	conf := writeNginxConf(b, proxyUID, portHTTPNginx, portGRPCNginx, portHTTPDirect, portGRPCDirect)
	p := benchkit.StartProcess(b, f.srv, proxyUID, proxyCPU(), nil, "nginx", "-e", "stderr", "-p", filepath.Dir(conf), "-c", conf)
	p.Run(b, nil)
	for _, port := range []uint16{portHTTPNginx, portGRPCNginx} {
		addr := netip.AddrPortFrom(f.srv.IPv4(), port).String()
		p.WaitFor(b, "listening on "+addr, func() error { return benchkit.TCPUp(addr) })
	}
	ps := benchkit.NginxProcs(b, p)
	return &benchCase{caseResult: &caseResult{name: caseNginx, procs: []string{"worker", "master"}},
		httpPort: portHTTPNginx, grpcPort: portGRPCNginx, procs: ps, proxy: p}
}

// load runs loadgen in the client pod against c and returns its result.
func (f *fixture) load(b *testing.B, c *benchCase, proto string, args ...string) (benchkit.LoadResult, error) {
	b.Helper()
	port := c.httpPort
	if proto == "grpc" {
		port = c.grpcPort
	}
	to := netip.AddrPortFrom(f.srv.IPv4(), port).String()
	cmd := f.cli.Command(appUID, "taskset", append([]string{"-c", clientCPU(), f.loadgen, proto, "--to", to}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	guard := time.AfterFunc(*warmup+*duration+*maxDuration+time.Minute, func() { _ = cmd.Process.Kill() })
	out, err := cmd.Output()
	guard.Stop()
	var res benchkit.LoadResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return res, fmt.Errorf("loadgen %s %v: %v %v: %q %s", proto, args, err, jerr, out, stderr.String())
	}
	if err != nil || res.Errors != 0 {
		return res, fmt.Errorf("loadgen %s %v: %v: %d failed requests, first: %s; %s", proto, args, err, res.Errors, res.FirstError, stderr.String())
	}
	return res, nil
}

// measure runs one load of kind k against c, with the proxy's CPU time and
// memory around it.
func (f *fixture) measure(b *testing.B, c *benchCase, k kind) {
	b.Helper()
	if c.proxy != nil {
		c.proxy.Alive(b)
	}
	args := []string{"--warmup", warmup.String()}
	proto := "http"
	switch k {
	case fixedHTTP, fixedGRPC:
		args = append(args, "--rate", fmt.Sprint(*rate), "--conns", fmt.Sprint(*conns), "--duration", duration.String())
		if k == fixedGRPC {
			proto = "grpc"
		}
	case maxHTTP:
		args = append(args, "--max", "--conns", fmt.Sprint(*maxConns), "--duration", maxDuration.String())
	}
	counters := f.agent.Counters(b)
	cpu0, err := c.procs.CPU()
	if err != nil {
		b.Fatal(err)
	}
	sampler := benchkit.SampleRSS(c.procs, rssInterval)
	res, lerr := f.load(b, c, proto, args...)
	rss, serr := sampler.Finish()
	cpu1, err := c.procs.CPU()
	if err != nil || serr != nil {
		b.Fatalf("%s: read the proxy's CPU time or memory: %v %v", c.name, err, serr)
	}
	if lerr != nil {
		// Keep going: the table shows the failures, and the run fails.
		b.Errorf("%s: %v", c.name, lerr)
	}
	// Warm-up CPU is included, so scale to the measured part.
	cpu := time.Duration(float64(cpu1-cpu0) * res.Seconds / (res.Seconds + warmup.Seconds()))
	c.runs[k] = append(c.runs[k], run{res: res, cpu: cpu, rss: rss})
	for name, v := range f.agent.Counters(b) {
		if d := v - counters[name]; d != 0 {
			c.counters[name] += d
		}
	}
}

// recordHWM stores each proxy process's VmHWM in the field that field returns.
func (f *fixture) recordHWM(b *testing.B, field func(*benchCase) *[]int64) {
	b.Helper()
	for _, c := range f.cases {
		ms, err := c.procs.Memory()
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range ms {
			*field(c) = append(*field(c), m.HWM)
		}
	}
}

// appCount is a line of the app's stats (loadgen ListenerCount).
type appCount struct {
	Addr     string `json:"addr"`
	Proto    string `json:"proto"`
	Loopback int64  `json:"loopback"`
	Other    int64  `json:"other"`
}

// evidence checks that each case took the path it names, from the app's
// per-listener counts and sluice-proxy's metrics, and returns the report's
// notes on it.
func (f *fixture) evidence(b *testing.B) string {
	b.Helper()
	body, err := benchkit.HTTPGet(fmt.Sprintf("http://%s/", netip.AddrPortFrom(f.srv.IPv4(), portAppStats)))
	if err != nil {
		b.Fatalf("app stats: %v", err)
	}
	var counts []appCount
	if err := json.Unmarshal(body, &counts); err != nil {
		b.Fatalf("app stats: %v: %s", err, body)
	}
	byPort := map[uint16]appCount{}
	for _, c := range counts {
		if ap, err := netip.ParseAddrPort(c.Addr); err == nil {
			byPort[ap.Port()] = c
		}
	}
	sent := func(c *benchCase, ks ...kind) int64 {
		var n int64
		for _, k := range ks {
			for _, r := range c.runs[k] {
				n += r.res.Requests
			}
		}
		return n
	}
	var sb strings.Builder
	sb.WriteString("\nEvidence checked by the benchmark (it fails otherwise): what the app counted per listener, by the peer's address, covers what the load generator counted as answered in each case.\n\n")
	sb.WriteString("| case | listener | requests the load generator counted (measured only) | the app served from loopback | from elsewhere |\n|---|---|---:|---:|---:|\n")
	for _, c := range f.cases {
		for _, l := range []struct {
			proto string
			port  uint16
			ks    []kind
		}{{"http", c.httpPort, []kind{fixedHTTP, maxHTTP}}, {"grpc", c.grpcPort, []kind{fixedGRPC}}} {
			appPort := l.port
			if c.name == caseNginx {
				appPort = map[string]uint16{"http": portHTTPDirect, "grpc": portGRPCDirect}[l.proto]
			}
			n, got := sent(c, l.ks...), byPort[appPort]
			fmt.Fprintf(&sb, "| %s | %s app :%d | %d | %d | %d |\n", c.name, l.proto, appPort, n, got.Loopback, got.Other)
			switch c.name {
			case caseDirect:
				if got.Other < n {
					b.Errorf("direct %s: the app served %d requests from the client, fewer than the %d measured", l.proto, got.Other, n)
				}
			case caseNginx:
				if got.Loopback < n {
					b.Errorf("nginx %s: the app served %d requests from loopback, fewer than the %d measured", l.proto, got.Loopback, n)
				}
			case caseSluice:
				if got.Loopback < n || got.Other != 0 {
					b.Errorf("sluice-proxy %s: the app served %d requests from loopback and %d from elsewhere; want ≥ %d through the proxy and none around it",
						l.proto, got.Loopback, got.Other, n)
				}
			}
		}
	}
	for _, c := range f.cases {
		if c.name != caseSluice {
			continue
		}
		n := sent(c, fixedHTTP, fixedGRPC, maxHTTP)
		m, err := benchkit.HTTPGet(fmt.Sprintf("http://%s/metrics", netip.AddrPortFrom(f.srv.IPv4(), adminPort)))
		total, found := benchkit.SumMetric(string(m), "request_total", `direction="inbound"`)
		switch {
		case err != nil:
			fmt.Fprintf(&sb, "\nsluice-proxy's /metrics could not be read: %v.\n", err)
		case !found:
			sb.WriteString("\nsluice-proxy's /metrics has no `request_total{direction=\"inbound\"}` series.\n")
		default:
			fmt.Fprintf(&sb, "\nsluice-proxy's `request_total{direction=\"inbound\"}` sums to %.0f (the load generator counted %d measured requests; warm-ups and checks add more).\n", total, n)
		}
		if err != nil || float64(n) > total {
			b.Logf("sluice-proxy metrics: request_total inbound %.0f (found %v, %v) < %d requests measured", total, found, err, n)
		}
	}
	sb.WriteString("\n| case | eBPF counters moved during its runs |\n|---|---|\n")
	for _, c := range f.cases {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(c.counters)) {
			parts = append(parts, fmt.Sprintf("%s %d", k, c.counters[k]))
		}
		fmt.Fprintf(&sb, "| %s | %s |\n", c.name, strings.Join(parts, ", "))
	}
	return sb.String()
}

// describe fills in the report's header.
func (f *fixture) describe(start time.Time, load0, load1 string) env {
	nginxV, _ := exec.Command("nginx", "-v").CombinedOutput()
	return env{
		when:    start.UTC().Format("2006-01-02 15:04 UTC"),
		machine: fmt.Sprintf("%s; load average (1, 5, 15 min) %s at the start, %s at the end", benchkit.Host(), load0, load1),
		versions: fmt.Sprintf("%s %s/%s; %s; sluice-proxy and loadgen built from commit %s", runtime.Version(), runtime.GOOS, runtime.GOARCH,
			strings.TrimSpace(strings.TrimPrefix(string(nginxV), "nginx version: ")), benchkit.GitHead("proxy", "test/cmd/loadgen", "test/bench/proxy")),
		command: reproduceCmd,
		load: fmt.Sprintf("per case and round: %v at %d req/s over %d HTTP/1.1 keep-alive connections, %v at %d req/s of gRPC unary calls (%d at a time on one HTTP/2 connection), then %v of closed-loop HTTP/1.1 over %d connections; each after %v of unmeasured warm-up",
			*duration, *rate, *conns, *duration, *rate, *conns, *maxDuration, *maxConns, *warmup),
		rounds: *rounds, rate: *rate, conns: *conns, maxConns: *maxConns,
		duration: *duration, maxDuration: *maxDuration, warmup: *warmup,
		proxyCPU: proxyCPU(), clientCPU: clientCPU(),
	}
}
