package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/bench/benchkit"
	"github.com/sluice-mesh/sluice/test/destinationtest"
	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest/identitytest"
)

const (
	appUID   = 1000
	proxyUID = int(api.DefaultProxyUID)
	// The server pod's application ports; the stats port is not steered.
	portHTTP  = 8080
	portGRPC  = 9090
	portSink  = 5001
	portStats = 7070
	adminPort = api.DefaultAdminPort
	namespace = "default"
	// rssInterval is how often the proxies' VmRSS is sampled during a run.
	rssInterval = 100 * time.Millisecond
)

// The pods' CPUs: the client pod on the first, the server pod on the last.
func clientCPU() string { return "0" }
func serverCPU() string { return fmt.Sprint(runtime.NumCPU() - 1) }

// pair is one case: its client and server pods and what runs in them.
type pair struct {
	*CaseResult
	slug     string // short name for pods and services
	cli, srv *netns.Pod
	// cliProxy and srvProxy are the proxies' processes (none without a mesh).
	cliProxy, srvProxy benchkit.Procs
	procs              []*benchkit.Process
	// agent is the eBPF agent of the case's node, for its counters; nil on
	// the iptables node.
	agent *agenttest.Agent
	// sluice is true for the Sluice cases, redirect for eBPF+sk_msg, mtls
	// for mutual TLS between the proxies.
	sluice, redirect, mtls bool
	// iptables is true where nat rules steer (the agent's or nginx's).
	iptables bool
}

// service is the name the client asks for.
func (p *pair) service(port uint16) string {
	return fmt.Sprintf("web-%s.%s.svc.cluster.local:%d", p.slug, namespace, port)
}

// fixture is the two nodes with every case's pods.
type fixture struct {
	tb               testing.TB
	cfg              Config
	loadgen, proxy   string
	ebpfAgent        *agenttest.Agent
	pairs            []*pair
	nodeIPT, nodeEBP *netns.Node
}

// newFixture builds the tools and starts every case in names (the direct
// case always: it is the baseline).
func newFixture(tb testing.TB, cfg Config, names []string) *fixture {
	tb.Helper()
	netns.RequireRoot(tb)
	for _, cmd := range []string{"nsenter", "taskset", "iptables", "ip6tables", "iptables-restore", "iptables-save", "nginx"} {
		netns.RequireCommand(tb, cmd)
	}
	if _, err := os.Stat(nginxStreamModule); err != nil {
		netns.RequireCommand(tb, nginxStreamModule) // fails in CI, skips outside with what is missing
	}
	want := map[string]bool{CaseDirect: true}
	for _, n := range names {
		want[n] = true
	}
	f := &fixture{tb: tb, cfg: cfg,
		loadgen: netns.BuildTool(tb, "./test/cmd/loadgen"),
		proxy:   netns.BuildTool(tb, "./proxy/cmd/sluice-proxy")}

	f.nodeIPT = netns.NewNode(tb)
	iptAgent := agenttest.Start(tb, f.nodeIPT, agenttest.Options{Mode: api.ModeIPTables})
	destIPT := destinationtest.StartOn(tb, netip.AddrPortFrom(f.nodeIPT.GatewayV4(), 0))
	f.nodeEBP = netns.NewNode(tb)
	f.ebpfAgent = agenttest.Start(tb, f.nodeEBP, agenttest.Options{Mode: api.ModeEBPF})
	destEBP := destinationtest.StartOn(tb, netip.AddrPortFrom(f.nodeEBP.GatewayV4(), 0))
	if st, err := f.ebpfAgent.Client.Status(context.Background()); err != nil || !st.RedirectEnabled {
		tb.Fatalf("eBPF agent: redirect not enabled: %v %+v", err, st)
	}

	for _, name := range Cases {
		if !want[name] {
			continue
		}
		var p *pair
		switch name {
		case CaseDirect:
			p = f.newPair(name, "direct", f.nodeIPT)
		case CaseIPTables:
			p = f.newPair(name, "ipt", f.nodeIPT)
			p.sluice, p.iptables = true, true
			f.startSluice(p, iptAgent, destIPT, nil)
		case CaseEBPF:
			p = f.newPair(name, "ebpf", f.nodeEBP)
			p.sluice, p.agent = true, f.ebpfAgent
			f.startSluice(p, f.ebpfAgent, destEBP, nil)
		case CaseSKMsg:
			p = f.newPair(name, "sk", f.nodeEBP)
			p.sluice, p.redirect, p.agent = true, true, f.ebpfAgent
			f.startSluice(p, f.ebpfAgent, destEBP, nil)
		case CaseMTLS:
			p = f.newPair(name, "mtls", f.nodeEBP)
			p.sluice, p.redirect, p.mtls, p.agent = true, true, true, f.ebpfAgent
			f.startSluice(p, f.ebpfAgent, destEBP, identitytest.Start(tb, identitytest.Options{Addr: netip.AddrPortFrom(f.nodeEBP.GatewayV4(), 0)}))
		case CaseNginx:
			p = f.newPair(name, "nginx", f.nodeIPT)
			p.iptables = true
			f.startNginx(p)
		}
		f.pairs = append(f.pairs, p)
	}
	for _, p := range f.pairs {
		if p.sluice || p.iptables {
			var err error
			if p.IdleRSS[0], err = rssSum(p.cliProxy); err != nil {
				tb.Fatal(err)
			}
			if p.IdleRSS[1], err = rssSum(p.srvProxy); err != nil {
				tb.Fatal(err)
			}
		}
	}
	// Every path answers every protocol before anything is measured.
	for _, p := range f.pairs {
		for _, w := range []Workload{{Key: "check-http", Proto: "http"}, {Key: "check-grpc", Proto: "grpc"}} {
			res, err := f.load(p, w, "--rate", "100", "--warmup", "0", "--duration", "300ms")
			if err == nil {
				err = Validate(w, res)
			}
			if err != nil {
				tb.Fatalf("%s does not answer: %v", p.Name, err)
			}
		}
		w := Workload{Key: "check-tcp", Kind: Bulk, Proto: "tcp", Bytes: 1 << 20}
		res, err := f.load(p, w, "--bytes", fmt.Sprint(w.Bytes))
		if err == nil {
			err = Validate(w, res)
		}
		if err != nil {
			tb.Fatalf("%s does not carry TCP: %v", p.Name, err)
		}
	}
	return f
}

// newPair creates a case's pods on node and starts the application in the
// server pod.
func (f *fixture) newPair(name, slug string, node *netns.Node) *pair {
	tb := f.tb
	tb.Helper()
	p := &pair{CaseResult: &CaseResult{Name: name, Runs: map[string][]Run{}, Counters: map[string]uint64{}}, slug: slug,
		cli: node.AddPod(tb, slug+"-cli", netns.PodOptions{}),
		srv: node.AddPod(tb, slug+"-srv", netns.PodOptions{})}
	app := benchkit.StartProcess(tb, p.srv, appUID, serverCPU(), nil, f.loadgen, "serve",
		"--http", fmt.Sprintf(":%d", portHTTP), "--grpc", fmt.Sprintf(":%d", portGRPC),
		"--sink", fmt.Sprintf(":%d", portSink), "--stats", fmt.Sprintf(":%d", portStats))
	lines := make(chan string, 4)
	app.Run(tb, lines)
	app.WaitLine(tb, lines, "READY")
	p.procs = append(p.procs, app)
	return p
}

// startSluice runs sluice-proxy in both pods of p, enrolls them with agent
// and announces the server pod's endpoints in dest. With an identity
// service, the proxies get their certificates from it and discovery gives
// the server's identity: mutual TLS between them.
func (f *fixture) startSluice(p *pair, agent *agenttest.Agent, dest *destinationtest.Server, id *identitytest.Server) {
	tb := f.tb
	tb.Helper()
	accounts := []string{"client-" + p.slug, "web-" + p.slug} // the client's and the server's
	labels := map[string]string{"namespace": namespace, "service": "web-" + p.slug, "pod": p.srv.Name(),
		"deployment": "web-" + p.slug, "serviceaccount": accounts[1]}
	serverID := ""
	if id != nil {
		serverID = meshmeta.IdentityName(accounts[1], namespace, meshmeta.DefaultTrustDomain)
	}
	ep := func(port uint16) discovery.Endpoint {
		return discovery.Endpoint{Addr: netip.AddrPortFrom(p.srv.IPv4(), port), Weight: 1, H2: true, Labels: maps.Clone(labels), Identity: serverID}
	}
	dest.Set(p.service(portHTTP), ep(portHTTP))
	dest.Set(p.service(portGRPC), ep(portGRPC))
	dest.Set(netip.AddrPortFrom(p.srv.IPv4(), portSink).String(), ep(portSink))
	env := []string{
		"SLUICE_PROXY_DESTINATION_ADDR=" + dest.Addr().String(),
		"SLUICE_PROXY_POD_NAMESPACE=" + namespace,
		"SLUICE_PROXY_OPAQUE_PORTS=" + fmt.Sprint(portSink),
		"SLUICE_PROXY_LOG_LEVEL=warn",
	}
	for i, pod := range []*netns.Pod{p.cli, p.srv} {
		cpu := []string{clientCPU(), serverCPU()}[i]
		penv := slices.Clone(env)
		if id != nil {
			token := identitytest.WriteToken(tb, id.Token(namespace, accounts[i]))
			for k, v := range id.Env(meshmeta.IdentityName(accounts[i], namespace, meshmeta.DefaultTrustDomain), token) {
				penv = append(penv, "SLUICE_PROXY_"+k+"="+v)
			}
		}
		proc := benchkit.StartProcess(tb, pod, proxyUID, cpu, penv, f.proxy)
		proc.Run(tb, nil)
		admin := fmt.Sprintf("http://%s", netip.AddrPortFrom(pod.IPv4(), adminPort))
		proc.WaitFor(tb, "live", func() error { _, err := benchkit.HTTPGet(admin + "/live"); return err })
		agent.Enroll(tb, pod, api.PodConfig{
			SkipInboundPorts: []api.PortRange{{Lo: portStats, Hi: portStats}},
			DisableRedirect:  !p.redirect,
			ProbePort:        api.DefaultProbePort,
		})
		proc.WaitFor(tb, "ready (steering probe answered)", func() error { _, err := benchkit.HTTPGet(admin + "/ready"); return err })
		p.procs = append(p.procs, proc)
		if i == 0 {
			p.cliProxy = benchkit.Procs{proc.PID()}
		} else {
			p.srvProxy = benchkit.Procs{proc.PID()}
		}
	}
}

// load runs the load generator in p's client pod for w with args and
// returns its result; a failed run is an error.
func (f *fixture) load(p *pair, w Workload, args ...string) (benchkit.LoadResult, error) {
	port := map[string]uint16{"http": portHTTP, "grpc": portGRPC, "tcp": portSink}[w.Proto]
	full := []string{"-c", clientCPU(), f.loadgen, w.Proto, "--to", netip.AddrPortFrom(p.srv.IPv4(), port).String()}
	switch w.Proto {
	case "http":
		full = append(full, "--host", p.service(port))
	case "grpc":
		full = append(full, "--authority", p.service(port))
	}
	cmd := p.cli.Command(appUID, "taskset", append(full, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	guard := time.AfterFunc(f.cfg.Warmup+f.cfg.Duration+f.cfg.MaxDuration+2*time.Minute, func() { _ = cmd.Process.Kill() })
	out, err := cmd.Output()
	guard.Stop()
	var res benchkit.LoadResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		return res, fmt.Errorf("loadgen %s %v: %v %v: %q %s", w.Proto, args, err, jerr, out, stderr.String())
	}
	if err != nil {
		return res, fmt.Errorf("loadgen %s %v: %v: %d failed, first: %s; %s", w.Proto, args, err, res.Errors, res.FirstError, stderr.String())
	}
	return res, nil
}

// rssSum is the processes' VmRSS, KiB.
func rssSum(ps benchkit.Procs) (int64, error) {
	ms, err := ps.Memory()
	return benchkit.TotalRSS(ms), err
}

// measure runs w once against p, with the proxies' and the pods' CPU
// time and the proxies' memory around it.
func (f *fixture) measure(p *pair, w Workload) {
	tb := f.tb
	tb.Helper()
	for _, proc := range p.procs {
		proc.Alive(tb)
	}
	var counters map[string]uint64
	if p.agent != nil {
		counters = p.agent.Counters(tb)
	}
	cli0, err1 := p.cliProxy.CPU()
	srv0, err2 := p.srvProxy.CPU()
	pods := []string{p.cli.CgroupPath(), p.srv.CgroupPath()}
	m0, err3 := benchkit.CgroupCPU(pods...)
	if err := errors.Join(err1, err2, err3); err != nil {
		tb.Fatalf("%s: %v", p.Name, err)
	}
	cs, ss := benchkit.SampleRSS(p.cliProxy, rssInterval), benchkit.SampleRSS(p.srvProxy, rssInterval)
	res, lerr := f.load(p, w, f.cfg.Args(w)...)
	crss, err1 := cs.Finish()
	srss, err2 := ss.Finish()
	cli1, err3 := p.cliProxy.CPU()
	srv1, err4 := p.srvProxy.CPU()
	m1, err5 := benchkit.CgroupCPU(pods...)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		tb.Fatalf("%s: read CPU time or memory: %v", p.Name, err)
	}
	if lerr == nil {
		lerr = Validate(w, res)
	}
	if lerr != nil {
		// Not a row: the run fails, after the other cases have run so the
		// log shows whether the failure is this case's alone.
		tb.Errorf("%s, %s: %v", p.Name, w.Key, lerr)
		return
	}
	scale := f.cfg.Measured(w, res)
	p.Runs[w.Key] = append(p.Runs[w.Key], Run{Res: res,
		ClientCPU: time.Duration(float64(cli1-cli0) * scale), ServerCPU: time.Duration(float64(srv1-srv0) * scale),
		Pods:      time.Duration(float64(m1-m0) * scale),
		ClientRSS: benchkit.TotalRSS(crss), ServerRSS: benchkit.TotalRSS(srss)})
	if p.agent != nil {
		for k, v := range p.agent.Counters(tb) {
			if d := v - counters[k]; d != 0 {
				p.Counters[k] += d
			}
		}
	}
}

// runRounds runs every workload against every case, cfg.Rounds times,
// rotating the order of the cases.
func (f *fixture) runRounds() {
	start := time.Now()
	for r := range f.cfg.Rounds {
		for _, w := range f.cfg.Workloads() {
			for i := range f.pairs {
				f.measure(f.pairs[(i+r)%len(f.pairs)], w)
			}
		}
		f.tb.Logf("round %d/%d done after %v", r+1, f.cfg.Rounds, time.Since(start).Round(time.Second))
	}
}

// results returns the cases' results in report order.
func (f *fixture) results() []*CaseResult {
	out := make([]*CaseResult, len(f.pairs))
	for i, p := range f.pairs {
		out[i] = p.CaseResult
	}
	return out
}

// sortedCounters renders counters as "name n, ...".
func sortedCounters(c map[string]uint64) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, c[k]))
	}
	return strings.Join(parts, ", ")
}

// writeReport writes the Markdown report to path and its charts next to
// it, in a directory named like the report without ".md".
func writeReport(r *Report, path string) error {
	dir := strings.TrimSuffix(path, ".md")
	r.ChartDir = filepath.Base(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := r.WriteCharts(dir); err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(r.Markdown()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
