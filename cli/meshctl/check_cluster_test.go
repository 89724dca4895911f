package meshctl

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sluice-mesh/sluice/cli/internal/fakekube"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// checkCluster runs `meshctl check args...` against the fake cluster c
// (nil: the kubeconfig's, of which there is none) with the fake cluster's
// clock, and returns its output.
func checkCluster(t *testing.T, c *fakekube.Cluster, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	o := newCheckOptions()
	o.now = func() time.Time { return fakekube.Now }
	if c != nil {
		o.connect = c.Connect
		o.probeLogs = c.ProbeLogs
	}
	cmd := newCmdCheckWith(&globalOptions{host: fixtureHost(t)}, o)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true // as under the root command
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append([]string{}, args...)) // nil would be os.Args
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// noKubeconfig leaves the test without any kubeconfig.
func noKubeconfig(t testing.TB) {
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
}

// breakCluster makes the failures of the failing golden run: a Deployment
// not ready, an issuer that expires soon (a warning), a webhook that lets
// pods through unmeshed and a control-plane target down.
func breakCluster(t testing.TB, c *fakekube.Cluster) {
	t.Helper()
	ctx := context.Background()
	deps := c.Client.AppsV1().Deployments(fakekube.Namespace)
	d, err := deps.Get(ctx, "sluice-destination", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status.ReadyReplicas, d.Status.AvailableReplicas = 0, 0
	if _, err := deps.UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	creds, err := pki.Generate(pki.GenerateOptions{Now: fakekube.Now.Add(-24 * time.Hour), IssuerLifetime: 31 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c.SetIdentity(t, creds.TrustAnchorPEM, creds.IssuerCertPEM, creds.IssuerKeyPEM)
	c.Webhook = nil
	for i, tg := range c.Targets {
		if tg.Labels["pod"] == "sluice-tap-7d9c5-x2k4q" {
			c.Targets[i].Health, c.Targets[i].LastError = "down", "context deadline exceeded"
		}
	}
}

func TestCheckClusterGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t testing.TB) *fakekube.Cluster
		args  []string
		want  error
	}{
		{"check_pass", fakekube.Healthy, nil, nil},
		{"check_pass_json", fakekube.Healthy, []string{"-o", "json"}, nil},
		{"check_fail", func(t testing.TB) *fakekube.Cluster { c := fakekube.Healthy(t); breakCluster(t, c); return c }, nil, errChecksFailed},
		{"check_fail_json", func(t testing.TB) *fakekube.Cluster { c := fakekube.Healthy(t); breakCluster(t, c); return c }, []string{"-o", "json"}, errChecksFailed},
		{"check_not_installed", fakekube.Empty, nil, errChecksFailed},
		{"check_no_cluster", func(t testing.TB) *fakekube.Cluster { noKubeconfig(t); return nil }, nil, errChecksFailed},
		{"check_no_cluster_json", func(t testing.TB) *fakekube.Cluster { noKubeconfig(t); return nil }, []string{"-o", "json"}, errChecksFailed},
		{"check_proxy_pass", fakekube.Healthy, []string{"--proxy"}, nil},
		{"check_pre_pass", fakekube.Empty, []string{"--pre"}, nil},
		{"check_pre_installed", fakekube.Healthy, []string{"--pre"}, nil},
		{"check_ebpf_cluster_pass", fakekube.Healthy, []string{"--ebpf"}, nil},
		{"check_ebpf_cluster_pass_json", fakekube.Healthy, []string{"--ebpf", "-o", "json"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.setup(t)
			stdout, stderr, err := checkCluster(t, c, tc.args...)
			assertCheckRun(t, tc.name, stdout, stderr, err, tc.want)
		})
	}
}

// TestCheckNoClusterOneLine: without a cluster, the check says so in one
// failed check and runs nothing else.
func TestCheckNoClusterOneLine(t *testing.T) {
	noKubeconfig(t)
	stdout, _, _ := checkCluster(t, nil, "-o", "json")
	var out struct {
		Success    bool
		Categories []struct {
			Checks []struct{ Description, Error, Result string }
		}
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatal(err)
	}
	if out.Success || len(out.Categories) != 1 || len(out.Categories[0].Checks) != 1 {
		t.Fatalf("want one failed check, got %s", stdout)
	}
	if e := out.Categories[0].Checks[0].Error; strings.Contains(e, "\n") || !strings.Contains(e, "no Kubernetes cluster configured") {
		t.Errorf("error %q: want one line saying there is no cluster", e)
	}
}

// TestCheckProbePodsCleanedUp: --pre runs a probe pod on each node and
// deletes it.
func TestCheckProbePodsCleanedUp(t *testing.T) {
	c := fakekube.Empty(t)
	if _, _, err := checkCluster(t, c, "--pre", "--probe-namespace", "kube-system", "--agent-image", "registry.example/agent:v9"); err != nil {
		t.Fatal(err)
	}
	if len(c.Probes) != len(fakekube.Nodes) || len(c.Deleted) != len(c.Probes) {
		t.Errorf("probe pods %v, deleted %v", c.Probes, c.Deleted)
	}
	var images []string
	for _, a := range c.Client.Actions() {
		if a.GetVerb() == "create" && a.GetResource().Resource == "pods" && a.GetNamespace() == "kube-system" {
			images = append(images, a.(k8stesting.CreateAction).GetObject().(*corev1.Pod).Spec.Containers[0].Image)
		}
	}
	if len(images) != 2 || images[0] != "registry.example/agent:v9" {
		t.Errorf("probe pods created in kube-system with images %v", images)
	}
}

// TestCheckProbeImageFromChart: the probe pods run the agent image of the
// chart that meshctl install would install.
func TestCheckProbeImageFromChart(t *testing.T) {
	o := newCheckOptions()
	o.controlPlaneNamespace = "sluice"
	image, pull, err := o.probeImage()
	if err != nil || image != "ghcr.io/sluice-mesh/agent:dev" || pull != corev1.PullIfNotPresent {
		t.Errorf("probeImage() = %q, %q, %v", image, pull, err)
	}
	o.agentImage = "registry.example/agent:v9"
	if image, _, err := o.probeImage(); err != nil || image != o.agentImage {
		t.Errorf("probeImage() with --agent-image = %q, %v", image, err)
	}
}

// TestCheckEBPFWithoutSluice: --ebpf without a cluster with Sluice checks
// this node, and says so.
func TestCheckEBPFWithoutSluice(t *testing.T) {
	c := fakekube.Empty(t)
	stdout, stderr, _ := checkCluster(t, c, "--ebpf")
	if !strings.Contains(stderr, `checking this node only (--local), not the cluster: Sluice is not installed in this cluster (no namespace "sluice")`) {
		t.Errorf("stderr = %q", stderr)
	}
	if !strings.HasPrefix(stdout, "kernel\n------\n✔ kernel is 5.10 or newer") {
		t.Errorf("not the local checks:\n%s", stdout)
	}
	noKubeconfig(t)
	_, stderr, _ = checkCluster(t, nil, "--ebpf")
	if !strings.Contains(stderr, "checking this node only (--local), not the cluster: no Kubernetes cluster configured") {
		t.Errorf("stderr = %q", stderr)
	}
}
