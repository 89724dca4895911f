// Package container starts programs of this machine as "containers":
// processes in a pod sandbox's net, UTS and IPC namespaces, with a private
// mount namespace whose root file system is an overlay of the host's root
// (so that nothing a container writes reaches the host) with fresh /proc,
// /dev, /run and /tmp and the bind mounts it is given.
//
// There is no separate init binary: the package re-executes the current
// binary (/proc/self/exe) with a marker in the environment, and Init, called
// first thing in main (and in TestMain of tests), runs the init, sandbox
// holder or exec step instead of the program when it finds the marker.
//
// Every process is started by one protocol: the child waits for its spec
// (JSON) on a pipe, so that the caller can place it in a cgroup first, then
// reports on a close-on-exec pipe why it could not exec the program; that
// pipe closing without a word means the exec happened (or, for a sandbox
// holder, that its namespaces exist).
package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Propagation is the mount propagation of a bind mount into a container.
type Propagation int

// Propagation modes, as in the CRI's MountPropagation.
const (
	// Private: no mount events propagate either way.
	Private Propagation = iota
	// HostToContainer (rslave): mounts made on the host under the source
	// appear in the container, nothing propagates out.
	HostToContainer
	// Bidirectional (rshared): in addition, mounts the container makes
	// under the target appear on the host (when the source is on a shared
	// mount of the host).
	Bidirectional
)

// Mount is a recursive bind mount of a host path into a container.
type Mount struct {
	Source      string      // host path (file or directory)
	Target      string      // absolute path inside the container, created (in the container's root only) like its source
	ReadOnly    bool        // the bind mount is made read-only (not its submounts)
	Propagation Propagation // Private by default
}

// Spec describes a container: a program of this machine and how it runs.
type Spec struct {
	ID           string              // container id (for messages)
	StateDir     string              // per-container directory owned by the caller; the init mounts its scaffolding at StateDir/rootfs-scaffold, in its private mount namespace only
	SandboxPID   int                 // the sandbox holder: the container joins its net, UTS and IPC namespaces (0: stay in this process's)
	Args         []string            // argv; Args[0] is looked up in the container's PATH if it has no '/'
	Env          []string            // KEY=value; PATH defaults to DefaultPath, HOME to the user's home in /etc/passwd or "/"
	Dir          string              // working directory, created if missing ("/" when empty)
	UID, GID     uint32              // credentials
	Groups       []uint32            // supplementary groups (exactly these)
	Caps         []string            // the capability set, e.g. "CAP_NET_BIND_SERVICE" or "NET_BIND_SERVICE"; "ALL" is every capability the runtime has (one it lacks is an error); effective, permitted, inheritable, bounding (and ambient when UID != 0) are set to exactly this
	NoNewPrivs   bool                // set no_new_privs
	ReadOnlyRoot bool                // the root file system is read-only (mounts on it are not)
	Mounts       []Mount             // in order, after the built-in /proc, /sys, /dev, /dev/pts, /dev/shm, /run and /tmp
	OOMScoreAdj  int                 // written to oom_score_adj; lowering it below the runtime's takes CAP_SYS_RESOURCE: without it the runtime's value stays and Start logs a warning
	Stdout       io.Writer           // the program's standard output (nil: discarded)
	Stderr       io.Writer           // the program's standard error (nil: discarded)
	Cgroup       func(pid int) error // called with the init's pid before it goes on; places it in the container's cgroup
	Log          *slog.Logger        // nil: no logging
}

// DefaultPath is the PATH of a container whose Env has none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultCaps returns the runtime's default capability set for root
// containers (containerd's default list).
func DefaultCaps() []string {
	return []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
		"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
		"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
}

// outputGrace is how long a Process waits, after its program exited, for
// the program's output pipes to close (processes it left behind may hold
// them) before it closes them and calls the process done.
const outputGrace = 2 * time.Second

// Start starts the program as a container. It returns once the program was
// exec'ed, or with an error that says why it could not be (program not
// found, mount failed, ...), with nothing left running.
func Start(s Spec) (*Process, error) {
	log := logger(s.Log).With("container", s.ID)
	if len(s.Args) == 0 {
		return nil, fmt.Errorf("start container %s: no command", s.ID)
	}
	if s.StateDir == "" || !path.IsAbs(s.StateDir) {
		return nil, fmt.Errorf("start container %s: state directory %q is not an absolute path", s.ID, s.StateDir)
	}
	for _, m := range s.Mounts {
		if !path.IsAbs(m.Target) || !path.IsAbs(m.Source) {
			return nil, fmt.Errorf("start container %s: mount %s on %s: source and target must be absolute paths", s.ID, m.Source, m.Target)
		}
	}
	c, err := newCreds(s.UID, s.GID, s.Groups, s.Caps, s.NoNewPrivs)
	if err != nil {
		return nil, fmt.Errorf("start container %s: %w", s.ID, err)
	}
	spec := initSpec{
		StateDir:     s.StateDir,
		SandboxPID:   s.SandboxPID,
		Args:         s.Args,
		Env:          s.Env,
		Dir:          s.Dir,
		Creds:        c,
		ReadOnlyRoot: s.ReadOnlyRoot,
		Mounts:       s.Mounts,
		OOMScoreAdj:  s.OOMScoreAdj,
	}
	cmd, err := launch(child{
		mode:   modeInit,
		spec:   spec,
		stdout: drain(s.Stdout, "stdout", log),
		stderr: drain(s.Stderr, "stderr", log),
		cgroup: s.Cgroup,
	})
	if err != nil {
		return nil, fmt.Errorf("start container %s: %w", s.ID, err)
	}
	log.Debug("container started", "pid", cmd.Process.Pid, "args", s.Args)
	p := newProcess(cmd, log)
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", p.PID())); err == nil {
		if got := strings.TrimSpace(string(b)); got != strconv.Itoa(s.OOMScoreAdj) {
			log.Warn("oom_score_adj not set (lowering it takes CAP_SYS_RESOURCE)", "want", s.OOMScoreAdj, "have", got)
		}
	}
	return p, nil
}

// Process is a started container program or sandbox holder.
type Process struct {
	cmd  *exec.Cmd
	log  *slog.Logger
	done chan struct{}
	exit ExitStatus // set before done is closed
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	Code   int            // exit code; 128+signal when killed by a signal
	Signal syscall.Signal // the signal that killed it, or 0
	At     time.Time      // when it was reaped
}

func newProcess(cmd *exec.Cmd, log *slog.Logger) *Process {
	p := &Process{cmd: cmd, log: log, done: make(chan struct{})}
	go p.wait()
	return p
}

func (p *Process) wait() {
	err := p.cmd.Wait()
	p.exit = exitStatus(p.cmd.ProcessState)
	if errors.Is(err, exec.ErrWaitDelay) {
		p.log.Debug("output still open after the process exited: closed it", "pid", p.PID())
	}
	p.log.Debug("process exited", "pid", p.PID(), "code", p.exit.Code, "signal", p.exit.Signal)
	close(p.done)
}

func exitStatus(st *os.ProcessState) ExitStatus {
	es := ExitStatus{At: time.Now(), Code: -1}
	if st == nil {
		return es
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	switch {
	case !ok:
		es.Code = st.ExitCode()
	case ws.Signaled():
		es.Signal = ws.Signal()
		es.Code = 128 + int(es.Signal)
	default:
		es.Code = ws.ExitStatus()
	}
	return es
}

// PID returns the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process; after it exited the error wraps
// os.ErrProcessDone.
func (p *Process) Signal(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal process %d: %w", p.PID(), err)
	}
	return nil
}

// Done is closed when the process has exited and its output is copied.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exit returns how the process ended; valid after Done is closed.
func (p *Process) Exit() ExitStatus {
	select {
	case <-p.done:
		return p.exit
	default:
		return ExitStatus{}
	}
}

// Markers and file descriptors of the re-executed child.
const (
	envMode     = "_SLUICE_CONTAINER_MODE"
	modeInit    = "init"
	modeSandbox = "sandbox"
	modeExec    = "exec"
	specFD      = 3 // the child reads its JSON spec here, until EOF
	statusFD    = 4 // the child writes why it failed here; close-on-exec
)

// child is a re-execution of this binary in one of the modes.
type child struct {
	mode           string
	spec           any
	stdin          io.Reader
	stdout, stderr io.Writer
	cgroup         func(pid int) error
	// ctx, when set, kills the child's process group when done.
	ctx context.Context
}

// launch starts c and returns once its status pipe closed: the child exec'ed
// its program (or, as a sandbox, is ready). On error the child is reaped.
func launch(c child) (*exec.Cmd, error) {
	specR, specW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("create spec pipe: %w", err)
	}
	defer specW.Close()
	statusR, statusW, err := os.Pipe()
	if err != nil {
		specR.Close()
		return nil, fmt.Errorf("create status pipe: %w", err)
	}
	defer statusR.Close()

	ctx := c.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{"sluice-container-" + c.mode}
	cmd.Env = []string{envMode + "=" + c.mode}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.stdin, c.stdout, c.stderr
	cmd.ExtraFiles = []*os.File{specR, statusW}
	// A session of its own: signals to this process's group do not reach
	// it, and its group can be killed whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = outputGrace
	err = cmd.Start()
	specR.Close()
	statusW.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s process: %w", c.mode, err)
	}
	fail := func(err error) (*exec.Cmd, error) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	if c.cgroup != nil {
		if err := c.cgroup(cmd.Process.Pid); err != nil {
			return fail(fmt.Errorf("place process %d in its cgroup: %w", cmd.Process.Pid, err))
		}
	}
	data, err := json.Marshal(c.spec)
	if err != nil {
		return fail(fmt.Errorf("encode spec: %w", err))
	}
	_, werr := specW.Write(data)
	specW.Close()
	msg, rerr := io.ReadAll(statusR)
	switch {
	case len(msg) > 0:
		return fail(errors.New(string(bytes.TrimSpace(msg))))
	case rerr != nil:
		return fail(fmt.Errorf("read status of %s process: %w", c.mode, rerr))
	case werr != nil:
		return fail(fmt.Errorf("send spec to %s process: %w", c.mode, werr))
	}
	return cmd, nil
}

// drain returns a writer that never fails: a program whose output cannot be
// written must not get EPIPE or block, so write errors are logged (once)
// and the output dropped.
func drain(w io.Writer, name string, log *slog.Logger) io.Writer {
	if w == nil {
		return nil
	}
	return &drainWriter{w: w, name: name, log: log}
}

type drainWriter struct {
	w    io.Writer
	name string
	log  *slog.Logger
	once sync.Once
}

func (d *drainWriter) Write(p []byte) (int, error) {
	if _, err := d.w.Write(p); err != nil {
		d.once.Do(func() { d.log.Warn("cannot write output: dropping it", "stream", d.name, "err", err) })
	}
	return len(p), nil
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return l.With("component", "container")
}
