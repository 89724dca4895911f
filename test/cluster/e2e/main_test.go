package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/test/cluster/cluster"
	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// echoImage is the image reference the suite maps to the echo program (any
// tag: the rolling update changes it).
const echoImage = "sluice.test/e2e-echo"

// echoPkg is the echo program's import path.
const echoPkg = "github.com/sluice-mesh/sluice/test/cluster/cmd/echo"

// suite is what every test uses: the running cluster and its clients.
type suite struct {
	once    sync.Once
	cfg     cluster.Config
	cluster *cluster.Cluster
	client  kubernetes.Interface
	kubectl string // the cached kubectl program
	echo    string // the echo program (the path pods run)
	upErr   error  // why the cluster could not be brought up
	unlock  func() // releases the machine's cluster lock (nil when not taken)
}

// env is set once by TestMain, before any test runs; its cluster is
// brought up by the first test that needs it.
var env *suite

// TestMain makes the suite. The cluster is brought up (or the running one
// reused) and the echo image mapped by the first test that runs, so that
// `go test -list` or a -run that selects nothing starts nothing. The
// machine's cluster lock (cluster.LockMachine) is held from then until the
// tests end, so that other packages' cluster tests wait their turn.
func TestMain(m *testing.M) {
	env = &suite{}
	code := m.Run()
	if env.unlock != nil {
		env.unlock()
	}
	os.Exit(code)
}

func (s *suite) up() error {
	// Hang guard: a cold build of Kubernetes takes ~7 minutes here.
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	unlock, err := cluster.LockMachine(ctx)
	if err != nil {
		return err
	}
	s.unlock = unlock
	s.cfg = cluster.Config{
		Out: os.Stderr,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	start := time.Now()
	c, err := cluster.Up(ctx, s.cfg)
	if err != nil {
		return fmt.Errorf("bring the cluster up: %w", err)
	}
	fmt.Fprintf(os.Stderr, "e2e: cluster up in %s, kubeconfig %s\n", time.Since(start).Round(100*time.Millisecond), c.Kubeconfig())
	s.cluster = c
	if s.client, err = c.Client(); err != nil {
		return fmt.Errorf("make a client: %w", err)
	}
	bins := c.Binaries()
	s.kubectl = bins.Kubernetes["kubectl"]
	if s.echo = bins.Own["echo"]; s.echo == "" {
		own, err := s.cfg.Cache.Own(ctx, echoPkg)
		if err != nil {
			return fmt.Errorf("build the echo program: %w", err)
		}
		s.echo = own["echo"]
	}
	if err := c.MapImage(cluster.ImageMapping{Image: echoImage + ":*", Program: s.echo, Args: []string{"serve"}}); err != nil {
		return fmt.Errorf("map %s to %s: %w", echoImage, s.echo, err)
	}
	return nil
}

// need returns the suite with the cluster up, skipping t (failing it in
// CI) when not root, and failing it when the cluster could not be brought
// up.
func need(t *testing.T) *suite {
	t.Helper()
	testenv.RequireRoot(t)
	env.once.Do(func() { env.upErr = env.up() })
	if env.upErr != nil {
		t.Fatal(env.upErr)
	}
	return env
}

// ctx returns a context that ends with the test, and at the latest after
// limit (a hang guard).
func ctx(t *testing.T, limit time.Duration) context.Context {
	c, cancel := context.WithTimeout(t.Context(), limit)
	t.Cleanup(cancel)
	return c
}

// suffix returns a random suffix for names.
func suffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// namespace creates a namespace of the test's own, waits until pods can be
// created in it (its default service account exists), and deletes it when
// the test ends, after dumping what happened in it if the test failed.
func (s *suite) namespace(t *testing.T, prefix string) string {
	t.Helper()
	c := ctx(t, 2*time.Minute)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   fmt.Sprintf("e2e-%s-%s", prefix, suffix()),
		Labels: map[string]string{"sluice.test/e2e": "true"},
	}}
	if _, err := s.client.CoreV1().Namespaces().Create(c, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns.Name, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.dump(t, ns.Name)
		}
		s.deleteNamespace(t, ns.Name)
	})
	waitFor(t, c, "the default service account of namespace "+ns.Name, func(c context.Context) (bool, string, error) {
		_, err := s.client.CoreV1().ServiceAccounts(ns.Name).Get(c, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not created yet", nil
		}
		return err == nil, "", err
	})
	return ns.Name
}

// deleteNamespace deletes ns and waits until it is gone, so that its pods
// are stopped before the next test starts.
func (s *suite) deleteNamespace(t *testing.T, ns string) {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // the test's context has ended
	defer cancel()
	if err := s.client.CoreV1().Namespaces().Delete(c, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", ns, err)
		return
	}
	for {
		_, err := s.client.CoreV1().Namespaces().Get(c, ns, metav1.GetOptions{})
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

// waitFor polls check every half second until it reports done, and fails
// t when it returns an error or when ctx ends first (a hang guard, not a
// timing assertion), with the last status check gave.
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

// dump logs what a user would look at when a test failed: the namespace's
// events and pods, and the tails of the runtime's and kubelet's logs.
func (s *suite) dump(t *testing.T, ns string) {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "=== namespace %s after the failure\n", ns)
	if evs, err := s.client.CoreV1().Events(ns).List(c, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(&b, "list events: %v\n", err)
	} else {
		sort.Slice(evs.Items, func(i, j int) bool { return eventTime(evs.Items[i]).Before(eventTime(evs.Items[j])) })
		fmt.Fprintf(&b, "--- events\n")
		for _, e := range evs.Items {
			fmt.Fprintf(&b, "%s %s %s/%s %s: %s (x%d)\n", eventTime(e).Format(time.TimeOnly), e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message, max(e.Count, 1))
		}
	}
	if pods, err := s.client.CoreV1().Pods(ns).List(c, metav1.ListOptions{}); err != nil {
		fmt.Fprintf(&b, "list pods: %v\n", err)
	} else {
		fmt.Fprintf(&b, "--- pods\n")
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "%s phase=%s ips=%v node=%s reason=%q message=%q\n", p.Name, p.Status.Phase, p.Status.PodIPs, p.Spec.NodeName, p.Status.Reason, p.Status.Message)
			for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
				fmt.Fprintf(&b, "  %s ready=%t restarts=%d state=%s last=%s\n", cs.Name, cs.Ready, cs.RestartCount, containerState(cs.State), containerState(cs.LastTerminationState))
			}
		}
	}
	for _, name := range []string{"procri", "kubelet"} {
		fmt.Fprintf(&b, "--- %s log (lines naming the namespace, then the last lines)\n%s", name, logTail(s.logFile(name), ns, 40, 20))
	}
	t.Log(b.String())
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
		return fmt.Sprintf("terminated %s exit %d signal %d: %s", st.Terminated.Reason, st.Terminated.ExitCode, st.Terminated.Signal, st.Terminated.Message)
	}
	return "none"
}

// logFile is a cluster daemon's log: <Dir>/logs/<name>.log.
func (s *suite) logFile(name string) string {
	return filepath.Join(s.cluster.Dir(), "logs", name+".log")
}

// logTail returns up to matching lines of path that contain needle, then
// its last lines, each cut at 400 bytes.
func logTail(path, needle string, matching, last int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "…"
		}
	}
	var hits []string
	for _, l := range lines {
		if strings.Contains(l, needle) {
			hits = append(hits, l)
		}
	}
	hits = hits[max(0, len(hits)-matching):]
	tail := lines[max(0, len(lines)-last):]
	return strings.Join(hits, "\n") + "\n...\n" + strings.Join(tail, "\n") + "\n"
}
