package container

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// SandboxSpec describes a pod sandbox's holder: a process, like the pause
// container, that holds the pod's namespaces (and sits in the pod cgroup).
type SandboxSpec struct {
	HostNetwork bool                // share the host's net and UTS namespaces (no new ones)
	HostIPC     bool                // share the host's IPC namespace
	Hostname    string              // set in the new UTS namespace (ignored with HostNetwork)
	Cgroup      func(pid int) error // called after the process exists and before it unshares; places it
	Log         *slog.Logger        // nil: no logging
}

// sandboxSpec is what the holder gets from StartSandbox.
type sandboxSpec struct {
	NewNet, NewUTS, NewIPC bool
	Hostname               string
}

// StartSandbox starts the holder; it returns once its namespaces exist,
// with lo up in a new network namespace. SIGTERM or SIGINT end the holder
// with exit code 0.
func StartSandbox(s SandboxSpec) (*Process, error) {
	log := logger(s.Log)
	spec := sandboxSpec{NewNet: !s.HostNetwork, NewUTS: !s.HostNetwork, NewIPC: !s.HostIPC}
	if spec.NewUTS {
		spec.Hostname = s.Hostname
	}
	cmd, err := launch(child{mode: modeSandbox, spec: spec, cgroup: s.Cgroup})
	if err != nil {
		return nil, fmt.Errorf("start sandbox: %w", err)
	}
	log.Debug("sandbox started", "pid", cmd.Process.Pid, "hostNetwork", s.HostNetwork, "hostIPC", s.HostIPC)
	return newProcess(cmd, log.With("sandbox", cmd.Process.Pid)), nil
}

// runSandbox is the holder: it unshares on the main thread (whose
// namespaces /proc/<pid>/ns shows), reports ready by closing status, and
// waits for SIGTERM or SIGINT.
func runSandbox(s sandboxSpec, status *os.File) error {
	if unix.Gettid() != os.Getpid() {
		return errors.New("sandbox holder does not run on its main thread: call container.Init first thing in main")
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	var flags int
	if s.NewNet {
		flags |= unix.CLONE_NEWNET
	}
	if s.NewUTS {
		flags |= unix.CLONE_NEWUTS
	}
	if s.NewIPC {
		flags |= unix.CLONE_NEWIPC
	}
	if flags != 0 {
		if err := unix.Unshare(flags); err != nil {
			return fmt.Errorf("unshare sandbox namespaces: %w", err)
		}
	}
	if s.NewUTS && s.Hostname != "" {
		if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
			return fmt.Errorf("set hostname %q: %w", s.Hostname, err)
		}
	}
	if s.NewNet {
		if err := linkUp("lo"); err != nil {
			return err
		}
	}
	status.Close()
	<-stop
	os.Exit(0)
	return nil
}

// linkUp sets the interface up in the calling thread's network namespace.
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get %s flags: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	return nil
}
