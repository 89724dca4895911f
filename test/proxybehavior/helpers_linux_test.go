package proxybehavior

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest"
)

// appPort is where every test application serves HTTP.
const appPort = 8080

// serviceIP is the cluster IP clients connect to. Nothing listens there:
// the client's proxy must route by the Host header through discovery, or
// the request fails.
const serviceIP = "10.96.0.10"

// eachMode runs f in a fresh mesh per interception mode, as subtests named
// after the mode.
func eachMode(t *testing.T, modes []api.Mode, f func(t *testing.T, m *proxytest.Mesh)) {
	t.Helper()
	netns.RequireRoot(t)
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			f(t, proxytest.Start(t, proxytest.Options{Mode: mode}))
		})
	}
}

var (
	bothModes = []api.Mode{api.ModeEBPF, api.ModeIPTables}
	ebpfOnly  = []api.Mode{api.ModeEBPF}
)

// service is a service "web" on appPort whose endpoints are server pods
// with a testapp each, and a client pod that calls it through its proxy.
type service struct {
	m       *proxytest.Mesh
	path    string
	client  *proxytest.MeshedPod
	servers map[string]*proxytest.MeshedPod
}

// serverSpec is one server pod of a service: its name (also the app's
// x-app-name) and extra `testapp serve` flags.
type serverSpec struct {
	name string
	args []string
}

// newService creates the server pods with their apps and a client pod whose
// proxy has the extra clientEnv, and announces every server in discovery.
func newService(t *testing.T, m *proxytest.Mesh, clientEnv map[string]string, specs ...serverSpec) *service {
	t.Helper()
	s := &service{m: m, path: proxytest.ServicePath("web", appPort), servers: map[string]*proxytest.MeshedPod{}}
	var names []string
	for _, sp := range specs {
		p := m.AddPod(t, sp.name, proxytest.PodOptions{})
		p.App(t, append([]string{"--http", ":" + strconv.Itoa(appPort), "--name", sp.name}, sp.args...)...)
		s.servers[sp.name] = p
		names = append(names, sp.name)
	}
	s.client = m.AddPod(t, "client", proxytest.PodOptions{Env: clientEnv})
	s.announce(names...)
	return s
}

// announce makes the named servers the service's endpoints.
func (s *service) announce(names ...string) {
	eps := make([]discovery.Endpoint, 0, len(names))
	for _, n := range names {
		eps = append(eps, s.servers[n].Endpoint(appPort, "web"))
	}
	s.m.Dest.Set(s.path, eps...)
}

// loop starts reqloop in the client pod, sending GET /echo to the service
// by name, with further reqloop flags.
func (s *service) loop(t *testing.T, args ...string) *reqLoop {
	t.Helper()
	base := []string{"--url", fmt.Sprintf("http://%s:%d/echo", serviceIP, appPort), "--host", fmt.Sprintf("web:%d", appPort)}
	return startLoop(t, s.client, append(base, args...)...)
}

// result is one reqloop line (see reqloop's Result).
type result struct {
	Seq        int64  `json:"seq"`
	Status     int    `json:"status"`
	App        string `json:"app"`
	ProxyError string `json:"proxy_error"`
	Err        string `json:"err"`
	Done       bool   `json:"done"`
}

func (r result) ok() bool { return r.Err == "" && r.Status == 200 }

func (r result) String() string {
	if r.Err != "" {
		return fmt.Sprintf("#%d error %q", r.Seq, r.Err)
	}
	return fmt.Sprintf("#%d %d from %q (sluice-proxy-error %q)", r.Seq, r.Status, r.App, r.ProxyError)
}

// reqLoop is a running reqloop whose results the test watches as they
// arrive, in the order the requests finished.
type reqLoop struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu      sync.Mutex
	results []result
	done    bool
	stderr  logBuffer
	update  chan struct{} // closed and replaced at every new line
	exited  chan struct{}
}

// startLoop runs reqloop args... in pod as the application user.
func startLoop(t *testing.T, pod *proxytest.MeshedPod, args ...string) *reqLoop {
	t.Helper()
	bin := netns.BuildTool(t, "./test/proxybehavior/reqloop")
	l := &reqLoop{cmd: pod.Command(proxytest.AppUID, bin, args...), update: make(chan struct{}), exited: make(chan struct{})}
	l.cmd.Stderr = &l.stderr
	var err error
	if l.stdin, err = l.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := l.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.cmd.Start(); err != nil {
		t.Fatalf("start reqloop in %s: %v", pod.Name(), err)
	}
	go l.read(out)
	killAtCleanup(t, l.cmd, l.exited, func() {
		t.Logf("reqloop %v: %d results, stderr:\n%s", args, l.Len(), l.stderr.String())
	})
	return l
}

func (l *reqLoop) read(r io.Reader) {
	defer close(l.exited)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var res result
		err := json.Unmarshal(sc.Bytes(), &res)
		if err != nil {
			fmt.Fprintf(&l.stderr, "bad line %q: %v\n", sc.Text(), err)
		}
		l.mu.Lock()
		switch {
		case err != nil:
		case res.Done:
			l.done = true
		default:
			l.results = append(l.results, res)
		}
		close(l.update)
		l.update = make(chan struct{})
		l.mu.Unlock()
	}
	_ = l.cmd.Wait()
}

// snapshot returns the results so far and a channel closed at the next.
func (l *reqLoop) snapshot() ([]result, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clip(l.results), l.update
}

// Len returns how many requests have finished.
func (l *reqLoop) Len() int {
	rs, _ := l.snapshot()
	return len(rs)
}

// waitFor waits until cond holds for the results so far and returns them.
// limit is a hang guard: t fails if cond never holds or reqloop ends first.
func (l *reqLoop) waitFor(t *testing.T, what string, limit time.Duration, cond func([]result) bool) []result {
	t.Helper()
	timeout := time.After(limit)
	for {
		rs, next := l.snapshot()
		if cond(rs) {
			return rs
		}
		select {
		case <-next:
		case <-l.exited:
			rs, _ = l.snapshot()
			if cond(rs) {
				return rs
			}
			t.Fatalf("reqloop ended before %s (%d results; last: %v)", what, len(rs), tail(rs, 5))
		case <-timeout:
			t.Fatalf("no %s after %s (hang guard; %d results, last: %v)", what, limit, len(rs), tail(rs, 5))
		}
	}
}

// waitCount waits until n more requests than the first `from` have
// finished and returns those n.
func (l *reqLoop) waitCount(t *testing.T, from, n int) []result {
	t.Helper()
	rs := l.waitFor(t, fmt.Sprintf("%d results", from+n), time.Minute, func(rs []result) bool { return len(rs) >= from+n })
	return rs[from : from+n]
}

// stop ends an endless reqloop (closing its stdin), waits for its last
// line and returns every result.
func (l *reqLoop) stop(t *testing.T) []result {
	t.Helper()
	l.stdin.Close()
	select {
	case <-l.exited:
	case <-time.After(time.Minute):
		t.Fatal("reqloop did not stop a minute after its stdin closed (hang guard)")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		t.Fatalf("reqloop exited without its last line: %s", l.stderr.String())
	}
	return l.results
}

// countApps counts results by the app that answered (failures under "").
func countApps(rs []result) map[string]int {
	n := map[string]int{}
	for _, r := range rs {
		if r.ok() {
			n[r.App]++
		} else {
			n[""]++
		}
	}
	return n
}

// failures returns the results that are not a 200.
func failures(rs []result) []result {
	var bad []result
	for _, r := range rs {
		if !r.ok() {
			bad = append(bad, r)
		}
	}
	return bad
}

// tail returns the last n results.
func tail(rs []result, n int) []result { return rs[max(0, len(rs)-n):] }

// settled reports whether the last n results all succeeded, came only from
// apps in want, and every app in want answered at least one of them.
func settled(rs []result, n int, want ...string) bool {
	if len(rs) < n {
		return false
	}
	seen := map[string]bool{}
	for _, r := range tail(rs, n) {
		if !r.ok() || !slices.Contains(want, r.App) {
			return false
		}
		seen[r.App] = true
	}
	return len(seen) == len(want)
}

// logBuffer collects a process's output from several goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// killAtCleanup kills cmd's process group at cleanup unless exited (closed
// once cmd was waited for) is closed by then, waits for it, and calls
// onFail if the test failed.
func killAtCleanup(t *testing.T, cmd *exec.Cmd, exited <-chan struct{}, onFail func()) {
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			onFail()
		}
	})
}

// podProcess finds the process of pod that runs the program bin (such as
// the mesh's AppBin) among the processes in the pod's cgroup. The fixture
// does not hand out its processes; a test that stops an app finds it here.
// It fails t unless there is exactly one.
func podProcess(t *testing.T, pod *proxytest.MeshedPod, bin string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pod.CgroupPath(), "cgroup.procs"))
	if err != nil {
		t.Fatalf("list processes of pod %s: %v", pod.Name(), err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == bin {
			pids = append(pids, pid)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("want one process of %s in pod %s, found %v", bin, pod.Name(), pids)
	}
	return pids[0]
}

// killApp kills the pod's testapp (SIGKILL, as a crash would) and waits
// until it is gone, so that connections to its port are refused.
func killApp(t *testing.T, pod *proxytest.MeshedPod) {
	t.Helper()
	pid := podProcess(t, pod, pod.Mesh.AppBin)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill testapp %d in %s: %v", pid, pod.Name(), err)
	}
	waitGone(t, pid)
}

// waitGone waits until process pid no longer exists (it is reaped by
// whoever started it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still exists 30s after it was killed (hang guard)", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
