package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/test/kube"
	"github.com/sluice-mesh/sluice/test/netns"
)

// The images the chart's defaults name, mapped to this module's programs.
const (
	imageRegistry = "ghcr.io/sluice-mesh"
	// imageTag is what the chart's images carry in these tests.
	imageTag = "e2e"
	// busyboxImage runs Debian's busybox (test/cluster maps it).
	busyboxImage = "docker.io/library/busybox:1.36"
	// echoImage runs test/cluster's echo server (its `serve`).
	echoImage = "sluice.test/echo:1"
	// testappImage runs test/cmd/testapp (servers and clients of every
	// protocol the proxy carries).
	testappImage = "sluice.test/testapp"
	// opensslImage runs Debian's openssl (s_server: a plain TLS server).
	opensslImage = "sluice.test/openssl:3"
)

// The control plane's install in these tests.
const (
	cpNamespace = meshmeta.DefaultNamespace
	pinRoot     = "/sys/fs/bpf/sluice"
	stateDir    = "/run/sluice"
)

// suite is the cluster with Sluice installed, shared by every test of the
// package; the first test that needs it brings it up.
type suite struct {
	once       sync.Once
	upErr      error
	cluster    *kube.Cluster
	installed  bool   // meshctl install ran (teardown uninstalls)
	binDir     string // where build put the programs
	agent      string // the sluice-agent program (for uninstall)
	controller string // the sluice-controller program
	testapp    string // the testapp program
	meshctl    string // the meshctl program
	demo       string // the demo app's program (test/demo)
}

var env = &suite{}

// TestMain runs the tests, then uninstalls Sluice and brings the cluster
// down when the suite brought it up.
func TestMain(m *testing.M) {
	code := m.Run()
	if err := env.teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// need returns the suite with Sluice installed and ready, skipping t
// (failing it in CI) when not root.
func need(t *testing.T) *suite {
	t.Helper()
	netns.RequireRoot(t)
	env.once.Do(func() { env.upErr = env.up(t) })
	if env.upErr != nil {
		t.Fatal(env.upErr)
	}
	return env
}

func (s *suite) up(t *testing.T) error {
	// Hang guard: cold builds of Kubernetes and Prometheus take about 8 and
	// 7 minutes here.
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	// The programs first: the cluster lock is held from Up on.
	programs, err := s.build(ctx)
	if err != nil {
		return err
	}
	s.agent = programs["sluice-agent"]
	s.controller = programs["sluice-controller"]
	s.meshctl = programs["meshctl"]
	c, err := kube.Up(ctx, os.Stderr)
	if err != nil {
		return err
	}
	s.cluster = c
	s.testapp = programs["testapp"]
	s.demo = programs["sluice-demo"]
	for image, prog := range map[string]string{
		imageRegistry + "/controller:*": programs["sluice-controller"],
		imageRegistry + "/proxy:*":      programs["sluice-proxy"],
		imageRegistry + "/agent:*":      programs["sluice-agent"],
		imageRegistry + "/demo:*":       s.demo,
		testappImage + ":*":             s.testapp,
		"sluice.test/openssl:*":         "/usr/bin/openssl",
	} {
		if err := c.MapImage(ctx, image, prog); err != nil {
			return err
		}
	}
	// Checked and installed as users do: meshctl check --pre (the node's
	// kernel through a probe pod, RBAC, the Kubernetes version), then
	// meshctl install, which waits until the control plane is ready (hang
	// guard: ready in ~10 s here).
	if out, err := s.run(ctx, s.meshctl, "check", "--pre", "--kubeconfig", c.Kubeconfig, "--agent-image", imageRegistry+"/agent:"+imageTag); err != nil {
		return fmt.Errorf("meshctl check --pre: %w\n%s", err, out)
	}
	start := time.Now()
	s.installed = true
	out, err := s.run(ctx, s.meshctl, "install", "--kubeconfig", c.Kubeconfig, "--wait", "5m",
		"--set", "image.tag="+imageTag,
		"--set", "logLevel=debug",
		"--set", "agent.pinRoot="+pinRoot+",agent.stateDir="+stateDir,
		"--set", "identity.certLifetime="+certLifetime.String())
	if err != nil {
		return fmt.Errorf("meshctl install: %w\n%s\n%s", err, out, s.describe(cpNamespace))
	}
	fmt.Fprintf(os.Stderr, "e2e: meshctl install: Sluice installed and ready in %s\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// run runs a program and returns its combined output, which also goes to
// the test's standard error as it comes (progress of long commands).
func (s *suite) run(ctx context.Context, prog string, args ...string) (string, error) {
	var out strings.Builder
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdout = io.MultiWriter(&out, os.Stderr)
	cmd.Stderr = cmd.Stdout
	err := cmd.Run()
	return out.String(), err
}

// programsDir holds the programs the cluster's images map to: not under
// /tmp, which every container has a fresh one of.
const programsDir = "/var/lib/sluice-e2e"

// build builds Sluice's programs into a directory of this test process
// under programsDir, which every user may read (the proxy runs as 2102),
// and returns their paths by name.
func (s *suite) build(ctx context.Context) (map[string]string, error) {
	// Directories of earlier runs whose process is gone.
	old, _ := filepath.Glob(filepath.Join(programsDir, "run-*"))
	for _, d := range old {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(d), "run-%d", &pid); err == nil && syscall.Kill(pid, 0) != nil {
			os.RemoveAll(d)
		}
	}
	s.binDir = filepath.Join(programsDir, fmt.Sprintf("run-%d", os.Getpid()))
	if err := os.MkdirAll(s.binDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(programsDir, 0o755); err != nil {
		return nil, err
	}
	root, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOMOD: %w", err)
	}
	pkgs := []string{"./controlplane/cmd/sluice-controller", "./proxy/cmd/sluice-proxy", "./agent/cmd/sluice-agent", "./cli/cmd/meshctl", "./test/cmd/testapp", "./test/demo/cmd/sluice-demo"}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", s.binDir + "/"}, pkgs...)...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(root)))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %w: %s", err, out)
	}
	out := map[string]string{}
	for _, p := range pkgs {
		name := filepath.Base(p)
		out[name] = filepath.Join(s.binDir, name)
		if err := os.Chmod(out[name], 0o755); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// teardown uninstalls Sluice with meshctl uninstall, checks that the
// agents' pinned state is gone from this node (falling back to
// sluice-agent uninstall, so that the machine is clean either way), and
// brings the cluster down if the suite brought it up.
func (s *suite) teardown() error {
	if s.binDir != "" {
		defer os.RemoveAll(s.binDir)
	}
	if s.cluster == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var errs []string
	if s.installed {
		if out, err := s.run(ctx, s.meshctl, "uninstall", "--kubeconfig", s.cluster.Kubeconfig); err != nil {
			errs = append(errs, fmt.Sprintf("meshctl uninstall: %v: %s", err, out))
		}
		for _, p := range []string{pinRoot, stateDir} {
			if _, err := os.Stat(p); err == nil {
				errs = append(errs, fmt.Sprintf("meshctl uninstall left %s behind", p))
			}
		}
		if len(errs) > 0 {
			if out, err := exec.CommandContext(ctx, s.agent, "uninstall", "--pin-root", pinRoot, "--state-dir", stateDir).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Sprintf("sluice-agent uninstall: %v: %s", err, out))
			}
		}
	}
	if err := s.cluster.Down(ctx); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return nil
}

// namespace creates a namespace of the test's own, with annotations, waits
// for its default service account, and deletes it when the test ends (after
// describing it if the test failed).
func (s *suite) namespace(t *testing.T, prefix string, annotations map[string]string) string {
	t.Helper()
	c := ctx(t, 2*time.Minute)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: "e2e-" + prefix + "-",
		Labels:       map[string]string{"sluice.test/e2e": "true"},
		Annotations:  annotations,
	}}
	ns, err := s.cluster.Client.CoreV1().Namespaces().Create(c, ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.describe(ns.Name))
		}
		s.deleteNamespace(t, ns.Name)
	})
	waitFor(t, c, "the default service account of "+ns.Name, func(c context.Context) (bool, string, error) {
		_, err := s.cluster.Client.CoreV1().ServiceAccounts(ns.Name).Get(c, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not created yet", nil
		}
		return err == nil, "", err
	})
	return ns.Name
}

// deleteNamespace deletes ns and waits until it is gone.
func (s *suite) deleteNamespace(t *testing.T, ns string) {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.cluster.Client.CoreV1().Namespaces().Delete(c, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", ns, err)
		return
	}
	for {
		_, err := s.cluster.Client.CoreV1().Namespaces().Get(c, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return
		}
		select {
		case <-c.Done():
			t.Errorf("namespace %s still there 2 minutes after its deletion (last get: %v)", ns, err)
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ctx returns a context that ends with the test, and at the latest after
// limit (a hang guard).
func ctx(t *testing.T, limit time.Duration) context.Context {
	c, cancel := context.WithTimeout(t.Context(), limit)
	t.Cleanup(cancel)
	return c
}

// waitFor polls check every half second until it reports done; it fails t
// on an error or when c ends first (a hang guard, not a timing assertion),
// with the last status check gave.
func waitFor(t *testing.T, c context.Context, what string, check func(context.Context) (done bool, status string, err error)) {
	t.Helper()
	last := "not checked yet"
	for {
		done, status, err := check(c)
		if err != nil && c.Err() == nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if done && err == nil {
			return
		}
		if status != "" {
			last = status
		}
		select {
		case <-c.Done():
			t.Fatalf("gave up waiting for %s (%v); last: %s", what, context.Cause(c), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitDeploymentReady waits until every replica of the Deployment is
// updated and available.
func (s *suite) waitDeploymentReady(t *testing.T, c context.Context, ns, name string) *appsv1.Deployment {
	t.Helper()
	var d *appsv1.Deployment
	waitFor(t, c, "deployment "+ns+"/"+name+" to be ready", func(c context.Context) (bool, string, error) {
		var err error
		d, err = s.cluster.Client.AppsV1().Deployments(ns).Get(c, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		want := *d.Spec.Replicas
		st := d.Status
		return st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.AvailableReplicas == want && st.Replicas == want,
			fmt.Sprintf("%d/%d updated, %d available, %d in all", st.UpdatedReplicas, want, st.AvailableReplicas, st.Replicas), nil
	})
	return d
}

// describe returns what a user would look at when something failed in ns:
// its events and pods with their containers' states, and the tails of the
// runtime's and kubelet's logs.
func (s *suite) describe(ns string) string {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "=== namespace %s\n", ns)
	if evs, err := s.cluster.Client.CoreV1().Events(ns).List(c, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(&b, "list events: %v\n", err)
	} else {
		sort.Slice(evs.Items, func(i, j int) bool { return eventTime(evs.Items[i]).Before(eventTime(evs.Items[j])) })
		fmt.Fprintf(&b, "--- events\n")
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "%s %s %s/%s %s: %s (x%d)\n", eventTime(e).Format(time.TimeOnly), e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message, max(e.Count, 1))
		}
	}
	if pods, err := s.cluster.Client.CoreV1().Pods(ns).List(c, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(&b, "list pods: %v\n", err)
	} else {
		fmt.Fprintf(&b, "--- pods\n")
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "%s phase=%s ips=%v reason=%q message=%q\n", p.Name, p.Status.Phase, p.Status.PodIPs, p.Status.Reason, p.Status.Message)
			for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
				fmt.Fprintf(&b, "  %s ready=%t restarts=%d state=%s last=%s\n", cs.Name, cs.Ready, cs.RestartCount, containerState(cs.State), containerState(cs.LastTerminationState))
			}
			for _, ctr := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
				out, err := s.cluster.Kubectl(c, "logs", "-n", ns, p.Name, "-c", ctr.Name, "--tail", "30")
				if err != nil {
					fmt.Fprintf(&b, "  logs of %s: %v\n", ctr.Name, err)
					continue
				}
				fmt.Fprintf(&b, "  --- logs of %s\n%s", ctr.Name, indent(string(out), "    "))
			}
		}
	}
	for _, d := range []string{"procri", "kubelet"} {
		fmt.Fprintf(&b, "--- %s log tail\n%s\n", d, s.cluster.Logs(d, 3000))
	}
	return b.String()
}

func indent(s, prefix string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		b.WriteString(prefix + line)
	}
	if b.Len() > 0 && !strings.HasSuffix(b.String(), "\n") {
		b.WriteString("\n")
	}
	return b.String()
}

func eventTime(e corev1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

func containerState(st corev1.ContainerState) string {
	switch {
	case st.Running != nil:
		return "running since " + st.Running.StartedAt.Format(time.TimeOnly)
	case st.Waiting != nil:
		return fmt.Sprintf("waiting %s: %s", st.Waiting.Reason, st.Waiting.Message)
	case st.Terminated != nil:
		return fmt.Sprintf("terminated %s exit %d: %s", st.Terminated.Reason, st.Terminated.ExitCode, st.Terminated.Message)
	}
	return "none"
}
