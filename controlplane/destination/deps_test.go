package destination_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportDirection keeps the layers one way: the watcher imports no
// protobuf, gRPC or API package (client-go itself uses protobuf) nor the
// layers above it; nothing of the destination service (tests aside)
// depends on the proxy.
func TestImportDirection(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found (go test runs with it on PATH): %v", err)
	}
	const module = "github.com/sluice-mesh/sluice"
	list := func(args ...string) []string {
		out, err := exec.Command(goBin, append([]string{"list"}, args...)...).Output()
		if err != nil {
			t.Fatalf("go list %v: %v", args, err)
		}
		return strings.Fields(string(out))
	}
	deps := func(pkg string) []string { return list("-deps", pkg) }
	for _, dep := range list("-f", `{{join .Imports "\n"}}`, module+"/controlplane/destination/watcher") {
		if strings.HasPrefix(dep, "google.golang.org/") || strings.HasPrefix(dep, module+"/controlplane/api/") ||
			strings.HasPrefix(dep, module+"/controlplane/destination") && dep != module+"/controlplane/destination/watcher" {
			t.Errorf("controlplane/destination/watcher depends on %s", dep)
		}
	}
	for _, pkg := range []string{module + "/controlplane/destination/...", module + "/controlplane/command"} {
		for _, dep := range deps(pkg) {
			if strings.HasPrefix(dep, module+"/proxy") {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}
