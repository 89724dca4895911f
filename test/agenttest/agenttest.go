// Package agenttest runs a real sluice-agent for tests on a netns node: its
// own pin root, cgroup and state directory, so tests run in parallel without
// touching a real installation, and an uninstall at cleanup even when the
// test failed.
package agenttest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/loader"
	"github.com/sluice-mesh/sluice/bpf"
	"github.com/sluice-mesh/sluice/test/netns"
)

// Options of a test agent.
type Options struct {
	// Mode is ebpf (default) or iptables.
	Mode api.Mode
	// NoRedirect runs without the sk_msg redirect.
	NoRedirect bool
	// MaxPods sizes the pod maps (default 1024).
	MaxPods int
	// Caps, when set, runs the agent as root with only these capabilities
	// (setpriv --bounding-set), e.g. "bpf", "net_admin".
	Caps []string
	// InNodeCgroup runs the agent inside the node's cgroup, below the
	// programs' attach point, as a node agent runs below the cgroup root.
	InNodeCgroup bool
	// Args are extra arguments of `sluice-agent run`.
	Args []string
}

// Agent is a sluice-agent process for one test node.
type Agent struct {
	Bin         string
	PinRoot     string
	StateDir    string
	Socket      string
	MetricsAddr string
	Client      *api.Client
	node        *netns.Node
	opts        Options

	mu     sync.Mutex
	cmd    *exec.Cmd
	stderr *lockedBuffer
}

// Start builds sluice-agent and runs it for node.
func Start(t testing.TB, node *netns.Node, opts Options) *Agent {
	t.Helper()
	if opts.Mode == "" {
		opts.Mode = api.ModeEBPF
	}
	sweepStalePins()
	a := &Agent{
		Bin:      netns.BuildTool(t, "./agent/cmd/sluice-agent"),
		PinRoot:  "/sys/fs/bpf/sluice-test-" + node.ID(),
		StateDir: t.TempDir(),
		node:     node,
		opts:     opts,
	}
	a.Socket = filepath.Join(a.StateDir, "agent.sock")
	a.Client = api.NewClient(a.Socket)
	a.MetricsAddr = freePort(t)
	t.Cleanup(func() {
		a.Kill()
		out, err := exec.Command(a.Bin, "uninstall", "--pin-root", a.PinRoot, "--state-dir", a.StateDir).CombinedOutput()
		if err != nil {
			t.Errorf("cleanup: sluice-agent uninstall: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Log())
		}
	})
	a.Restart(t)
	return a
}

// Args are the agent's command line.
func (a *Agent) Args() []string {
	args := []string{"run", "--mode", string(a.opts.Mode), "--pin-root", a.PinRoot, "--cgroup-root", a.node.CgroupPath(),
		"--state-dir", a.StateDir, "--metrics-addr", a.MetricsAddr, "--log-level", "debug"}
	if a.opts.NoRedirect {
		args = append(args, "--no-redirect")
	}
	if a.opts.MaxPods > 0 {
		args = append(args, "--max-pods", fmt.Sprint(a.opts.MaxPods))
	}
	return append(args, a.opts.Args...)
}

// Restart starts the agent (again) and waits until it serves its API.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		t.Fatal("agent already running")
	}
	cmd := exec.Command(a.Bin, a.Args()...)
	if len(a.opts.Caps) > 0 {
		bound := "-all"
		for _, c := range a.opts.Caps {
			bound += ",+" + c
		}
		args := append([]string{"--bounding-set", bound, "--inh-caps", "-all", "--", a.Bin}, a.Args()...)
		cmd = exec.Command("setpriv", args...)
	}
	if a.opts.InNodeCgroup {
		cg, err := os.Open(a.node.CgroupPath())
		if err != nil {
			t.Fatal(err)
		}
		defer cg.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	}
	if a.stderr == nil {
		a.stderr = &lockedBuffer{}
	}
	cmd.Stderr = a.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent: %v", err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "READY" {
				ready <- nil
				_, _ = io.Copy(io.Discard, out)
				return
			}
		}
		ready <- fmt.Errorf("agent exited before READY")
	}()
	select {
	case err := <-ready:
		if err != nil {
			_ = cmd.Wait()
			t.Fatalf("%v:\n%s", err, a.stderr.String())
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("agent not ready after 60s:\n%s", a.stderr.String())
	}
	a.cmd = cmd
}

// Kill9 kills the agent with SIGKILL, as a crash or OOM kill would.
func (a *Agent) Kill9() { a.signal(syscall.SIGKILL) }

// Kill stops the agent with SIGTERM (it detaches nothing either way).
func (a *Agent) Kill() { a.signal(syscall.SIGTERM) }

func (a *Agent) signal(sig syscall.Signal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-done
	}
	a.cmd = nil
}

// PID is the running agent's process id, or 0.
func (a *Agent) PID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Log is what the agent wrote to stderr.
func (a *Agent) Log() string {
	if a.stderr == nil {
		return ""
	}
	return a.stderr.String()
}

// Enroll enrolls pod with cfg and waits until its inbound listener (if
// waitListener) has been adopted.
func (a *Agent) Enroll(t testing.TB, pod *netns.Pod, cfg api.PodConfig) api.Enrollment {
	t.Helper()
	en, err := a.Client.Enroll(context.Background(), api.EnrollRequest{NetNS: pod.NetNSPath(), Config: cfg, Pod: api.PodRef{Namespace: "test", Name: pod.Name()}})
	if err != nil {
		t.Fatalf("enroll %s: %v", pod.Name(), err)
	}
	return en
}

// WaitListener waits until the agent reports the pod's inbound listener.
func (a *Agent) WaitListener(t testing.TB, cookie uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ens, err := a.Client.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ens {
			if e.NetNSCookie == cookie && e.InboundListener {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("inbound listener of netns %d not adopted after 20s:\n%s", cookie, a.Log())
}

// Counters reads the programs' counters from the pinned map, by name.
func (a *Agent) Counters(t testing.TB) map[string]uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(a.PinRoot, "maps", bpf.MapCounters), nil)
	if err != nil {
		t.Fatalf("open counters: %v", err)
	}
	defer m.Close()
	out := map[string]uint64{}
	for i, name := range bpf.Counter {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			t.Fatalf("read counter %s: %v", name, err)
		}
		for _, v := range per {
			out[name] += v
		}
	}
	return out
}

// Metrics fetches the agent's /metrics text.
func (a *Agent) Metrics(t testing.TB) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", a.MetricsAddr, 5*time.Second)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	return string(b)
}

// sweepStalePins uninstalls test pin roots whose netns node no longer
// exists (a killed test run); the harness swept the nodes themselves.
func sweepStalePins() {
	roots, _ := filepath.Glob("/sys/fs/bpf/sluice-test-*")
	for _, r := range roots {
		id := strings.TrimPrefix(filepath.Base(r), "sluice-test-")
		if _, err := os.Stat(filepath.Join("/run/sluice-test/nodes", id+".json")); errors.Is(err, os.ErrNotExist) {
			_ = loader.Uninstall(r)
		}
	}
}

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
