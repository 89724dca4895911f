package meshctl

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection keeps meshctl buildable anywhere and independent of
// the agent's internals: cli/ may use the agent's admin API types
// (agent/api) but never github.com/cilium/ebpf, the bpf/ package or any
// other part of agent/.
func TestImportDirection(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found (go test runs with it on PATH): %v", err)
	}
	const module = "github.com/sluice-mesh/sluice"
	out, err := exec.Command(goBin, "list", "-deps", "-test", module+"/cli/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		switch {
		case strings.HasPrefix(dep, "github.com/cilium/ebpf"),
			dep == module+"/bpf" || strings.HasPrefix(dep, module+"/bpf/"),
			strings.HasPrefix(dep, module+"/agent/") && dep != module+"/agent/api":
			t.Errorf("cli/ depends on %s", dep)
		}
	}
}
