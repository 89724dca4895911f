package build

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestKubeLDFlags(t *testing.T) {
	got := kubeLDFlags()
	for _, want := range []string{
		"-X k8s.io/component-base/version.gitVersion=" + KubernetesVersion,
		"-X k8s.io/component-base/version.gitMajor=1",
		"-X k8s.io/component-base/version.gitMinor=34",
		"-X k8s.io/client-go/pkg/version.gitVersion=" + KubernetesVersion,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("ldflags %q lack %q", got, want)
		}
	}
}

func TestGoModPinsKubernetesVersion(t *testing.T) {
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"k8s.io/kubernetes " + KubernetesVersion,
		"k8s.io/api => k8s.io/api v0" + strings.TrimPrefix(KubernetesVersion, "v1"),
		"k8s.io/cri-api => k8s.io/cri-api v0" + strings.TrimPrefix(KubernetesVersion, "v1"),
	} {
		if !bytes.Contains(mod, []byte(want)) {
			t.Errorf("go.mod does not contain %q: KubernetesVersion and go.mod disagree", want)
		}
	}
}

func TestCachedBuildsOnceAndLeavesNothingHalfDone(t *testing.T) {
	c := Cache{Dir: t.TempDir(), Out: &bytes.Buffer{}}
	runs := 0
	build := func(_ context.Context, tmp string) error {
		runs++
		return os.WriteFile(filepath.Join(tmp, "prog"), []byte("#!/bin/sh\n"), 0o755)
	}
	for range 2 {
		dir, err := c.cached(context.Background(), "thing-v1", []string{"prog"}, build)
		if err != nil {
			t.Fatal(err)
		}
		if !complete(dir, []string{"prog"}) {
			t.Fatalf("%s lacks prog", dir)
		}
	}
	if runs != 1 {
		t.Errorf("built %d times, want once (the second call must hit the cache)", runs)
	}
	if !strings.Contains(c.Out.(*bytes.Buffer).String(), "built thing-v1 in ") {
		t.Errorf("no build time printed: %q", c.Out.(*bytes.Buffer).String())
	}

	_, err := c.cached(context.Background(), "broken-v1", []string{"prog"}, func(context.Context, string) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "not every one of prog") {
		t.Fatalf("a build that produced nothing: err %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.Dir, "broken-v1")); !os.IsNotExist(err) {
		t.Errorf("a failed build left its directory behind: %v", err)
	}
}

// TestCNIPlugins builds the real plugins (or finds them cached) and asks
// each for the CNI versions it supports, as a runtime does.
func TestCNIPlugins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := Cache{}.CNIPlugins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name := range CNIPlugins {
		cmd := exec.CommandContext(ctx, filepath.Join(dir, name))
		cmd.Env = []string{"CNI_COMMAND=VERSION"}
		cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s VERSION: %v", name, err)
		}
		var v struct {
			Supported []string `json:"supportedVersions"`
		}
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%s VERSION answer %q: %v", name, out, err)
		}
		if !strings.Contains(strings.Join(v.Supported, " "), "1.0.0") {
			t.Errorf("%s supports %v, not CNI 1.0.0", name, v.Supported)
		}
	}
}

// TestKubernetesVersions builds the components (about 4-7 minutes cold,
// then cached) and checks that they report the pinned version.
func TestKubernetesVersions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	bins, err := Cache{}.Kubernetes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range KubernetesCommands {
		args := []string{"--version"}
		if name == "kubectl" {
			args = []string{"version", "--client"}
		}
		out, err := exec.CommandContext(ctx, bins[name], args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		if !strings.Contains(string(out), KubernetesVersion) {
			t.Errorf("%s reports %q, want %s", name, strings.TrimSpace(string(out)), KubernetesVersion)
		}
	}
}

// TestCoreDNS builds CoreDNS from its module (or finds it cached) and checks
// its version and that the kubernetes plugin is compiled in.
func TestCoreDNS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	path, err := Cache{}.CoreDNS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, path, "-version").CombinedOutput()
	if err != nil {
		t.Fatalf("coredns -version: %v\n%s", err, out)
	}
	if want := "CoreDNS-" + strings.TrimPrefix(CoreDNSVersion, "v"); !strings.Contains(string(out), want) {
		t.Errorf("coredns -version says %q, want %s", out, want)
	}
	plugins, err := exec.CommandContext(ctx, path, "-plugins").CombinedOutput()
	if err != nil {
		t.Fatalf("coredns -plugins: %v\n%s", err, plugins)
	}
	if !strings.Contains("\n"+string(plugins), "\nkubernetes\n") {
		t.Errorf("coredns lacks the kubernetes plugin:\n%s", plugins)
	}
}
