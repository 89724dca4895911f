// Package testenv holds the prerequisites checks of the cluster module's
// tests: a missing prerequisite skips a test outside CI, with a message that
// names it, and fails it in CI (env CI=true).
//
// It mirrors github.com/sluice-mesh/sluice/test/netns's helpers: this module
// does not import the product module, so that the Kubernetes components are
// built with exactly the dependency versions of k8s.io/kubernetes.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// InCI reports whether the tests run in CI (env CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips t, or fails it in CI, with a message naming what is missing.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI=true: failing instead of skipping)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips (or in CI fails) t unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if euid := os.Geteuid(); euid != 0 {
		Missing(t, "test needs root (running as euid %d)", euid)
	}
}

// RequireCommand skips (or in CI fails) t unless name is on PATH.
func RequireCommand(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		Missing(t, "test needs program %q on PATH: %v", name, err)
	}
}

// Buffer is a bytes.Buffer that is safe for concurrent writes and reads:
// the output of a process or of concurrent steps, read while it grows.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
