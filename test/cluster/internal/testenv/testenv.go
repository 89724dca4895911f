// Package testenv holds the prerequisites checks of the cluster module's
// tests: a missing prerequisite skips a test outside CI, with a message that
// names it, and fails it in CI (env CI=true).
//
// It mirrors github.com/sluice-mesh/sluice/test/netns's helpers: this module
// does not import the product module, so that the Kubernetes components are
// built with exactly the dependency versions of k8s.io/kubernetes.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
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
