package cri

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// proc is a running holder or container process: one this procri started
// (its child, whose exit status it learns) or one an earlier procri started
// (adopted, watched through a pidfd; its exit status is lost).
type proc interface {
	PID() int
	Signal(sig syscall.Signal) error
	// Done is closed when the process has exited.
	Done() <-chan struct{}
	// Exit is how the process ended, once Done is closed; false when that
	// is unknown.
	Exit() (container.ExitStatus, bool)
}

// childProc is a process started through package container.
type childProc struct{ p *container.Process }

func (c childProc) PID() int                        { return c.p.PID() }
func (c childProc) Signal(sig syscall.Signal) error { return c.p.Signal(sig) }
func (c childProc) Done() <-chan struct{}           { return c.p.Done() }
func (c childProc) Exit() (container.ExitStatus, bool) {
	return c.p.Exit(), true
}

// adoptedProc is a process of an earlier procri, watched with a pidfd.
type adoptedProc struct {
	pid  int
	f    *os.File
	done chan struct{}
	at   time.Time
}

// errGone says an adopted process is no longer the one recorded.
var errGone = errors.New("process is gone")

// adopt watches pid, which must still be the process that started at start
// (clock ticks since boot); it fails with errGone when it is not. stop ends
// the watch (without closing Done).
func adopt(pid int, start uint64, stop <-chan struct{}) (*adoptedProc, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, errGone
	}
	if err != nil {
		return nil, fmt.Errorf("open pidfd of %d: %w", pid, err)
	}
	// Checked after the pidfd exists: it now pins this pid.
	if !sameProcess(pid, start) {
		_ = unix.Close(fd)
		return nil, errGone
	}
	a := &adoptedProc{pid: pid, f: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)), done: make(chan struct{})}
	go func() {
		<-stop
		_ = a.f.Close()
	}()
	go a.wait()
	return a, nil
}

// wait closes done when the pidfd turns readable (the process exited); it
// returns without closing done when the pidfd is closed first.
func (a *adoptedProc) wait() {
	rc, err := a.f.SyscallConn()
	if err != nil {
		return
	}
	err = rc.Read(func(fd uintptr) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return err == nil && n > 0
	})
	if err != nil {
		return
	}
	a.at = time.Now()
	close(a.done)
}

func (a *adoptedProc) PID() int              { return a.pid }
func (a *adoptedProc) Done() <-chan struct{} { return a.done }

// Exit is unknown for an adopted process: it is not procri's child.
func (a *adoptedProc) Exit() (container.ExitStatus, bool) {
	return container.ExitStatus{At: a.at}, false
}

// Signal sends sig through the pidfd, so a reused pid is never signalled.
func (a *adoptedProc) Signal(sig syscall.Signal) error {
	rc, err := a.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("signal %d: %w", a.pid, err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.PidfdSendSignal(int(fd), sig, nil, 0)
	}); err != nil {
		return fmt.Errorf("signal %d: %w", a.pid, err)
	}
	if serr != nil && !errors.Is(serr, unix.ESRCH) {
		return fmt.Errorf("signal %d: %w", a.pid, serr)
	}
	return nil
}
