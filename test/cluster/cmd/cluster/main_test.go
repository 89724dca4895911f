package main

import (
	"bytes"
	"context"
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
