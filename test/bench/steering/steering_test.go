package steering

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/netns"
)

var (
	report   = flag.Bool("report", false, "also write the Markdown report to docs/steering-benchmark.md")
	rounds   = flag.Int("rounds", 5, "rounds; each runs every case once, in a rotating order")
	connects = flag.Int("connects", 5000, "timed connects per case and round")
	pingpong = flag.Int("rr", 20000, "timed 64-byte ping-pongs per case and round")
	bulkMiB  = flag.Int("bulk-mib", 512, "MiB sent through the echo proxy per case and round")
)

const (
	appUID   = 1000
	proxyUID = api.DefaultProxyUID
	// discardPort is a port nothing listens on: a connection to it that is
	// not steered is refused, so a successful connect proves steering.
	discardPort  = 9
	connectWarm  = 200
	rrWarm       = 1000
	reportFile   = "../../../docs/steering-benchmark.md"
	reproduceCmd = "make bench-steering   # = go test -count=1 -timeout 30m -run '^$' -bench . -benchtime 1x ./test/bench/steering/ -args -report"
)

// result is steerbench's JSON line.
type result struct {
	N      int     `json:"n"`
	P50Ns  int64   `json:"p50_ns"`
	P99Ns  int64   `json:"p99_ns"`
	Bytes  int64   `json:"bytes"`
	MBps   float64 `json:"mb_per_s"`
	Err    string  `json:"err"`
	MeanNs int64   `json:"mean_ns"`
	EAGAIN int64   `json:"spurious_eagain"`
	MSS    int     `json:"mss"`
}

// proxyStats is the echo proxy's answer to "stats".
type proxyStats struct {
	Accepted  int64  `json:"accepted"`
	OrigMatch int64  `json:"orig_match"`
	OrigOther int64  `json:"orig_other"`
	OrigErr   int64  `json:"orig_err"`
	LastOrig  string `json:"last_orig"`
	LastErr   string `json:"last_err"`
}

// echoProxy is a steerbench proxy running in a pod as the proxy user.
type echoProxy struct {
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
}

func startProxy(b *testing.B, pod *netns.Pod, bin string, expect netip.AddrPort) *echoProxy {
	b.Helper()
	args := []string{"proxy", "--listen", "127.0.0.1:4140"}
	if expect.IsValid() {
		args = append(args, "--expect-orig", expect.String())
	}
	cmd := pod.Command(proxyUID, "taskset", append([]string{"-c", proxyCPU(), bin}, args...)...)
	p := &echoProxy{lines: make(chan string, 16), stderr: &bytes.Buffer{}}
	cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start proxy in %s: %v", pod.Name(), err)
	}
	b.Cleanup(func() {
		p.stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	select {
	case l := <-p.lines:
		if l != "READY" {
			b.Fatalf("proxy in %s: %q, want READY; stderr: %s", pod.Name(), l, p.stderr)
		}
	case <-time.After(20 * time.Second):
		b.Fatalf("proxy in %s not ready: %s", pod.Name(), p.stderr)
	}
	return p
}

func (p *echoProxy) stats(b *testing.B) proxyStats {
	b.Helper()
	if _, err := io.WriteString(p.stdin, "stats\n"); err != nil {
		b.Fatalf("proxy stats: %v; stderr: %s", err, p.stderr)
	}
	select {
	case l, ok := <-p.lines:
		var st proxyStats
		if !ok || json.Unmarshal([]byte(l), &st) != nil {
			b.Fatalf("proxy stats: %q; stderr: %s", l, p.stderr)
		}
		return st
	case <-time.After(10 * time.Second):
		b.Fatalf("proxy stats: no answer; stderr: %s", p.stderr)
	}
	return proxyStats{}
}

// waitAccepted waits until the proxy has accepted at least n connections.
func (p *echoProxy) waitAccepted(b *testing.B, n int64) proxyStats {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := p.stats(b)
		if st.Accepted >= n || time.Now().After(deadline) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// benchCase is one way for the app to reach its proxy.
type benchCase struct {
	name   string
	pod    *netns.Pod
	to     netip.AddrPort // what the app connects to
	proxy  *echoProxy
	agent  *agenttest.Agent // the eBPF agent, for its counters (nil otherwise)
	steer  bool             // connections must be steered (target refuses otherwise)
	redir  bool             // the sk_msg redirect must carry data
	rounds []roundResult
	// evidence, summed over rounds
	accepted, origMatch, origErr, origOther int64
	eagain                                  int64 // spurious EAGAINs of the app's blocking reads
	counters                                map[string]uint64
}

type roundResult struct {
	connect, rr, rrSame, bulk result
}

// proxyCPU is the CPU the proxy is pinned to; otherCPU another one (or the
// same on a one-CPU machine).
func proxyCPU() string { return fmt.Sprint(runtime.NumCPU() - 1) }
func otherCPU() string { return "0" }

// runTool runs steerbench in pod as uid, pinned to cpu, and returns its result.
func runTool(b *testing.B, pod *netns.Pod, uid int, bin, cpu string, args ...string) (result, error) {
	b.Helper()
	cmd := pod.Command(uid, "taskset", append([]string{"-c", cpu, bin}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res result
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return res, fmt.Errorf("steerbench %v: %v %v: %q %s", args, err, jerr, out, stderr.String())
	}
	if err != nil || res.Err != "" {
		return res, fmt.Errorf("steerbench %v: %v %s %s", args, err, res.Err, stderr.String())
	}
	return res, nil
}

// BenchmarkSteering runs every case in each of several rounds (interleaved,
// rotating the order) and prints one Markdown table of medians and spreads.
func BenchmarkSteering(b *testing.B) {
	netns.RequireRoot(b)
	netns.RequireCommand(b, "nsenter")
	netns.RequireCommand(b, "iptables")
	netns.RequireCommand(b, "ip6tables")
	bin := netns.BuildTool(b, "./test/cmd/steerbench")

	// Node 1: an iptables-mode agent; "none" is a pod that is not enrolled,
	// on a node without any Sluice BPF program: the no-mesh baseline.
	n1 := netns.NewNode(b)
	ipt := agenttest.Start(b, n1, agenttest.Options{Mode: api.ModeIPTables})
	podNone := n1.AddPod(b, "none", netns.PodOptions{})
	podIpt := n1.AddPod(b, "ipt", netns.PodOptions{})
	ipt.Enroll(b, podIpt, api.PodConfig{})

	// Node 2: an eBPF-mode agent with the redirect; one pod opts out of it.
	n2 := netns.NewNode(b)
	ebpfAgent := agenttest.Start(b, n2, agenttest.Options{Mode: api.ModeEBPF})
	podE := n2.AddPod(b, "ebpf", netns.PodOptions{})
	podS := n2.AddPod(b, "sk", netns.PodOptions{})
	ebpfAgent.Enroll(b, podE, api.PodConfig{DisableRedirect: true})
	ebpfAgent.Enroll(b, podS, api.PodConfig{})
	if st, err := ebpfAgent.Client.Status(context.Background()); err != nil || !st.RedirectEnabled {
		b.Fatalf("eBPF agent: redirect not enabled: %v %+v", err, st)
	}

	cases := []*benchCase{
		{name: "none", pod: podNone, to: netip.MustParseAddrPort("127.0.0.1:4140")},
		{name: "iptables", pod: podIpt, to: netip.AddrPortFrom(podNone.IPv4(), discardPort), steer: true},
		{name: "ebpf", pod: podE, to: netip.AddrPortFrom(podS.IPv4(), discardPort), steer: true, agent: ebpfAgent},
		{name: "ebpf+sk_msg", pod: podS, to: netip.AddrPortFrom(podE.IPv4(), discardPort), steer: true, agent: ebpfAgent, redir: true},
	}
	for _, c := range cases {
		var expect netip.AddrPort
		if c.steer {
			expect = c.to
			// Not steered (the proxy's uid is exempt), the target refuses:
			// only steering can make the benchmark's connections succeed.
			if _, err := runTool(b, c.pod, proxyUID, bin, otherCPU(), "connect", "--to", c.to.String(), "--n", "1", "--warmup", "0"); err == nil {
				b.Fatalf("%s: %v accepted a direct connection; it must refuse", c.name, c.to)
			}
		}
		c.proxy = startProxy(b, c.pod, bin, expect)
		c.counters = map[string]uint64{}
	}

	b.ResetTimer()
	start := time.Now()
	for r := 0; r < *rounds; r++ {
		for i := range cases {
			c := cases[(i+r)%len(cases)]
			runCase(b, c, bin)
		}
		b.Logf("round %d/%d done after %v", r+1, *rounds, time.Since(start).Round(time.Second))
	}
	b.StopTimer()

	// Evidence that each case took the path it names.
	for _, c := range cases {
		b.Logf("%s: proxy accepted %d (SO_ORIGINAL_DST = target %d, other %d, failed %d); counters %v",
			c.name, c.accepted, c.origMatch, c.origOther, c.origErr, c.counters)
		perRound := int64(*connects + connectWarm + 3)
		if c.accepted < perRound*int64(*rounds) {
			b.Errorf("%s: the proxy accepted %d connections, want ≥ %d: the app's connections did not all reach the proxy", c.name, c.accepted, perRound*int64(*rounds))
		}
		if c.steer && c.origMatch < 3*int64(*rounds) {
			b.Errorf("%s: SO_ORIGINAL_DST named the target for only %d connections", c.name, c.origMatch)
		}
		if !c.steer && c.origMatch+c.origOther != 0 {
			b.Errorf("%s: unexpected original destinations: %d", c.name, c.origMatch+c.origOther)
		}
		if c.agent != nil {
			if got := c.counters["steered_outbound_ipv4"]; got < uint64(perRound*int64(*rounds)) {
				b.Errorf("%s: steered_outbound_ipv4 moved by %d, want ≥ %d", c.name, got, perRound*int64(*rounds))
			}
			if c.redir && c.counters["redirect_ok"] == 0 {
				b.Errorf("%s: redirect_ok did not move: the sk_msg redirect was not used", c.name)
			}
			if !c.redir && c.counters["redirect_ok"] != 0 {
				b.Errorf("%s: redirect_ok moved by %d: the redirect was used although the pod opted out", c.name, c.counters["redirect_ok"])
			}
		}
	}
	if b.Failed() {
		b.FailNow()
	}

	md := markdown(cases)
	fmt.Print("\n" + md + "\n")
	for _, c := range cases {
		b.ReportMetric(median(c.rounds, func(r roundResult) float64 { return float64(r.connect.P50Ns) }), c.name+"-connect-p50-ns")
		b.ReportMetric(median(c.rounds, func(r roundResult) float64 { return float64(r.rr.P50Ns) / 1e3 }), c.name+"-rr-p50-µs")
		b.ReportMetric(median(c.rounds, func(r roundResult) float64 { return r.bulk.MBps }), c.name+"-bulk-MB/s")
	}
	if *report {
		if err := os.MkdirAll(filepath.Dir(reportFile), 0o755); err != nil {
			b.Fatalf("write report: %v", err)
		}
		if err := os.WriteFile(reportFile, []byte(md), 0o644); err != nil {
			b.Fatalf("write report: %v", err)
		}
		b.Logf("wrote %s", reportFile)
	}
}

// runCase runs one round of c: connect, rr, bulk; and collects the evidence.
func runCase(b *testing.B, c *benchCase, bin string) {
	b.Helper()
	before := c.proxy.stats(b)
	var cBefore map[string]uint64
	if c.agent != nil {
		cBefore = c.agent.Counters(b)
	}
	to := c.to.String()
	var rr roundResult
	var err error
	if rr.connect, err = runTool(b, c.pod, appUID, bin, otherCPU(), "connect", "--to", to, "--n", fmt.Sprint(*connects), "--warmup", fmt.Sprint(connectWarm)); err != nil {
		b.Fatalf("%s: %v", c.name, err)
	}
	rrArgs := []string{"rr", "--to", to, "--n", fmt.Sprint(*pingpong), "--warmup", fmt.Sprint(rrWarm), "--size", "64"}
	if rr.rr, err = runTool(b, c.pod, appUID, bin, otherCPU(), rrArgs...); err != nil {
		b.Fatalf("%s: %v", c.name, err)
	}
	if rr.rrSame, err = runTool(b, c.pod, appUID, bin, proxyCPU(), rrArgs...); err != nil {
		b.Fatalf("%s: %v", c.name, err)
	}
	if rr.bulk, err = runTool(b, c.pod, appUID, bin, otherCPU(), "bulk", "--to", to, "--bytes", fmt.Sprint(int64(*bulkMiB)<<20)); err != nil {
		b.Fatalf("%s: %v", c.name, err)
	}
	want := before.Accepted + int64(*connects+connectWarm+3)
	after := c.proxy.waitAccepted(b, want)
	c.eagain += rr.connect.EAGAIN + rr.rr.EAGAIN + rr.rrSame.EAGAIN + rr.bulk.EAGAIN
	c.accepted += after.Accepted - before.Accepted
	c.origMatch += after.OrigMatch - before.OrigMatch
	c.origOther += after.OrigOther - before.OrigOther
	c.origErr += after.OrigErr - before.OrigErr
	if c.agent != nil {
		for k, v := range c.agent.Counters(b) {
			if d := v - cBefore[k]; d != 0 {
				c.counters[k] += d
			}
		}
	}
	c.rounds = append(c.rounds, rr)
}

// spread is the median and range of one figure across rounds.
type spread struct{ med, lo, hi float64 }

func stats(rs []roundResult, f func(roundResult) float64) spread {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return spread{med: medianSorted(v), lo: v[0], hi: v[len(v)-1]}
}

func median(rs []roundResult, f func(roundResult) float64) float64 { return stats(rs, f).med }

func medianSorted(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func (s spread) format(prec int) string {
	f := func(x float64) string { return fmt.Sprintf("%.*f", prec, x) }
	return fmt.Sprintf("%s (%s – %s)", f(s.med), f(s.lo), f(s.hi))
}

func markdown(cases []*benchCase) string {
	var sb strings.Builder
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	none := cases[0]
	n := len(none.rounds)
	fmt.Fprintf(&sb, "# Steering benchmark\n\n")
	fmt.Fprintf(&sb, "Machine: %d CPUs (nproc), kernel %s, %s %s/%s.  \n", runtime.NumCPU(), unix.ByteSliceToString(uts.Release[:]),
		runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&sb, "Run: %s, %d rounds; each round runs every case once (the order rotates), per case and round: %d timed connects (after %d untimed), %d timed 64-byte ping-pongs over one connection (after %d untimed), %d MiB through the echo proxy.  \n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), n, *connects, connectWarm, *pingpong, rrWarm, *bulkMiB)
	fmt.Fprintf(&sb, "Reproduce: `%s`\n\n", reproduceCmd)
	fmt.Fprintf(&sb, "Each cell: median over the %d rounds of that round's figure (min – max across rounds).\n\n", n)
	sb.WriteString("| case | connect() p50 (ns) | connect() p99 (ns) | added to connect() p50 vs none (ns) | req/resp p50 (µs), app on another CPU | req/resp p99 (µs), another CPU | req/resp p50 (µs), app on the proxy's CPU | req/resp p99 (µs), proxy's CPU | bulk app→proxy→app (MB/s) | bulk vs none |\n")
	sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range cases {
		// Paired per round: case and none ran in the same round.
		added := make([]roundResult, n)
		ratio := make([]roundResult, n)
		for i := range n {
			added[i].connect.P50Ns = c.rounds[i].connect.P50Ns - none.rounds[i].connect.P50Ns
			ratio[i].bulk.MBps = c.rounds[i].bulk.MBps / none.rounds[i].bulk.MBps
		}
		addedS := "—"
		ratioS := "1"
		if c != none {
			addedS = stats(added, func(r roundResult) float64 { return float64(r.connect.P50Ns) }).format(0)
			ratioS = stats(ratio, func(r roundResult) float64 { return r.bulk.MBps }).format(2)
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c.name,
			stats(c.rounds, func(r roundResult) float64 { return float64(r.connect.P50Ns) }).format(0),
			stats(c.rounds, func(r roundResult) float64 { return float64(r.connect.P99Ns) }).format(0),
			addedS,
			stats(c.rounds, func(r roundResult) float64 { return float64(r.rr.P50Ns) / 1e3 }).format(1),
			stats(c.rounds, func(r roundResult) float64 { return float64(r.rr.P99Ns) / 1e3 }).format(1),
			stats(c.rounds, func(r roundResult) float64 { return float64(r.rrSame.P50Ns) / 1e3 }).format(1),
			stats(c.rounds, func(r roundResult) float64 { return float64(r.rrSame.P99Ns) / 1e3 }).format(1),
			stats(c.rounds, func(r roundResult) float64 { return r.bulk.MBps }).format(0),
			ratioS)
	}
	sb.WriteString(`
Placement: the proxy is pinned (taskset) to CPU ` + proxyCPU() + `; the app runs pinned to CPU ` + otherCPU() + ` for connect() and bulk, and on each CPU in turn for req/resp. Without pinning, req/resp latency swung between about 6 and 60 µs from one run to the next depending on where the scheduler put the two processes.

Cases (IPv4; the app is ` + "`steerbench`" + ` running inside the pod as uid 1000, the proxy is ` + "`steerbench proxy`" + `, an echo server on 127.0.0.1:4140 in the same pod as uid 2102 that reads SO_ORIGINAL_DST for each connection and echoes through a plain read/write loop):

- **none**: the app connects to 127.0.0.1:4140 itself. The pod is not enrolled and sits on a node whose agent runs in iptables mode, so no Sluice BPF program and no NAT rule sees it.
- **iptables**: the app connects to another pod's IP on port 9, where nothing listens; the agent's linkerd-init-style nat OUTPUT REDIRECT rule sends it to the proxy.
- **ebpf**: the same through the eBPF agent's cgroup/connect4 rewrite, the pod enrolled with ` + "`disableRedirect: true`" + `.
- **ebpf+sk_msg**: the same with the sk_msg redirect between the app's and the proxy's sockets.

Figures:

- **connect()**: wall time of the blocking connect(2) syscall of a fresh socket (timed with the monotonic clock around the call), each socket closed with SO_LINGER 0. "Added to connect()" is the case's p50 minus none's p50 of the same round; its median and range are over rounds.
- **req/resp**: one connection, TCP_NODELAY, write 64 bytes and read the 64-byte echo, timed per ping-pong from the app (blocking syscalls). Measured twice per round: with the app pinned to another CPU than the proxy (every ping-pong then includes a cross-CPU wakeup, which on this VM costs tens of µs and dominates), and with the app pinned to the proxy's CPU (no cross-CPU wakeup: the path's own cost).
- **bulk**: one connection; one thread writes the bytes in 64 KiB writes while another reads the echo; payload MB (10^6 bytes) in one direction divided by the time from the first write to the last byte read. Each byte crosses app→proxy and proxy→app.

Evidence checked by the benchmark (it fails otherwise): a direct connection to each steered case's target is refused (tried as the proxy's uid, which is never steered), every connection of the app reached the proxy, SO_ORIGINAL_DST named the target on steered connections, the eBPF agent's ` + "`steered_outbound_ipv4`" + ` counter moved by at least the number of connections in both eBPF cases, and ` + "`redirect_ok`" + ` moved in ebpf+sk_msg and not at all in ebpf.

The app's sockets are blocking. Under the sk_msg redirect a blocking read(2) can fail with EAGAIN (the kernel's
sockmap receive path, tcp_bpf_recvmsg, gives up when its wait is woken without data, e.g. by a write-space wakeup
from the concurrent writer of the bulk test); steerbench retries such reads and counts them below. Applications
using non-blocking sockets (Go, epoll loops) do not notice; a blocking-socket application that treats EAGAIN as
an error would.

TCP_MAXSEG of the bulk connection is listed because it differs between cases: under iptables the socket's route is
chosen for the original destination (the pod network's veth, MTU 1500) before the nat OUTPUT rule redirects the SYN
to loopback, so the connection keeps an MSS of about 1448 instead of loopback's 65483. Bulk figures across cases
therefore compare different segment sizes, not only different steering.

`)
	sb.WriteString("| case | connections accepted by the proxy | SO_ORIGINAL_DST = target | failed | app's blocking reads that returned EAGAIN | bulk socket's TCP_MAXSEG | eBPF counters moved during the case |\n|---|---:|---:|---:|---:|---:|---|\n")
	for _, c := range cases {
		var ks []string
		for k := range c.counters {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		var parts []string
		for _, k := range ks {
			parts = append(parts, fmt.Sprintf("%s %d", k, c.counters[k]))
		}
		cs := strings.Join(parts, ", ")
		if c.agent == nil {
			cs = "— (no BPF programs on this node)"
		}
		mss := map[int]bool{}
		var msss []string
		for _, r := range c.rounds {
			if !mss[r.bulk.MSS] {
				mss[r.bulk.MSS] = true
				msss = append(msss, fmt.Sprint(r.bulk.MSS))
			}
		}
		fmt.Fprintf(&sb, "| %s | %d | %d | %d | %d | %s | %s |\n", c.name, c.accepted, c.origMatch, c.origErr, c.eagain, strings.Join(msss, ", "), cs)
	}
	return sb.String()
}
