package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// LockPath is the machine-wide lock of LockMachine.
const LockPath = "/run/lock/sluice-cluster.lock"

// LockMachine waits until no other process holds the machine's cluster lock
// and takes it; unlock releases it. A cluster uses machine-wide resources
// (ports, the kubepods cgroups, KUBE-* iptables chains), so only one runs at
// a time: tests that bring one up hold the lock from Up to Down, so that
// packages tested in parallel (go test ./...) take turns. Up and Down do not
// take it themselves.
func LockMachine(ctx context.Context) (unlock func(), err error) {
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
