package proxytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/destinationtest"
	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest/identitytest"
)

// Users of the processes in a pod.
const (
	// AppUID is the user applications run as.
	AppUID = 1000
	// ProxyUID is the proxy's user, never steered.
	ProxyUID = api.DefaultProxyUID
	// AdminPort is the proxy's admin port (/metrics, /ready).
	AdminPort = api.DefaultAdminPort
)

// Namespace is the Kubernetes namespace every meshed pod claims to be in.
const Namespace = "default"

// Options of a Mesh.
type Options struct {
	// Mode is the interception mode, ebpf (default) or iptables.
	Mode api.Mode
	// Agent holds further agent options; Mode above overrides Agent.Mode.
	Agent agenttest.Options
	// Identity, when not nil, runs an identity service and gives every
	// pod's proxy an identity (mutual TLS between the proxies); nil: the
	// proxies have none, as without a control plane.
	Identity *IdentityOptions
}

// IdentityOptions configure the mesh's identity service.
type IdentityOptions struct {
	// CertLifetime is how long certificates last; 0: 24 h.
	CertLifetime time.Duration
}

// Mesh is a netns node with the node agent, a destination server and
// meshed pods.
type Mesh struct {
	Node  *netns.Node
	Agent *agenttest.Agent
	// Dest is the destination service every proxy of the mesh asks.
	Dest *destinationtest.Server
	// Identity is the identity service (nil without Options.Identity): an
	// in-process controlplane/identity on the node's IPv4 gateway whose
	// TokenReviews accept the tokens the fixture gives each pod.
	Identity *identitytest.Server
	// foreign is the identity service of ForeignCA pods, started with the
	// first of them.
	foreign *identitytest.Server
	// ProxyBin and AppBin are the built sluice-proxy and testapp.
	ProxyBin, AppBin string
	Mode             api.Mode
}

// Start builds sluice-proxy and testapp, creates a node, starts the agent
// in o.Mode and a destination server on the node's IPv4 gateway. It
// checks its own prerequisites (root, nsenter, iptables in iptables mode).
func Start(t *testing.T, o Options) *Mesh {
	t.Helper()
	netns.RequireRoot(t)
	netns.RequireCommand(t, "nsenter")
	if o.Mode == "" {
		o.Mode = api.ModeEBPF
	}
	if o.Mode == api.ModeIPTables {
		netns.RequireCommand(t, "iptables")
		netns.RequireCommand(t, "ip6tables")
	}
	o.Agent.Mode = o.Mode
	m := &Mesh{
		ProxyBin: netns.BuildTool(t, "./proxy/cmd/sluice-proxy"),
		AppBin:   netns.BuildTool(t, "./test/cmd/testapp"),
		Mode:     o.Mode,
	}
	m.Node = netns.NewNode(t)
	m.Agent = agenttest.Start(t, m.Node, o.Agent)
	m.Dest = destinationtest.StartOn(t, netip.AddrPortFrom(m.Node.GatewayV4(), 0))
	if o.Identity != nil {
		m.Identity = identitytest.Start(t, identitytest.Options{
			Addr:         netip.AddrPortFrom(m.Node.GatewayV4(), 0),
			CertLifetime: o.Identity.CertLifetime,
			ClockSkew:    time.Second,
		})
	}
	return m
}

// IdentityName is the TLS identity of service account sa of Namespace.
func IdentityName(sa string) string {
	return meshmeta.IdentityName(sa, Namespace, meshmeta.DefaultTrustDomain)
}

// ServicePath is the destination path of a service of Namespace, as the
// proxy asks for it: "name.default.svc.cluster.local:port".
func ServicePath(name string, port uint16) string {
	return fmt.Sprintf("%s.%s.svc.cluster.local:%d", name, Namespace, port)
}

// PodOptions configure one meshed pod.
type PodOptions struct {
	// Env sets further SLUICE_PROXY_* variables (or overrides the
	// fixture's).
	Env map[string]string
	// OpaquePorts is SLUICE_PROXY_OPAQUE_PORTS.
	OpaquePorts string
	// Steering is the pod's enrollment; ProbePort defaults to the proxy's
	// probe port.
	Steering api.PodConfig
	// NoDiscovery leaves SLUICE_PROXY_DESTINATION_ADDR empty: every
	// connection goes to its original destination.
	NoDiscovery bool
	// ServiceAccount is the pod's service account, whose identity its
	// proxy gets in a mesh with identity; "" means the pod's name.
	ServiceAccount string
	// NoIdentity gives the proxy no identity even in a mesh with one.
	NoIdentity bool
	// ForeignCA gives the proxy its certificate, and its trust anchors,
	// from a second identity service with anchors of its own, as if the
	// pod belonged to another mesh: the mesh's proxies find its
	// certificate from an unknown authority, and it theirs.
	ForeignCA bool
}

// MeshedPod is a pod with a running sluice-proxy, enrolled with the agent
// and steered.
type MeshedPod struct {
	*netns.Pod
	Mesh       *Mesh
	Enrollment api.Enrollment
	// Identity is the proxy's TLS identity ("" without one); IdentityDir
	// is its SLUICE_PROXY_IDENTITY_DIR, where it writes its certificate.
	Identity, IdentityDir string
	// TokenFile holds the service-account token the proxy presents.
	TokenFile string

	proxy *exec.Cmd
	log   *tailBuffer
	exit  chan struct{} // closed when the proxy exited
	err   error         // the proxy's exit, once exit is closed
}

// AddPod creates pod name, starts sluice-proxy in it as uid 2102 with the
// environment of proxy/README.md (destination service: m.Dest, namespace
// Namespace, the pod's addresses, log level debug), enrolls the pod with
// the steering probe and waits until the proxy reports /ready on
// podIP:4191.
func (m *Mesh) AddPod(t *testing.T, name string, po PodOptions) *MeshedPod {
	t.Helper()
	pod := m.Node.AddPod(t, name, netns.PodOptions{})
	env := map[string]string{
		"SLUICE_PROXY_POD_NAMESPACE": Namespace,
		// As the injector sets it from status.podIPs.
		"SLUICE_PROXY_POD_IPS":    pod.IPv4().String() + "," + pod.IPv6().String(),
		"SLUICE_PROXY_LOG_LEVEL":  "debug",
		"SLUICE_PROXY_LOG_FORMAT": "text",
	}
	if !po.NoDiscovery {
		env["SLUICE_PROXY_DESTINATION_ADDR"] = m.Dest.Addr().String()
	}
	if po.OpaquePorts != "" {
		env["SLUICE_PROXY_OPAQUE_PORTS"] = po.OpaquePorts
	}
	p := &MeshedPod{Pod: pod, Mesh: m, log: &tailBuffer{max: 256 << 10}, exit: make(chan struct{})}
	if m.Identity != nil && !po.NoIdentity {
		sa := po.ServiceAccount
		if sa == "" {
			sa = name
		}
		id := m.Identity
		if po.ForeignCA {
			if m.foreign == nil {
				m.foreign = identitytest.Start(t, identitytest.Options{Addr: netip.AddrPortFrom(m.Node.GatewayV4(), 0), ClockSkew: time.Second})
			}
			id = m.foreign
		}
		p.Identity = IdentityName(sa)
		p.TokenFile = identitytest.WriteToken(t, id.Token(Namespace, sa))
		p.IdentityDir = proxyDir(t)
		for k, v := range id.Env(p.Identity, p.TokenFile) {
			env["SLUICE_PROXY_"+k] = v
		}
		env["SLUICE_PROXY_IDENTITY_DIR"] = p.IdentityDir
	}
	maps.Copy(env, po.Env)
	p.proxy = pod.Command(ProxyUID, m.ProxyBin)
	p.proxy.Env = []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		p.proxy.Env = append(p.proxy.Env, k+"="+env[k])
	}
	p.proxy.Stdout, p.proxy.Stderr = p.log, p.log
	if err := p.proxy.Start(); err != nil {
		t.Fatalf("proxytest: start sluice-proxy in %s: %v", name, err)
	}
	go func() { p.err = p.proxy.Wait(); close(p.exit) }()
	t.Cleanup(func() { p.stopProxy(t) })

	cfg := po.Steering
	if cfg.ProbePort == 0 {
		cfg.ProbePort = api.DefaultProbePort
	}
	// The proxy must be listening before the agent looks for its inbound
	// listener; the agent retries the probe until the proxy answers.
	p.waitHTTP(t, "/live", 30*time.Second)
	p.Enrollment = m.Agent.Enroll(t, pod, cfg)
	p.waitHTTP(t, "/ready", 60*time.Second)
	return p
}

// proxyDir makes a directory the proxy's user owns, removed at cleanup.
func proxyDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-proxy-identity-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, ProxyUID, ProxyUID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// stopProxy ends the proxy with SIGTERM (SIGKILL after 10 s) and logs its
// output if the test failed.
func (p *MeshedPod) stopProxy(t *testing.T) {
	select {
	case <-p.exit:
	default:
		_ = p.proxy.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exit:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.proxy.Process.Pid, syscall.SIGKILL)
			<-p.exit
		}
	}
	if t.Failed() {
		t.Logf("sluice-proxy in pod %s (%v), last output:\n%s", p.Name(), p.err, p.log.String())
	}
}

// ProxyLog returns the tail of the proxy's output.
func (p *MeshedPod) ProxyLog() string { return p.log.String() }

// AdminAddr is the proxy's admin address on the pod's IPv4 address.
func (p *MeshedPod) AdminAddr() netip.AddrPort { return netip.AddrPortFrom(p.IPv4(), AdminPort) }

// waitHTTP polls path on the admin port until it answers 200.
func (p *MeshedPod) waitHTTP(t *testing.T, path string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last string
	for {
		select {
		case <-p.exit:
			t.Fatalf("proxytest: sluice-proxy in %s exited (%v) while waiting for %s:\n%s", p.Name(), p.err, path, p.log.String())
		default:
		}
		code, body, err := p.admin(http.MethodGet, path)
		if err == nil && code == http.StatusOK {
			return
		}
		last = fmt.Sprintf("%d %q %v", code, body, err)
		if time.Now().After(deadline) {
			t.Fatalf("proxytest: %s of sluice-proxy in %s not 200 after %s (last: %s)\nproxy:\n%s\nagent:\n%s",
				path, p.Name(), limit, last, p.log.String(), p.Mesh.Agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// admin sends a request to the admin server from the host.
func (p *MeshedPod) admin(method, path string) (int, []byte, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequest(method, "http://"+p.AdminAddr().String()+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Metrics scrapes and parses the proxy's /metrics.
func (p *MeshedPod) Metrics(t testing.TB) Metrics {
	t.Helper()
	code, body, err := p.admin(http.MethodGet, "/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("proxytest: scrape %s/metrics: %d %v\n%.2000s", p.AdminAddr(), code, err, body)
	}
	m, err := ParseMetrics(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("proxytest: %s/metrics: %v\n%.4000s", p.AdminAddr(), err, body)
	}
	return m
}

// Eventually scrapes the proxy's metrics until check returns nil, and fails
// t with check's last error if it never does within 15 s (a hang guard:
// some series are recorded just after the client has its answer, such as
// a response's end or a connection's close).
func (p *MeshedPod) Eventually(t testing.TB, check func(Metrics) error) Metrics {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		m := p.Metrics(t)
		err := check(m)
		if err == nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxytest: metrics of %s: %v", p.Name(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Endpoint is the pod's port as the destination service announces a
// meshed pod of the deployment and service named like the pod: weight 1,
// protocol hint h2, the proxy's TLS identity (if it has one), metric labels
// namespace, service, pod, deployment and serviceaccount.
func (p *MeshedPod) Endpoint(port uint16, service string) discovery.Endpoint {
	return discovery.Endpoint{
		Addr:     netip.AddrPortFrom(p.IPv4(), port),
		Weight:   1,
		H2:       true,
		Identity: p.Identity,
		Labels: map[string]string{
			"namespace":      Namespace,
			"service":        service,
			"pod":            p.Name(),
			"deployment":     service,
			"serviceaccount": service,
		},
	}
}

// App starts `testapp serve args...` in the pod as AppUID and waits until
// it listens. It is stopped at cleanup.
func (p *MeshedPod) App(t *testing.T, args ...string) *App {
	t.Helper()
	cmd := p.Command(AppUID, p.Mesh.AppBin, append([]string{"serve"}, args...)...)
	a := &App{pod: p, cmd: cmd, stderr: &tailBuffer{max: 64 << 10}, events: make(chan json.RawMessage, 100000)}
	cmd.Stderr = a.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("proxytest: start testapp serve in %s: %v", p.Name(), err)
	}
	exited := make(chan struct{})
	ready := make(chan error, 2) // the ready line, then the end of output
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		first := true
		for sc.Scan() {
			if first {
				first = false
				ready <- json.Unmarshal(sc.Bytes(), &a.Ready)
				continue
			}
			select {
			case a.events <- json.RawMessage(slices.Clone(sc.Bytes())):
			default: // nobody reads them: drop rather than block the app
			}
		}
		ready <- fmt.Errorf("testapp exited before it was ready")
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("testapp serve %v in pod %s, stderr:\n%s", args, p.Name(), a.stderr.String())
		}
	})
	select {
	case err := <-ready:
		if err != nil || a.Ready.Event != "ready" {
			t.Fatalf("proxytest: testapp serve in %s: %v (ready line %+v)\n%s", p.Name(), err, a.Ready, a.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("proxytest: testapp serve in %s not ready after 30s\n%s", p.Name(), a.stderr.String())
	}
	return a
}

// App is a running `testapp serve`.
type App struct {
	// Ready is its ready line: the addresses it listens on.
	Ready struct {
		Event   string `json:"event"`
		Name    string `json:"name"`
		HTTP    string `json:"http"`
		GRPC    string `json:"grpc"`
		TCPEcho string `json:"tcp_echo"`
		Opaque  string `json:"opaque"`
	}
	pod    *MeshedPod
	cmd    *exec.Cmd
	stderr *tailBuffer
	events chan json.RawMessage
}

// Next waits (up to 30 s) for the app's next event of kind ("tcp",
// "opaque", "grpc"), skipping others, and decodes it into v.
func (a *App) Next(t testing.TB, kind string, v any) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case raw := <-a.events:
			var head struct{ Event string }
			if json.Unmarshal(raw, &head) != nil || head.Event != kind {
				continue
			}
			if err := json.Unmarshal(raw, v); err != nil {
				t.Fatalf("proxytest: decode %s event %s: %v", kind, raw, err)
			}
			return
		case <-timeout:
			t.Fatalf("proxytest: no %s event from the app in %s after 30s", kind, a.pod.Name())
		}
	}
}

// Drain discards the app's events so far, so that Next returns the events
// of what follows.
func (a *App) Drain() {
	for {
		select {
		case <-a.events:
		default:
			return
		}
	}
}

// Run runs `testapp args...` (a client) in the pod as AppUID and returns
// its stdout; a non-zero exit or a run over 5 minutes fails t.
func (p *MeshedPod) Run(t testing.TB, args ...string) []byte {
	t.Helper()
	return p.Exec(t, p.Mesh.AppBin, args...)
}

// Exec runs any program (curl, h2load, sh) in the pod as AppUID and
// returns its stdout; a non-zero exit or a run over 5 minutes fails t.
func (p *MeshedPod) Exec(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := p.Output(5*time.Minute, name, args...)
	if err != nil {
		t.Fatalf("proxytest: %s %s in %s: %v\nstdout: %.4000s", name, strings.Join(args, " "), p.Name(), err, out)
	}
	return out
}

// Output runs a program in the pod as AppUID, killing it after limit, and
// returns its stdout; the error carries its stderr. Unlike Exec it can be
// called from any goroutine.
func (p *MeshedPod) Output(limit time.Duration, name string, args ...string) ([]byte, error) {
	return output(p.Pod, limit, name, args...)
}

// output runs a program in pod as AppUID, killing it after limit.
func output(pod *netns.Pod, limit time.Duration, name string, args ...string) ([]byte, error) {
	cmd := pod.Command(AppUID, name, args...)
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	timer := time.AfterFunc(limit, func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	err := cmd.Wait()
	if !timer.Stop() {
		err = fmt.Errorf("killed after %s: %w", limit, err)
	}
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%w; stderr: %s", err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// PlainPod is a pod without a proxy, an unmeshed client: its connections
// go to their destinations directly.
type PlainPod struct {
	*netns.Pod
	Mesh *Mesh
}

// AddPlainPod creates pod name without a proxy and without enrollment.
func (m *Mesh) AddPlainPod(t *testing.T, name string) *PlainPod {
	t.Helper()
	return &PlainPod{Pod: m.Node.AddPod(t, name, netns.PodOptions{}), Mesh: m}
}

// Run runs `testapp args...` in the pod as AppUID and returns its stdout;
// a non-zero exit or a run over 5 minutes fails t.
func (p *PlainPod) Run(t testing.TB, args ...string) []byte {
	t.Helper()
	out, err := output(p.Pod, 5*time.Minute, p.Mesh.AppBin, args...)
	if err != nil {
		t.Fatalf("proxytest: testapp %s in %s: %v\nstdout: %.4000s", strings.Join(args, " "), p.Name(), err, out)
	}
	return out
}

// URL is an http:// URL to the pod's IPv4 address.
func (p *MeshedPod) URL(port uint16, path string) string {
	return "http://" + net.JoinHostPort(p.IPv4().String(), strconv.Itoa(int(port))) + path
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	b       []byte
	max     int
	dropped int
}

func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if over := len(w.b) - w.max; over > 0 {
		w.dropped += over
		w.b = append(w.b[:0], w.b[over:]...)
	}
	return len(p), nil
}

func (w *tailBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dropped > 0 {
		return fmt.Sprintf("[%d earlier bytes dropped]\n%s", w.dropped, w.b)
	}
	return string(w.b)
}
