package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// LockPath is the machine-wide lock of LockMachine.
const LockPath = "/run/lock/sluice-cluster.lock"

// LockFDEnv names the environment variable through which a process that
// holds the lock passes it to a child it runs (such as `cluster up` run by
// the main module's end-to-end tests): the number of an inherited
// descriptor open on LockPath. LockMachine then uses that descriptor
// instead of waiting for the lock its parent holds.
const LockFDEnv = "SLUICE_CLUSTER_LOCK_FD"

// LockMachine waits until no other process holds the machine's cluster lock
// and takes it; unlock releases it. A cluster uses machine-wide resources
// (ports, the kubepods cgroups, KUBE-* iptables chains), so only one runs at
// a time: tests that bring one up hold the lock from Up to Down, so that
// packages tested in parallel (go test ./...) take turns. Up and Down do not
// take it themselves.
func LockMachine(ctx context.Context) (unlock func(), err error) {
	if v := os.Getenv(LockFDEnv); v != "" {
		return inheritedLock(v)
	}
	if err := os.MkdirAll("/run/lock", 0o755); err != nil {
		return nil, fmt.Errorf("lock cluster: %w", err)
	}
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock cluster: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock cluster %s: %w", LockPath, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock cluster %s (held by another test run): %w", LockPath, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return func() { f.Close() }, nil
}

// inheritedLock checks that descriptor v is open on LockPath and holds its
// lock (a flock taken through the same open file description succeeds at
// once), and returns an unlock that leaves the parent's lock alone.
func inheritedLock(v string) (func(), error) {
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("lock cluster: %s=%q is not an inherited descriptor", LockFDEnv, v)
	}
	var got, want syscall.Stat_t
	if err := syscall.Fstat(fd, &got); err != nil {
		return nil, fmt.Errorf("lock cluster: %s=%d: %w", LockFDEnv, fd, err)
	}
	if err := syscall.Stat(LockPath, &want); err != nil {
		return nil, fmt.Errorf("lock cluster: %w", err)
	}
	if got.Dev != want.Dev || got.Ino != want.Ino {
		return nil, fmt.Errorf("lock cluster: %s=%d is not open on %s", LockFDEnv, fd, LockPath)
	}
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("lock cluster: %s=%d does not hold %s (another process does): %w", LockFDEnv, fd, LockPath, err)
	}
	// An inherited descriptor is not close-on-exec: without this, every
	// daemon Up starts would inherit the lock and hold it after its parent
	// is gone, and the next Down would wait for the daemons it is to stop.
	syscall.CloseOnExec(fd)
	return func() {}, nil
}
