// Package container starts programs of this machine as "containers":
// processes in a pod sandbox's namespaces with a private mount namespace and
// root file system.
package container

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"syscall"
	"time"
)

// Init runs the init or exec step and never returns when this process was
// started as one; otherwise it returns at once.
func Init() {}

// SandboxSpec describes a pod sandbox's holder process.
type SandboxSpec struct {
	HostNetwork bool
	HostIPC     bool
	Hostname    string
	Cgroup      func(pid int) error
	Log         *slog.Logger
}

// StartSandbox starts the holder; it returns once the namespaces exist.
func StartSandbox(s SandboxSpec) (*Process, error) { return nil, errors.New("not implemented") }

// Propagation is a mount's propagation mode.
type Propagation int

// Propagation modes.
const (
	Private Propagation = iota
	HostToContainer
	Bidirectional
)

// Mount is a bind mount into the container.
type Mount struct {
	Source, Target string
	ReadOnly       bool
	Propagation    Propagation
}

// Spec describes a container.
type Spec struct {
	ID             string
	StateDir       string
	SandboxPID     int
	Args           []string
	Env            []string
	Dir            string
	UID, GID       uint32
	Groups         []uint32
	Caps           []string
	NoNewPrivs     bool
	ReadOnlyRoot   bool
	Mounts         []Mount
	OOMScoreAdj    int
	Stdout, Stderr io.Writer
	Cgroup         func(pid int) error
	Log            *slog.Logger
}

// DefaultCaps returns the default capability set for root containers.
func DefaultCaps() []string { return nil }

// Start starts the program.
func Start(s Spec) (*Process, error) { return nil, errors.New("not implemented") }

// Process is a started container or sandbox holder.
type Process struct{}

// PID returns the process id.
func (p *Process) PID() int { return 0 }

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error { return errors.New("not implemented") }

// Done is closed when the process has exited and its output is copied.
func (p *Process) Done() <-chan struct{} { return nil }

// Exit returns the exit status; valid after Done.
func (p *Process) Exit() ExitStatus { return ExitStatus{} }

// ExitStatus is how a process ended.
type ExitStatus struct {
	Code   int
	Signal syscall.Signal
	At     time.Time
}

// ExecSpec runs a command inside a running container.
type ExecSpec struct {
	PID        int
	Args, Env  []string
	Dir        string
	UID, GID   uint32
	Groups     []uint32
	Caps       []string
	NoNewPrivs bool
	Stdin      []byte
	Timeout    time.Duration
}

// ExecResult is the outcome of Exec.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// ErrTimeout is returned by Exec when the command ran past its timeout.
var ErrTimeout = errors.New("exec timed out")

// Exec runs a command inside a running container.
func Exec(ctx context.Context, s ExecSpec) (ExecResult, error) {
	return ExecResult{}, errors.New("not implemented")
}
