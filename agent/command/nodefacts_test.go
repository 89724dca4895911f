package command

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

func writeFixture(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func runNodeFacts(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := NewRoot()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"node-facts"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

// TestNodeFacts runs the command against a node's /proc and /sys mounted
// elsewhere, as the probe pod of meshctl check --pre does.
func TestNodeFacts(t *testing.T) {
	root := t.TempDir()
	proc, sys := filepath.Join(root, "host/proc"), filepath.Join(root, "host/sys")
	writeFixture(t, filepath.Join(proc, "sys/kernel/osrelease"), "5.10.0-28-amd64\n")
	writeFixture(t, filepath.Join(proc, "1/mountinfo"), `31 22 0:28 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw
42 22 0:39 / /sys/fs/bpf rw - bpf bpf rw
`)
	writeFixture(t, filepath.Join(proc, "self/mountinfo"), "1 0 0:1 / / rw - overlay overlay rw\n")

	out, err := runNodeFacts(t, "--proc-root", proc, "--sys-root", sys)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(out, "\n") != 1 {
		t.Errorf("output is not one line: %q", out)
	}
	var f nodefacts.Facts
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("%v: %q", err, out)
	}
	want := nodefacts.Facts{Kernel: "5.10.0-28-amd64", Cgroup2Mount: "/sys/fs/cgroup", BPFFSMounted: true}
	if !strings.Contains(f.BTFError, "find kernel BTF") {
		t.Errorf("BTF error = %q", f.BTFError)
	}
	f.BTFError = ""
	if f != want {
		t.Errorf("facts = %+v, want %+v", f, want)
	}
	for _, key := range []string{`"kernel":`, `"btf":false`, `"cgroup2Mount":`, `"bpffsMounted":true`} {
		if !strings.Contains(out, key) {
			t.Errorf("output lacks %s: %s", key, out)
		}
	}

	// The command's own mount namespace instead of the node's.
	out, err = runNodeFacts(t, "--proc-root", proc, "--sys-root", sys, "--mounts-of", "self")
	if err != nil || !strings.Contains(out, `"bpffsMounted":false`) {
		t.Errorf("--mounts-of self: %v %s", err, out)
	}
}

func TestNodeFactsRejects(t *testing.T) {
	for _, args := range [][]string{
		{"--proc-root", "proc"},
		{"--sys-root", "sys"},
		{"--mounts-of", ""},
	} {
		if _, err := runNodeFacts(t, args...); err == nil {
			t.Errorf("node-facts %q succeeded", args)
		}
	}
}
