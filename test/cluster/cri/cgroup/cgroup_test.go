package cgroup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// allocEnv makes the test binary a memory hog (see allocMain).
const allocEnv = "SLUICE_CGTEST_ALLOC_MIB"

func TestMain(m *testing.M) {
	if v := os.Getenv(allocEnv); v != "" {
		mib, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		allocMain(mib)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// allocMain waits for a byte on stdin (the test adds the process to its
// cgroup meanwhile), allocates and touches mib MiB, says "allocated" and
// holds the memory until stdin closes.
func allocMain(mib int) {
	var b [1]byte
	_, _ = os.Stdin.Read(b[:])
	chunks := make([][]byte, 0, mib)
	for range mib {
		c := make([]byte, 1<<20)
		for i := 0; i < len(c); i += 4096 {
			c[i] = 1
		}
		chunks = append(chunks, c)
	}
	fmt.Println("allocated")
	_, _ = io.Copy(io.Discard, os.Stdin)
	runtime.KeepAlive(chunks)
}

// setup returns a Manager and a unique base path whose cgroups are killed
// and removed in every hierarchy when the test ends, independently of the
// Manager.
func setup(t *testing.T) (*Manager, string) {
	t.Helper()
	testenv.RequireRoot(t)
	m, err := New(nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	base := fmt.Sprintf("/sluice-cgtest-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_"))
	t.Cleanup(func() { scrub(t, base) })
	return m, base
}

// cgroupMounts lists the mountpoints of every cgroup hierarchy.
func cgroupMounts(t *testing.T) []string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		t.Fatalf("read mountinfo: %v", err)
	}
	var mps []string
	for _, mnt := range mounts {
		mps = append(mps, mnt.Mountpoint)
	}
	return mps
}

// scrub kills every process under base in every hierarchy and removes
// base's cgroups, deepest first.
func scrub(t *testing.T, base string) {
	for _, mp := range cgroupMounts(t) {
		dir := filepath.Join(mp, base)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		_ = cgroups.WriteFile(dir, "freezer.state", "THAWED")
		for range 100 {
			pids, _ := cgroups.GetAllPids(dir)
			if len(pids) == 0 {
				break
			}
			for _, p := range pids {
				_ = unix.Kill(p, unix.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := cgroups.RemovePath(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

// proc is a program a test started.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	done   chan struct{} // closed when it has exited
	err    error         // its exit, once done
}

// start starts a program whose stdin and stdout the test holds, and waits
// for it in the background; it is killed when the test ends.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(args[0], args[1:]...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdout = bufio.NewReader(stdout)
	p.cmd.Stderr = os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %v: %v", args, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// startIn creates path with r, starts a program with the extra environment
// variable env ("" for none) whose first step is to read a line, adds it to
// path and lets it go on.
func startIn(t *testing.T, m *Manager, path string, r Resources, env string, args ...string) *proc {
	t.Helper()
	if err := m.Create(path, r); err != nil {
		t.Fatalf("Create(%s): %v", path, err)
	}
	var envs []string
	if env != "" {
		envs = []string{env}
	}
	p := start(t, envs, args...)
	if err := m.Add(path, p.pid()); err != nil {
		t.Fatalf("Add(%s, %d): %v", path, p.pid(), err)
	}
	if _, err := p.stdin.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	return p
}

// testExe is the test binary (a memory hog with allocEnv set).
func testExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// pid is the process's id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// wait waits (with a hang guard) for the process to exit and returns how.
func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(time.Minute):
		t.Fatalf("process %d did not exit within a minute", p.pid())
		return nil
	}
}

// killedBy reports whether err is the exit of a process killed by sig.
func killedBy(err error, sig syscall.Signal) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// forker is a shell that, once it reads a line, keeps forking sleeps.
const forker = "read x; while :; do sleep 1000 & sleep 0.01; done"

// procCgroups returns pid's /proc/<pid>/cgroup lines.
func procCgroups(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func TestMode(t *testing.T) {
	m, _ := setup(t)
	// The machine's layout seen by the kubelet's library.
	want := ModeV1
	switch {
	case cgroups.IsCgroup2UnifiedMode():
		want = ModeV2
	case cgroups.IsCgroup2HybridMode():
		want = ModeHybrid
	}
	if got := m.Mode(); got != want {
		t.Errorf("Mode() = %q, want %q", got, want)
	}
	if want != ModeV1 {
		var st unix.Statfs_t
		if err := unix.Statfs(m.V2Path("/"), &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			t.Errorf("V2Path(/) = %q is not a cgroup2 mount (%v)", m.V2Path("/"), err)
		}
	}
}

// controllerDir is path's directory for controller c as the kubelet's
// library finds it, or in the unified hierarchy on a v2 machine.
func controllerDir(t *testing.T, m *Manager, c, path string) string {
	t.Helper()
	if m.Mode() == ModeV2 {
		return m.V2Path(path)
	}
	mp, err := cgroups.FindCgroupMountpoint("", c)
	if err != nil {
		t.Fatalf("find %s hierarchy: %v", c, err)
	}
	return filepath.Join(mp, path)
}

func TestLimits(t *testing.T) {
	m, base := setup(t)
	path := base + "/pod/ctr"
	type file struct{ controller, name, want string }
	tests := []struct {
		name string
		r    Resources
		v1   []file
		v2   []file
	}{
		{
			name: "create",
			r: Resources{CPUShares: 512, CPUQuota: 50000, CPUPeriod: 100000, MemoryLimit: 64 << 20, PidsLimit: 42,
				CpusetCpus: "0", CpusetMems: "0"},
			v1: []file{
				{"cpu", "cpu.shares", "512"},
				{"cpu", "cpu.cfs_quota_us", "50000"},
				{"cpu", "cpu.cfs_period_us", "100000"},
				{"memory", "memory.limit_in_bytes", "67108864"},
				{"pids", "pids.max", "42"},
				{"cpuset", "cpuset.cpus", "0"},
				{"cpuset", "cpuset.mems", "0"},
			},
			v2: []file{
				// 1 + (512-2)*9999/262142: the kubelet's conversion.
				{"cpu", "cpu.weight", "20"},
				{"cpu", "cpu.max", "50000 100000"},
				{"memory", "memory.max", "67108864"},
				{"pids", "pids.max", "42"},
				{"cpuset", "cpuset.cpus", "0"},
			},
		},
		{
			name: "update",
			r:    Resources{CPUShares: 2, CPUQuota: 20000, CPUPeriod: 50000, MemoryLimit: 32 << 20, PidsLimit: 7},
			v1: []file{
				{"cpu", "cpu.shares", "2"},
				{"cpu", "cpu.cfs_quota_us", "20000"},
				{"cpu", "cpu.cfs_period_us", "50000"},
				{"memory", "memory.limit_in_bytes", "33554432"},
				{"pids", "pids.max", "7"},
				{"cpuset", "cpuset.cpus", "0"}, // unset fields stay
			},
			v2: []file{
				{"cpu", "cpu.weight", "1"},
				{"cpu", "cpu.max", "20000 50000"},
				{"memory", "memory.max", "33554432"},
				{"pids", "pids.max", "7"},
			},
		},
		{
			name: "unlimited",
			r:    Resources{CPUQuota: -1, MemoryLimit: -1, PidsLimit: -1},
			v1: []file{
				{"cpu", "cpu.cfs_quota_us", "-1"},
				{"memory", "memory.limit_in_bytes", "9223372036854771712"},
				{"pids", "pids.max", "max"},
			},
			v2: []file{
				{"cpu", "cpu.max", "max 50000"},
				{"memory", "memory.max", "max"},
				{"pids", "pids.max", "max"},
			},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			apply := m.Update
			if i == 0 {
				apply = m.Create
			}
			if err := apply(path, tt.r); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			files := tt.v1
			if m.Mode() == ModeV2 {
				files = tt.v2
			}
			for _, f := range files {
				got, err := cgroups.ReadFile(controllerDir(t, m, f.controller, path), f.name)
				if err != nil {
					t.Errorf("read %s: %v", f.name, err)
					continue
				}
				if got = strings.TrimSpace(got); got != f.want {
					t.Errorf("%s = %q, want %q", f.name, got, f.want)
				}
			}
		})
	}

	t.Run("every hierarchy", func(t *testing.T) {
		for _, mp := range cgroupMounts(t) {
			if fi, err := os.Stat(filepath.Join(mp, path)); err != nil || !fi.IsDir() {
				t.Errorf("%s: %v", filepath.Join(mp, path), err)
			}
		}
	})
	t.Run("cpuset inherited", func(t *testing.T) {
		if m.Mode() == ModeV2 {
			return // cpuset.cpus is empty (= the parent's) on v2
		}
		root, err := cgroups.ReadFile(controllerDir(t, m, "cpuset", "/"), "cpuset.cpus")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{base, base + "/pod"} {
			got, err := cgroups.ReadFile(controllerDir(t, m, "cpuset", p), "cpuset.cpus")
			if err != nil || got != root {
				t.Errorf("cpuset.cpus of %s = %q (%v), want the root's %q", p, got, err, root)
			}
		}
	})
}

// variant is a Manager restricted to some of the machine's hierarchies.
type variant struct {
	name string
	m    *Manager
	// mounts are the mountpoints of its hierarchies.
	mounts []string
	// v1, v2 say which lines of /proc/<pid>/cgroup are its hierarchies'.
	v1, v2 bool
}

// variants are the machine's Manager and, on a hybrid machine, Managers
// that see only its v1 or only its v2 hierarchies: the code paths of pure v1
// and pure v2 machines (without v2 controllers, so without limits).
func variants(t *testing.T, m *Manager) []variant {
	vs := []variant{{"machine", m, cgroupMounts(t), true, true}}
	if m.Mode() != ModeHybrid {
		return vs
	}
	var v1 []string
	for _, h := range m.layout.v1 {
		v1 = append(v1, h.mountpoint)
	}
	return append(vs,
		variant{"as v1", &Manager{log: m.log, layout: layout{v1: m.layout.v1}}, v1, true, false},
		variant{"as v2", &Manager{log: m.log, layout: layout{v2: m.layout.v2}}, []string{m.layout.v2}, false, true},
	)
}

func TestAddPidsKillRemove(t *testing.T) {
	testenv.RequireCommand(t, "sleep")
	testenv.RequireCommand(t, "sh")
	machine, base := setup(t)
	for _, v := range variants(t, machine) {
		t.Run(v.name, func(t *testing.T) {
			if v.name != "machine" && v.m.Mode() != strings.TrimPrefix(v.name, "as ") {
				t.Fatalf("Mode() = %q", v.m.Mode())
			}
			testAddPidsKillRemove(t, v, base+"/"+strings.ReplaceAll(v.name, " ", "-"))
		})
	}
}

func testAddPidsKillRemove(t *testing.T, v variant, pod string) {
	m := v.m

	// A sleep in the pod cgroup, two in a container cgroup below, and a
	// shell that keeps forking there: Kill must get them all.
	var procs []*proc
	for _, tc := range []struct {
		path string
		args []string
	}{
		{pod, []string{"sleep", "1000"}},
		{pod + "/a", []string{"sleep", "1000"}},
		{pod + "/a", []string{"sleep", "1000"}},
		{pod + "/a", []string{"sh", "-c", forker}},
	} {
		p := start(t, nil, tc.args...)
		if err := m.Add(tc.path, p.pid()); err != nil {
			t.Fatalf("Add(%s, %d): %v", tc.path, p.pid(), err)
		}
		procs = append(procs, p)
		// Released once placed: what it forks is born in the cgroup.
		if _, err := p.stdin.Write([]byte("\n")); err != nil {
			t.Fatal(err)
		}
		// Every hierarchy lists the process in the path, as the
		// process's own /proc/<pid>/cgroup says.
		for _, line := range procCgroups(t, p.pid()) {
			if isV2 := strings.HasPrefix(line, "0::"); isV2 && !v.v2 || !isV2 && !v.v1 {
				continue
			}
			if !strings.HasSuffix(line, ":"+tc.path) {
				t.Errorf("process %d: /proc/pid/cgroup line %q, want path %s", p.pid(), line, tc.path)
			}
		}
		for _, mp := range v.mounts {
			listed, err := cgroups.GetPids(filepath.Join(mp, tc.path))
			if err != nil || !slices.Contains(listed, p.pid()) {
				t.Errorf("%s/cgroup.procs = %v (%v), want %d in it", filepath.Join(mp, tc.path), listed, err, p.pid())
			}
		}
	}

	// Wait until the shell has forked (a hang guard bounds the wait).
	var got []int
	for deadline := time.Now().Add(time.Minute); len(got) < len(procs)+2; time.Sleep(10 * time.Millisecond) {
		var err error
		if got, err = m.Pids(pod); err != nil {
			t.Fatalf("Pids: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Pids(%s) = %v after a minute, want the shell's children too", pod, got)
		}
	}
	for _, p := range procs {
		if !slices.Contains(got, p.pid()) {
			t.Errorf("Pids(%s) = %v, want %d in it", pod, got, p.pid())
		}
	}
	if got, err := m.Pids(pod + "/nowhere"); err != nil || len(got) != 0 {
		t.Errorf("Pids of a missing path = %v, %v; want none", got, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Kill(ctx, pod); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if got, err := m.Pids(pod); err != nil || len(got) != 0 {
		t.Errorf("Pids after Kill = %v, %v; want none", got, err)
	}
	for _, p := range procs {
		if err := p.wait(t); !killedBy(err, syscall.SIGKILL) {
			t.Errorf("process %d: exit %v, want killed by SIGKILL", p.pid(), err)
		}
	}

	if err := m.Remove(pod); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, mp := range v.mounts {
		if _, err := os.Stat(filepath.Join(mp, pod)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Remove: %v, want it gone", filepath.Join(mp, pod), err)
		}
	}
	if err := m.Remove(pod); err != nil {
		t.Errorf("Remove of a removed path: %v", err)
	}
}

// TestKillV1Only kills a process the v2 hierarchy does not hold under the
// path (a process the kubelet or an older runtime placed in the v1
// hierarchies only): Kill falls back to the v1 freezer.
func TestKillV1Only(t *testing.T) {
	testenv.RequireCommand(t, "sh")
	m, base := setup(t)
	if m.Mode() != ModeHybrid {
		return // only a hybrid machine has processes in v1 but not v2
	}
	path := base + "/ctr"
	p := start(t, nil, "sh", "-c", forker)
	if err := m.Add(path, p.pid()); err != nil {
		t.Fatalf("Add: %v", err)
	}
	// Back to the v2 root: only the v1 hierarchies hold it (and what it
	// forks) under path.
	if err := cgroups.WriteCgroupProc(m.V2Path("/"), p.pid()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.stdin.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Kill(ctx, path); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := p.wait(t); !killedBy(err, syscall.SIGKILL) {
		t.Errorf("exit %v, want killed by SIGKILL", err)
	}
	if got, err := m.Pids(path); err != nil || len(got) != 0 {
		t.Errorf("Pids after Kill = %v, %v; want none", got, err)
	}
	if state, err := cgroups.ReadFile(controllerDir(t, m, "freezer", path), "freezer.state"); err != nil || strings.TrimSpace(state) != "THAWED" {
		t.Errorf("freezer.state after Kill = %q (%v), want THAWED", state, err)
	}
}

func TestKillContext(t *testing.T) {
	testenv.RequireCommand(t, "sleep")
	m, base := setup(t)
	path := base + "/ctr"
	p := start(t, nil, "sleep", "1000")
	if err := m.Add(path, p.pid()); err != nil {
		t.Fatalf("Add: %v", err)
	}
	// A cancelled context ends the wait at once, with its error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Kill(ctx, path); !errors.Is(err, context.Canceled) {
		t.Errorf("Kill with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestStats(t *testing.T) {
	testenv.RequireCommand(t, "sh")
	m, base := setup(t)

	for _, v := range variants(t, m) {
		t.Run("cpu "+v.name, func(t *testing.T) {
			m := v.m
			path := base + "/cpu-" + strings.ReplaceAll(v.name, " ", "-")
			if err := m.Create(path, Resources{}); err != nil {
				t.Fatal(err)
			}
			p := start(t, nil, "sh", "-c", `read x; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done`)
			if err := m.Add(path, p.pid()); err != nil {
				t.Fatal(err)
			}
			before, err := m.Stats(path)
			if err != nil {
				t.Fatalf("Stats: %v", err)
			}
			if before.Pids != 1 {
				t.Errorf("Pids = %d, want 1", before.Pids)
			}
			if _, err := p.stdin.Write([]byte("\n")); err != nil {
				t.Fatal(err)
			}
			if err := p.wait(t); err != nil {
				t.Fatalf("busy loop: %v", err)
			}
			after, err := m.Stats(path)
			if err != nil {
				t.Fatalf("Stats: %v", err)
			}
			// The loop takes tens of milliseconds of CPU at least.
			if after.CPUUsageNanos < before.CPUUsageNanos+uint64(10*time.Millisecond) {
				t.Errorf("CPU usage %d ns -> %d ns, want it grown by 10ms at least", before.CPUUsageNanos, after.CPUUsageNanos)
			}
			if after.Pids != 0 {
				t.Errorf("Pids after exit = %d, want 0", after.Pids)
			}
			if !after.At.After(before.At) {
				t.Errorf("At %v -> %v, want it later", before.At, after.At)
			}
		})
	}

	t.Run("memory", func(t *testing.T) {
		path := base + "/mem"
		p := startIn(t, m, path, Resources{MemoryLimit: 256 << 20}, allocEnv+"=32", testExe(t))
		if line, err := p.stdout.ReadString('\n'); err != nil || line != "allocated\n" {
			t.Fatalf("hog said %q, %v", line, err)
		}
		st, err := m.Stats(path)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if st.MemoryUsage < 32<<20 || st.MemoryRSS < 32<<20 {
			t.Errorf("memory usage %d, rss %d; want 32 MiB at least", st.MemoryUsage, st.MemoryRSS)
		}
		if st.MemoryWorkingSet > st.MemoryUsage || st.MemoryWorkingSet < st.MemoryRSS {
			t.Errorf("working set %d, want between rss %d and usage %d", st.MemoryWorkingSet, st.MemoryRSS, st.MemoryUsage)
		}
		if st.OOMKills != 0 {
			t.Errorf("OOMKills = %d, want 0", st.OOMKills)
		}
	})

	t.Run("oom kill", func(t *testing.T) {
		path := base + "/oom"
		p := startIn(t, m, path, Resources{MemoryLimit: 32 << 20}, allocEnv+"=1024", testExe(t))
		if err := p.wait(t); !killedBy(err, syscall.SIGKILL) {
			t.Fatalf("hog past the limit: exit %v, want killed by SIGKILL", err)
		}
		st, err := m.Stats(path)
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if st.OOMKills != 1 {
			t.Errorf("OOMKills = %d, want 1", st.OOMKills)
		}
	})
}
