package cluster

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// TestInheritedLock: a child given the descriptor its parent locked uses
// it; a descriptor that does not hold the lock, or is open on another file,
// is refused.
func TestInheritedLock(t *testing.T) {
	testenv.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // hang guard: another package's cluster test
	defer cancel()
	unlock, err := LockMachine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unlocked := false
	defer func() {
		if !unlocked {
			unlock()
		}
	}()

	// The lock is held through another open file description, as a parent's.
	held, err := os.OpenFile(LockPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	t.Setenv(LockFDEnv, strconv.Itoa(int(held.Fd())))
	if _, err := LockMachine(ctx); err == nil || !strings.Contains(err.Error(), "does not hold") {
		t.Errorf("LockMachine with a descriptor that does not hold the lock: %v", err)
	}
	other, err := os.Open("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	t.Setenv(LockFDEnv, strconv.Itoa(int(other.Fd())))
	if _, err := LockMachine(ctx); err == nil || !strings.Contains(err.Error(), "is not open on") {
		t.Errorf("LockMachine with a descriptor on another file: %v", err)
	}
	t.Setenv(LockFDEnv, "x")
	if _, err := LockMachine(ctx); err == nil || !strings.Contains(err.Error(), "not an inherited descriptor") {
		t.Errorf("LockMachine with a malformed %s: %v", LockFDEnv, err)
	}

	// Now hand over: release ours, lock through held, and inherit it.
	unlock()
	unlocked = true
	if err := syscall.Flock(int(held.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Setenv(LockFDEnv, strconv.Itoa(int(held.Fd())))
	release, err := LockMachine(ctx)
	if err != nil {
		t.Fatalf("LockMachine with the held descriptor: %v", err)
	}
	// The daemons Up starts must not inherit it.
	if flags, err := unix.FcntlInt(held.Fd(), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("the inherited lock descriptor is not close-on-exec (flags %#x, %v): daemons would hold the lock", flags, err)
	}
	release()
	// release left the parent's lock in place: a fresh open cannot take it.
	probe, err := os.OpenFile(LockPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if err := syscall.Flock(int(probe.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		t.Error("the inherited lock was released by its child")
	}
}
