package proxy_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection keeps the proxy small and its dependencies one way:
// proxy/ may use the control plane's API packages (controlplane/api/...) and
// the shared names and certificate helpers (internal/meshmeta,
// internal/pki) but no other part of the control plane, nothing of the
// agent, the CLI or the eBPF side, and no Kubernetes client.
func TestImportDirection(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found (go test runs with it on PATH): %v", err)
	}
	const module = "github.com/sluice-mesh/sluice"
	out, err := exec.Command(goBin, "list", "-deps", module+"/proxy/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for dep := range strings.FieldsSeq(string(out)) {
		switch {
		case strings.HasPrefix(dep, "k8s.io/"),
			strings.HasPrefix(dep, "github.com/cilium/ebpf"),
			strings.HasPrefix(dep, module+"/") &&
				!strings.HasPrefix(dep, module+"/proxy") &&
				!strings.HasPrefix(dep, module+"/controlplane/api/") &&
				dep != module+"/internal/meshmeta" && dep != module+"/internal/pki":
			t.Errorf("proxy/ depends on %s", dep)
		}
	}
}
