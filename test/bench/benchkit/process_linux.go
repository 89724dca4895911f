package benchkit

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/netns"
)

// TailBuffer keeps the last 64 KiB written to it: a process's stderr, for
// failure messages, without growing over a long run.
type TailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 64 << 10

// Write appends p, dropping the oldest bytes beyond 64 KiB.
func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailSize:]...)
	}
	return len(p), nil
}

// String returns what the buffer holds.
func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// Process is a long-running program in a pod, pinned to CPUs.
type Process struct {
	// Name is the program's base name.
	Name   string
	cmd    *exec.Cmd
	stderr *TailBuffer
	exited chan struct{}
}

// Stderr returns the tail of the program's standard error.
func (p *Process) Stderr() string { return p.stderr.String() }

// PID is the program's process id (nsenter and taskset exec it, so it is
// the program's own).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// StartProcess prepares name to run in pod as uid, pinned to cpus (a taskset
// list), with env added to the environment; Run starts it. It is killed,
// with its process group, at cleanup.
func StartProcess(tb testing.TB, pod *netns.Pod, uid int, cpus string, env []string, name string, args ...string) *Process {
	tb.Helper()
	cmd := pod.Command(uid, "taskset", append([]string{"-c", cpus, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	p := &Process{Name: filepath.Base(name), cmd: cmd, stderr: &TailBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	cmd.WaitDelay = 10 * time.Second // a hang guard should a child keep stderr open
	return p
}

// Run starts p; stdout, if not nil, receives its standard output lines and
// is closed at their end. It returns once the pid runs the program.
func (p *Process) Run(tb testing.TB, stdout chan<- string) {
	tb.Helper()
	var out io.ReadCloser
	if stdout != nil {
		var err error
		if out, err = p.cmd.StdoutPipe(); err != nil {
			tb.Fatal(err)
		}
	}
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", p.Name, err)
	}
	tb.Cleanup(func() {
		// The whole process group: killing nginx's master alone would leave
		// its worker holding stderr open, and Wait waiting for it.
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	})
	if out != nil {
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				stdout <- sc.Text()
			}
			close(stdout)
		}()
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.cmd.Process.Pid))
		if err == nil && strings.HasPrefix(p.Name, strings.TrimSpace(string(comm))) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: pid %d runs %q, not the program: %s", p.Name, p.cmd.Process.Pid, comm, p.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Alive fails tb if p has exited.
func (p *Process) Alive(tb testing.TB) {
	tb.Helper()
	select {
	case <-p.exited:
		tb.Fatalf("%s exited: %v; stderr:\n%s", p.Name, p.cmd.ProcessState, p.stderr)
	default:
	}
}

// WaitFor calls check until it succeeds, and fails tb if the process exits
// or a minute passes (a hang guard) first.
func (p *Process) WaitFor(tb testing.TB, what string, check func() error) {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := check()
		if err == nil {
			return
		}
		p.Alive(tb)
		if time.Now().After(deadline) {
			tb.Fatalf("%s: %s: %v; stderr:\n%s", p.Name, what, err, p.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitLine waits up to a minute for the program's first line on lines and
// fails tb unless it is want.
func (p *Process) WaitLine(tb testing.TB, lines <-chan string, want string) {
	tb.Helper()
	select {
	case l := <-lines:
		if l != want {
			tb.Fatalf("%s: first line %q, want %q; stderr: %s", p.Name, l, want, p.stderr)
		}
	case <-time.After(time.Minute):
		tb.Fatalf("%s: no %q after a minute: %s", p.Name, want, p.stderr)
	}
}
