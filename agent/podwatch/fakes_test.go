package podwatch

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/enroll"
)

// hostNetNS is the inode of the fake host network namespace.
const hostNetNS = 4026531840

// fakeHost is a fake /proc and a fake cgroup v2 and v1 hierarchy in a
// temporary directory. A process is proc/<pid>/ns/net, a symlink to
// "net:[<inode>]" as the kernel shows it; the inode doubles as the
// namespace's cookie (fakeCookie).
type fakeHost struct {
	t    testing.TB
	proc string
	v2   string // the cgroup v2 root
	v1   string // a cgroup v1 hierarchy (memory)
}

func newFakeHost(t testing.TB) *fakeHost {
	dir := t.TempDir()
	h := &fakeHost{t: t, proc: filepath.Join(dir, "proc"), v2: filepath.Join(dir, "cgroup/unified"), v1: filepath.Join(dir, "cgroup/memory")}
	for _, d := range []string{h.v2, h.v1} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.symlinkNS("self", hostNetNS)
	return h
}

func (h *fakeHost) roots() []string { return []string{h.v2, h.v1} }

func (h *fakeHost) symlinkNS(pid string, ino uint64) {
	h.t.Helper()
	dir := filepath.Join(h.proc, pid, "ns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	link := filepath.Join(dir, "net")
	_ = os.Remove(link)
	if err := os.Symlink(fmt.Sprintf("net:[%d]", ino), link); err != nil {
		h.t.Fatal(err)
	}
}

// process adds process pid in the network namespace ino.
func (h *fakeHost) process(pid int, ino uint64) { h.symlinkNS(strconv.Itoa(pid), ino) }

// exit removes process pid from /proc (its cgroup still lists it until
// cgroup is called again, as in a race with the kernel).
func (h *fakeHost) exit(pid int) {
	h.t.Helper()
	if err := os.RemoveAll(filepath.Join(h.proc, strconv.Itoa(pid))); err != nil {
		h.t.Fatal(err)
	}
}

// cgroup writes the cgroup dir root/rel with pids in its cgroup.procs.
func (h *fakeHost) cgroup(root, rel string, pids ...int) {
	h.t.Helper()
	dir := filepath.Join(root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		h.t.Fatal(err)
	}
	var b strings.Builder
	for _, p := range pids {
		fmt.Fprintln(&b, p)
	}
	// Write then rename, so the watcher never reads half a file.
	tmp := filepath.Join(dir, ".procs.tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "cgroup.procs")); err != nil {
		h.t.Fatal(err)
	}
}

// fakeCookie is the fake host's Config.NetNSCookie: the namespace's inode.
func fakeCookie(path string) (uint64, error) {
	l, err := os.Readlink(path)
	if err != nil {
		return 0, fmt.Errorf("open netns %s: %w", path, err)
	}
	var ino uint64
	if _, err := fmt.Sscanf(l, "net:[%d]", &ino); err != nil {
		return 0, fmt.Errorf("open netns %s: not a network namespace (%q)", path, l)
	}
	return ino, nil
}

// fakeEnroller keeps enrollments in memory, validating and refusing
// requests with the errors of the agent's manager.
type fakeEnroller struct {
	proc string

	mu       sync.Mutex
	ens      map[uint64]api.Enrollment
	requests []api.EnrollRequest
	failNext error // returned once by the next Enroll
}

func newFakeEnroller(proc string, pre ...api.Enrollment) *fakeEnroller {
	e := &fakeEnroller{proc: proc, ens: map[uint64]api.Enrollment{}}
	for _, en := range pre {
		e.ens[en.NetNSCookie] = en
	}
	return e
}

var _ Enroller = (*fakeEnroller)(nil)

func (e *fakeEnroller) Enroll(_ context.Context, req api.EnrollRequest) (api.Enrollment, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests = append(e.requests, req)
	if err := e.failNext; err != nil {
		e.failNext = nil
		return api.Enrollment{}, err
	}
	if req.PID <= 0 || req.NetNS != "" {
		return api.Enrollment{}, fmt.Errorf("%w: want a pid and no netns path", enroll.ErrInvalid)
	}
	cfg := req.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return api.Enrollment{}, fmt.Errorf("%w: %w", enroll.ErrInvalid, err)
	}
	path := filepath.Join(e.proc, strconv.Itoa(req.PID), "ns/net")
	cookie, err := fakeCookie(path)
	if err != nil {
		return api.Enrollment{}, fmt.Errorf("%w: %w", enroll.ErrInvalid, err)
	}
	if cookie == hostNetNS {
		return api.Enrollment{}, fmt.Errorf("%w: netns %s is the host network namespace", enroll.ErrInvalid, path)
	}
	if _, ok := e.ens[cookie]; ok {
		return api.Enrollment{}, fmt.Errorf("%w: netns %s (cookie %d)", enroll.ErrConflict, path, cookie)
	}
	for _, o := range e.ens {
		for _, a := range o.Addresses {
			if slices.Contains(req.Addresses, a) {
				return api.Enrollment{}, fmt.Errorf("%w: address %s belongs to netns %s", enroll.ErrConflict, a, o.NetNS)
			}
		}
	}
	en := api.Enrollment{NetNSCookie: cookie, NetNS: fmt.Sprintf("/proc/%d/ns/net", req.PID), Pod: req.Pod, Mode: api.ModeEBPF, Addresses: req.Addresses, Config: cfg}
	e.ens[cookie] = en
	return en, nil
}

func (e *fakeEnroller) Unenroll(_ context.Context, cookie uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.ens[cookie]; !ok {
		return fmt.Errorf("%w: netns cookie %d", enroll.ErrNotFound, cookie)
	}
	delete(e.ens, cookie)
	return nil
}

func (e *fakeEnroller) List(context.Context) ([]api.Enrollment, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]api.Enrollment, 0, len(e.ens))
	for _, en := range e.ens {
		out = append(out, en)
	}
	slices.SortFunc(out, func(a, b api.Enrollment) int { return cmp.Compare(a.NetNSCookie, b.NetNSCookie) })
	return out, nil
}

// byPod returns the enrollment of the pod named name, if any.
func (e *fakeEnroller) byPod(name string) (api.Enrollment, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, en := range e.ens {
		if en.Pod.Name == name {
			return en, true
		}
	}
	return api.Enrollment{}, false
}

// enrollCalls counts the Enroll requests for the pod named name.
func (e *fakeEnroller) enrollCalls(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, r := range e.requests {
		if r.Pod.Name == name {
			n++
		}
	}
	return n
}

func (e *fakeEnroller) remove(cookie uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.ens, cookie)
}

func (e *fakeEnroller) failOnce(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.failNext = err
}
