package probe

import (
	"errors"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/test/netns"
)

func TestErrNamesMissingFeatureAndKernel(t *testing.T) {
	r := run([]feature{
		{"present", "4.0", true, func() error { return nil }},
		{"BPF_PROG_TYPE_SK_LOOKUP", "5.9", true, func() error { return errors.New("not supported") }},
		{"optional thing", "6.0", false, func() error { return errors.New("not supported") }},
	})
	err := r.Err()
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("Err() = %v, want ErrNotSupported", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "BPF_PROG_TYPE_SK_LOOKUP (Linux 5.9)") {
		t.Errorf("error does not name the feature and its kernel: %s", msg)
	}
	if strings.Contains(msg, "optional thing") || strings.Contains(msg, "present") {
		t.Errorf("error names features that are not missing required ones: %s", msg)
	}
	if !r.Has("present") || r.Has("optional thing") || r.Has("unknown") {
		t.Errorf("Has() wrong: %+v", r.Features)
	}
}

// On the build kernel every feature is present.
func TestRunOnThisKernel(t *testing.T) {
	netns.RequireRoot(t)
	r := Run()
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Features {
		if !f.OK {
			t.Errorf("%s (Linux %s) missing: %s", f.Name, f.MinKernel, f.Error)
		}
	}
}
