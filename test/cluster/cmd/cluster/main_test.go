package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := newRoot(&stdout, &stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return stdout.String(), stderr.String(), err
}

func TestHelpListsCommands(t *testing.T) {
	out, _, err := run(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"up", "down", "status", "kubeconfig", "build", "leftovers", "kubectl", "<dir>/kubeconfig"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q:\n%s", want, out)
		}
	}
}

func TestKubeconfigPath(t *testing.T) {
	dir := t.TempDir()
	out, _, err := run(t, "kubeconfig", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(out), dir+"/kubeconfig"; got != want {
		t.Errorf("kubeconfig printed %q, want %q", got, want)
	}
}

// TestStatusOfNoCluster lists every daemon as not running, and does not
// run kubectl, when nothing runs under the state directory.
func TestStatusOfNoCluster(t *testing.T) {
	out, _, err := run(t, "status", "--dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "procri", "kubelet", "kube-proxy"} {
		if !strings.Contains(out, name+" ") {
			t.Errorf("status lacks %s:\n%s", name, out)
		}
	}
	if strings.Contains(out, "running, pid") || strings.Contains(out, "NAME") {
		t.Errorf("status of no cluster:\n%s", out)
	}
}

func TestUnknownCommandFails(t *testing.T) {
	if _, _, err := run(t, "frobnicate"); err == nil {
		t.Error("an unknown command succeeded")
	}
}

func TestImage(t *testing.T) {
	dir := t.TempDir()
	table := dir + "/images.yaml"
	prog := "/bin/sh"
	// No cluster: a clear error, nothing written.
	if _, _, err := run(t, "image", "--dir", dir, "example.org/x:*", prog); err == nil || !strings.Contains(err.Error(), "cluster up first") {
		t.Fatalf("image without a cluster: %v, want an error saying to run cluster up", err)
	}
	if err := os.WriteFile(table, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"example.org/x:*", "sh"}, "absolute path"},
		{[]string{"example.org/x:*", dir}, "not an executable file"},
		{[]string{"example.org/x:*", "/nonexistent/prog"}, "no such file"},
		{[]string{"example.org/x:*", prog, "extra"}, "put -- before"},
		{[]string{"example.org/x:*"}, "requires at least 2 arg"},
	} {
		if _, _, err := run(t, append([]string{"image", "--dir", dir}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("image %q: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
	out, _, err := run(t, "image", "--dir", dir, "--env", "A=b", "example.org/x:*", prog, "--", "-c", "echo hi")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "example.org/x:* -> /bin/sh") {
		t.Errorf("image printed %q", out)
	}
	b, err := os.ReadFile(table)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"example.org/x:*", "/bin/sh", "echo hi", "A=b"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("image table lacks %q:\n%s", want, b)
		}
	}
}
