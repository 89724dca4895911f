package container_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

func TestMain(m *testing.M) {
	container.Init()
	os.Exit(m.Run())
}

// hangGuard bounds waits that only a bug makes long.
const hangGuard = 30 * time.Second

// setup requires root and returns a unique tag for the test. At cleanup it
// checks that the host's mount table has no new mount the test could have
// made, and that no process of the test remains (children of this process,
// or processes with the tag in their environment, which the tests give
// every program); it kills what it finds.
func setup(t *testing.T) (tag string) {
	t.Helper()
	testenv.RequireRoot(t)
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	tag = fmt.Sprintf("sluice-ctest-%d-%s", os.Getpid(), hex.EncodeToString(b))
	before := mountIDs(t)
	tmp := os.TempDir()
	t.Cleanup(func() {
		// New mounts that this package could have leaked; other packages'
		// tests (kubelet volumes, network namespaces) may mount elsewhere
		// meanwhile.
		for _, m := range newMounts(t, before) {
			_, post, _ := strings.Cut(m.line, " - ")
			fstype, _, _ := strings.Cut(post, " ")
			if strings.HasPrefix(m.point, tmp+"/") || strings.Contains(m.point, "sluice-ctest-") ||
				isBuiltinPoint(m.point) || fstype == "overlay" || fstype == "devpts" {
				t.Errorf("mount left on the host: %s", m.line)
			}
		}
		deadline := time.Now().Add(hangGuard)
		for {
			left := testProcesses(tag)
			if len(left) == 0 {
				return
			}
			if time.Now().After(deadline) {
				for _, pid := range left {
					cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
					stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
					t.Errorf("process of the test remains: %d %q: %s", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}), stat)
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return tag
}

// isBuiltinPoint reports whether p is where a container's built-in mounts
// would land on the host, had they leaked.
func isBuiltinPoint(p string) bool {
	switch p {
	case "/", "/run", "/tmp", "/proc", "/sys", "/dev":
		return true
	}
	return strings.HasPrefix(p, "/proc/") || strings.HasPrefix(p, "/sys/") || strings.HasPrefix(p, "/dev/")
}

type mountEntry struct {
	id    string
	point string
	line  string
}

func readMounts(t *testing.T) []mountEntry {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []mountEntry
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		out = append(out, mountEntry{id: f[0], point: f[4], line: l})
	}
	return out
}

func mountIDs(t *testing.T) map[string]bool {
	ids := map[string]bool{}
	for _, m := range readMounts(t) {
		ids[m.id] = true
	}
	return ids
}

func newMounts(t *testing.T, before map[string]bool) []mountEntry {
	var out []mountEntry
	for _, m := range readMounts(t) {
		if !before[m.id] {
			out = append(out, m)
		}
	}
	return out
}

// testProcesses returns the live (not zombie) processes that are children
// of this test process or have tag in their environment.
func testProcesses(tag string) []int {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(stat[bytes.LastIndexByte(stat, ')')+2:])
		f := strings.Fields(rest)
		if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == self {
			out = append(out, pid)
			continue
		}
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if bytes.Contains(env, []byte(tag)) {
			out = append(out, pid)
		}
	}
	return out
}

// output is a writer the test can wait on.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitFor waits until the output contains s; it fails if p ends first.
func (o *output) waitFor(t *testing.T, p *container.Process, s string) {
	t.Helper()
	timeout := time.After(hangGuard)
	for {
		o.mu.Lock()
		found, ch := strings.Contains(o.buf.String(), s), o.changed
		o.mu.Unlock()
		if found {
			return
		}
		select {
		case <-ch:
		case <-p.Done():
			if !strings.Contains(o.String(), s) {
				t.Fatalf("process exited (%+v) before writing %q; it wrote %q", p.Exit(), s, o.String())
			}
			return
		case <-timeout:
			t.Fatalf("no %q in output after %v: %q", s, hangGuard, o.String())
		}
	}
}

// wait waits for p to be done.
func wait(t *testing.T, p *container.Process) container.ExitStatus {
	t.Helper()
	select {
	case <-p.Done():
		return p.Exit()
	case <-time.After(hangGuard):
		t.Fatalf("process %d still running after %v", p.PID(), hangGuard)
		return container.ExitStatus{}
	}
}

// stopAtCleanup kills p at the end of the test if it still runs.
func stopAtCleanup(t *testing.T, p *container.Process) {
	t.Cleanup(func() {
		select {
		case <-p.Done():
			return
		default:
		}
		_ = p.Signal(syscall.SIGKILL)
		select {
		case <-p.Done():
		case <-time.After(hangGuard):
			t.Errorf("process %d not done after SIGKILL", p.PID())
		}
	})
}

// startSandbox starts a holder stopped at cleanup.
func startSandbox(t *testing.T, s container.SandboxSpec) *container.Process {
	t.Helper()
	p, err := container.StartSandbox(s)
	if err != nil {
		t.Fatalf("StartSandbox: %v", err)
	}
	stopAtCleanup(t, p)
	return p
}

// start starts a container stopped at cleanup, with the tag in its
// environment and a state directory.
func start(t *testing.T, tag string, s container.Spec) *container.Process {
	t.Helper()
	s.Env = append(s.Env, "SLUICE_TEST_TAG="+tag)
	if s.StateDir == "" {
		s.StateDir = t.TempDir()
	}
	if s.ID == "" {
		s.ID = tag
	}
	p, err := container.Start(s)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	stopAtCleanup(t, p)
	return p
}

// nsInode returns the inode of /proc/<pid>/ns/<name> ("self" for pid 0).
func nsLink(t *testing.T, pid int, name string) string {
	t.Helper()
	p := "/proc/self/ns/" + name
	if pid != 0 {
		p = fmt.Sprintf("/proc/%d/ns/%s", pid, name)
	}
	l, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// facts parses key=value lines.
func facts(s string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			m[k] = v
		}
	}
	return m
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// testCgroups creates the cgroup tag in every cgroup hierarchy mounted here
// but cpuset (which needs its cpus and mems set first), removes them at
// cleanup (after the test's processes are gone: call it before starting
// them), and returns a Spec.Cgroup that places a process in all of them.
func testCgroups(t *testing.T, tag string) func(pid int) error {
	t.Helper()
	var dirs []string
	for _, m := range readMounts(t) {
		_, post, _ := strings.Cut(m.line, " - ")
		g := strings.Fields(post)
		if len(g) < 3 || (g[0] != "cgroup" && g[0] != "cgroup2") || strings.Contains(","+g[2]+",", ",cpuset,") {
			continue
		}
		dir := filepath.Join(m.point, tag)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(hangGuard)
		for _, d := range dirs {
			for {
				err := os.Remove(d)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("remove cgroup: %v", err)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	return func(pid int) error {
		for _, d := range dirs {
			if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
				return err
			}
		}
		return nil
	}
}
