package netns

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// inCI reports whether the tests run in CI (env CI=true), where a missing
// prerequisite is a failure rather than a reason to skip.
func inCI() bool { return os.Getenv("CI") == "true" }

// missing skips t, or fails it in CI, with a message naming what is missing.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if inCI() {
		t.Fatalf("%s (CI=true: failing instead of skipping)", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips the test when it does not run as root (effective uid 0), with
// a message naming what is missing. In CI (env CI=true) it fails the test instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if euid := os.Geteuid(); euid != 0 {
		missing(t, "netns: test needs root (running as euid %d)", euid)
	}
}

// RequireCommand skips the test when the program name is not found on PATH, with a
// message naming it. In CI (env CI=true) it fails the test instead.
func RequireCommand(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		missing(t, "netns: test needs program %q on PATH: %v", name, err)
	}
}
