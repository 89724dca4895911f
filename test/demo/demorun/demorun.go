// Package demorun deploys the demo application (package demo) through
// meshctl and waits until `meshctl stat` shows its traffic: the steps that
// `make demo` (cmd/demo) and the end-to-end test share, so that the test
// runs what users run.
package demorun

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluice-mesh/sluice/cli/install"
	mapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/internal/apply"
	"github.com/sluice-mesh/sluice/test/demo"
)

// FieldManager names the demo's applier in managedFields.
const FieldManager = "sluice-demo"

// Runner runs meshctl against one cluster.
type Runner struct {
	// MeshctlPath is the meshctl program.
	MeshctlPath string
	// Kubeconfig is the cluster's kubeconfig file.
	Kubeconfig string
	// Out gets progress lines.
	Out io.Writer
	// Poll is how often WaitTraffic asks; default 5 s.
	Poll time.Duration
}

// Meshctl runs meshctl with args and the kubeconfig, and returns its
// standard output; an error carries its standard error.
func (r Runner) Meshctl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.MeshctlPath, append(args, "--kubeconfig", r.Kubeconfig)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("meshctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Objects decodes multi-document YAML into objects, skipping empty ones.
func Objects(manifest []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("decode manifest: %w", err)
		}
		if len(obj.Object) > 0 {
			out = append(out, obj)
		}
	}
}

// Deployments are the names of the demo's Deployments, each of which
// serves traffic (the load generator is a StatefulSet).
func Deployments() ([]string, error) {
	objs, err := Objects(demo.Manifest)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			names = append(names, o.GetName())
		}
	}
	slices.Sort(names)
	return names, nil
}

// Deploy injects the demo's manifest with `meshctl inject`, applies the
// result with server-side apply, and waits until every workload is ready.
func (r Runner) Deploy(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "sluice-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "demo.yaml")
	if err := os.WriteFile(file, demo.Manifest, 0o600); err != nil {
		return err
	}
	fmt.Fprintln(r.Out, "demo: meshctl inject demo.yaml | apply")
	injected, err := r.Meshctl(ctx, "inject", file)
	if err != nil {
		return err
	}
	objs, err := Objects(injected)
	if err != nil {
		return fmt.Errorf("meshctl inject's output: %w", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", r.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", r.Kubeconfig, err)
	}
	a, err := apply.New(cfg, FieldManager)
	if err != nil {
		return err
	}
	if err := a.Apply(ctx, objs); err != nil {
		return fmt.Errorf("deploy the demo: %w", err)
	}
	in, err := install.New(cfg, r.Out)
	if err != nil {
		return err
	}
	fmt.Fprintln(r.Out, "demo: waiting for the demo's workloads")
	return in.Wait(ctx, objs)
}

// Delete deletes the demo's namespace and waits until it is gone.
func (r Runner) Delete(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", r.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load %s: %w", r.Kubeconfig, err)
	}
	in, err := install.New(cfg, r.Out)
	if err != nil {
		return err
	}
	ns := in.Client.CoreV1().Namespaces()
	if err := ns.Delete(ctx, demo.Namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", demo.Namespace, err)
	}
	for {
		if _, err := ns.Get(ctx, demo.Namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s is still there: %w", demo.Namespace, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// Stat runs `meshctl stat deploy -n demo -o json`.
func (r Runner) Stat(ctx context.Context) ([]mapi.StatRow, error) {
	out, err := r.Meshctl(ctx, "stat", "deploy", "-n", demo.Namespace, "-o", "json")
	if err != nil {
		return nil, err
	}
	var rows []mapi.StatRow
	if err := json.Unmarshal(out, &rows); err != nil {
		return nil, fmt.Errorf("meshctl stat -o json: %w: %s", err, out)
	}
	return rows, nil
}

// FailingDeployment is the demo's Deployment that fails a share of its
// requests (authors, --failure-rate=0.1).
const FailingDeployment = "authors"

// Flowing says why rows do not yet show every demo Deployment meshed with
// traffic, success rate and latencies, and the failing one with failures;
// "" when they do.
func Flowing(rows []mapi.StatRow, deployments []string) string {
	var missing []string
	for _, name := range deployments {
		i := slices.IndexFunc(rows, func(r mapi.StatRow) bool { return r.Name == name })
		switch {
		case i < 0:
			missing = append(missing, name+": no row")
		case rows[i].TotalPods == 0 || rows[i].MeshedPods != rows[i].TotalPods:
			missing = append(missing, fmt.Sprintf("%s: %d/%d meshed", name, rows[i].MeshedPods, rows[i].TotalPods))
		case rows[i].RequestRate <= 0 || rows[i].SuccessRate == nil:
			missing = append(missing, name+": no requests yet")
		case rows[i].LatencyP50Ms == nil || rows[i].LatencyP95Ms == nil || rows[i].LatencyP99Ms == nil:
			missing = append(missing, name+": no latencies yet")
		case name == FailingDeployment && *rows[i].SuccessRate >= 1:
			// Prometheus rates a series from its second sample on: the
			// failures' series starts later than the successes'.
			missing = append(missing, name+": no failure counted yet")
		}
	}
	return strings.Join(missing, ", ")
}

// WaitTraffic polls `meshctl stat` until every demo Deployment is meshed
// and has traffic (Flowing), and returns the last rows.
func (r Runner) WaitTraffic(ctx context.Context) ([]mapi.StatRow, error) {
	deployments, err := Deployments()
	if err != nil {
		return nil, err
	}
	poll := r.Poll
	if poll <= 0 {
		poll = 5 * time.Second
	}
	fmt.Fprintln(r.Out, "demo: waiting until meshctl stat shows traffic on", strings.Join(deployments, ", "))
	start := time.Now()
	last := "not asked yet"
	var lastSaid time.Time
	for {
		rows, err := r.Stat(ctx)
		if err != nil {
			last = err.Error()
		} else if why := Flowing(rows, deployments); why == "" {
			fmt.Fprintf(r.Out, "demo: traffic flows (%s)\n", time.Since(start).Round(time.Second))
			return rows, nil
		} else {
			last = why
		}
		if time.Since(lastSaid) >= 15*time.Second {
			fmt.Fprintf(r.Out, "  … %s: %s\n", time.Since(start).Round(time.Second), last)
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no traffic after %s: %s", time.Since(start).Round(time.Second), last)
		case <-time.After(poll):
		}
	}
}

// NextSteps is what `make demo` prints at the end.
func NextSteps(meshctl, kubeconfig string) string {
	return fmt.Sprintf(`
The demo runs. Try:

  export KUBECONFIG=%[2]s PATH=%[1]s:$PATH
  meshctl stat deploy -n demo          # success rate, RPS and latency of every deployment
  meshctl tap deploy/web -n demo       # live requests through web's proxy
  meshctl edges deploy -n demo         # who talks to whom, and over mTLS
  meshctl top deploy/web -n demo       # web's traffic per authority
  meshctl check --proxy                # the control plane and every proxy
  meshctl dashboard                    # the dashboard's URL

Stop it with: make demo-down
`, filepath.Dir(meshctl), kubeconfig)
}
