package demorun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BinDir holds the programs `make demo` builds: the cluster's images map
// to them, and every user may run them (the proxy runs as uid 2102), so
// not under /tmp, of which every container has its own.
const BinDir = "/var/lib/sluice-demo/bin"

// Images maps the images the chart and the demo name to the programs of
// BinDir.
var Images = map[string]string{
	"ghcr.io/sluice-mesh/controller:*": "sluice-controller",
	"ghcr.io/sluice-mesh/proxy:*":      "sluice-proxy",
	"ghcr.io/sluice-mesh/agent:*":      "sluice-agent",
	"ghcr.io/sluice-mesh/demo:*":       "sluice-demo",
}

// programs are the packages BinDir gets, relative to the module root.
var programs = []string{
	"./controlplane/cmd/sluice-controller",
	"./proxy/cmd/sluice-proxy",
	"./agent/cmd/sluice-agent",
	"./cli/cmd/meshctl",
	"./test/demo/cmd/sluice-demo",
}

// Env is where `make demo` runs: the module root and the output.
type Env struct {
	// Root is the main module's root directory.
	Root string
	// Out gets progress and the commands' output.
	Out io.Writer
}

// cluster runs test/cluster's cluster command (built into BinDir) and
// returns its standard output; its standard error goes to Out.
func (e Env) cluster(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(BinDir, "cluster"), args...)
	cmd.Dir = filepath.Join(e.Root, "test", "cluster")
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, e.Out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", strings.Join(args, " "), err)
	}
	return stdout.Bytes(), nil
}

// Build builds Sluice's programs, the demo and the cluster command into
// BinDir.
func (e Env) Build(ctx context.Context) error {
	if err := os.MkdirAll(BinDir, 0o755); err != nil {
		return err
	}
	for d := BinDir; d != "/var/lib"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	fmt.Fprintln(e.Out, "demo: building Sluice, the demo and the cluster")
	build := exec.CommandContext(ctx, "go", append([]string{"build", "-o", BinDir + "/"}, programs...)...)
	build.Dir, build.Stdout, build.Stderr = e.Root, e.Out, e.Out
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}
	cl := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(BinDir, "cluster"), "./cmd/cluster")
	cl.Dir, cl.Stdout, cl.Stderr = filepath.Join(e.Root, "test", "cluster"), e.Out, e.Out
	if err := cl.Run(); err != nil {
		return fmt.Errorf("build test/cluster's cluster command: %w", err)
	}
	return nil
}

// ClusterUp starts the local cluster (or completes a running one), maps
// the images to BinDir's programs and returns the kubeconfig's path.
func (e Env) ClusterUp(ctx context.Context) (string, error) {
	fmt.Fprintln(e.Out, "demo: starting the local cluster (the first time builds Kubernetes: about 8 minutes)")
	out, err := e.cluster(ctx, "up")
	if err != nil {
		return "", err
	}
	var kubeconfig string
	for line := range strings.Lines(string(out)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "kubeconfig: "); ok {
			kubeconfig = p
		}
	}
	if kubeconfig == "" {
		return "", fmt.Errorf("cluster up printed no kubeconfig:\n%s", out)
	}
	for image, prog := range Images {
		if _, err := e.cluster(ctx, "image", image, filepath.Join(BinDir, prog)); err != nil {
			return "", err
		}
	}
	return kubeconfig, nil
}

// Up is `make demo`: build, cluster, `meshctl install` (upgrade when
// installed), `meshctl check` and `check --ebpf`, the demo deployed
// through `meshctl inject`, and a wait until `meshctl stat` shows its
// traffic; then what to run next.
func (e Env) Up(ctx context.Context) error {
	if err := e.Build(ctx); err != nil {
		return err
	}
	kubeconfig, err := e.ClusterUp(ctx)
	if err != nil {
		return err
	}
	r := Runner{MeshctlPath: filepath.Join(BinDir, "meshctl"), Kubeconfig: kubeconfig, Out: e.Out}
	step := func(args ...string) error {
		fmt.Fprintf(e.Out, "demo: meshctl %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, r.MeshctlPath, append(args, "--kubeconfig", kubeconfig)...)
		cmd.Stdout, cmd.Stderr = e.Out, e.Out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("meshctl %s: %w", strings.Join(args, " "), err)
		}
		return nil
	}
	if err := step("install"); err != nil {
		// Installed already (a second make demo): upgrade to this build.
		if err := step("upgrade"); err != nil {
			return err
		}
	}
	if err := step("check", "--wait", "2m"); err != nil {
		return err
	}
	if err := step("check", "--ebpf"); err != nil {
		return err
	}
	if err := r.Deploy(ctx); err != nil {
		return err
	}
	if _, err := r.WaitTraffic(ctx); err != nil {
		return err
	}
	if err := step("stat", "deploy", "-n", "demo"); err != nil {
		return err
	}
	fmt.Fprint(e.Out, NextSteps(r.MeshctlPath, kubeconfig))
	return nil
}

// Down is `make demo-down`: the demo and Sluice uninstalled, then the
// cluster stopped and swept. It goes on after an error and returns them
// all.
func (e Env) Down(ctx context.Context) error {
	var errs []error
	meshctl := filepath.Join(BinDir, "meshctl")
	if out, err := e.cluster(ctx, "status"); err == nil && strings.Contains(string(out), "running") {
		kubeconfig := "/var/lib/sluice-cluster/kubeconfig"
		if b, err := e.cluster(ctx, "kubeconfig"); err == nil {
			kubeconfig = strings.TrimSpace(string(b))
		}
		r := Runner{MeshctlPath: meshctl, Kubeconfig: kubeconfig, Out: e.Out}
		if err := r.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
		cmd := exec.CommandContext(ctx, meshctl, "uninstall", "--kubeconfig", kubeconfig)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = e.Out, io.MultiWriter(e.Out, &stderr)
		if err := cmd.Run(); err != nil && !strings.Contains(stderr.String(), "nothing to uninstall") {
			errs = append(errs, fmt.Errorf("meshctl uninstall: %w", err))
		}
	}
	if _, err := e.cluster(ctx, "down"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
