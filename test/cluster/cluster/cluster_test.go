package cluster

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// syncBuffer is a bytes.Buffer safe for the concurrent steps of Up.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testConfig is a configuration with a state root of the test's own and
// Down (then a check that nothing is left) in the test's cleanup.
func testConfig(t *testing.T) (Config, *syncBuffer) {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := os.Stat(etcdPath); err != nil {
		testenv.Missing(t, "test needs Debian's etcd-server (%s): %v", etcdPath, err)
	}
	testenv.RequireCommand(t, "iptables")
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	cfg := Config{
		Dir: filepath.Join(t.TempDir(), "state"),
		Out: out,
	}
	cfg.Cache.ModuleDir = filepath.Dir(wd)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := Down(ctx, cfg); err != nil {
			t.Errorf("Down: %v", err)
		}
		left, err := Leftovers(cfg)
		if err != nil {
			t.Errorf("Leftovers: %v", err)
		}
		if len(left) > 0 {
			t.Errorf("Down left:\n  %s", strings.Join(left, "\n  "))
		}
		if t.Failed() {
			t.Logf("progress:\n%s", out)
		}
	})
	return cfg, out
}

// TestControlPlane brings up etcd, the API server, the controller manager
// and the scheduler, checks them with client-go, and checks that a second
// start reuses them.
func TestControlPlane(t *testing.T) {
	cfg, out := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // hang guard (a cold build)
	defer cancel()

	c, err := up(ctx, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.34.4" {
		t.Errorf("API server version %s, want v1.34.4", v.GitVersion)
	}
	// The controller manager runs: it creates the default ServiceAccount of
	// every namespace, and the root CA ConfigMap.
	err = poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		_, err1 := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		_, err2 := cs.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err1 == nil && err2 == nil, nil
	})
	if err != nil {
		t.Fatalf("controller manager did not create the default ServiceAccount and kube-root-ca.crt: %v", err)
	}
	svc, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != KubernetesServiceIP.String() {
		t.Errorf("kubernetes Service at %s, want %s", svc.Spec.ClusterIP, KubernetesServiceIP)
	}
	eps, err := cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(eps.Endpoints) != 1 || eps.Endpoints[0].Addresses[0] != "10.99.0.1" {
		t.Errorf("kubernetes EndpointSlice endpoints %+v, want the node address 10.99.0.1", eps.Endpoints)
	}

	before := map[string]daemonState{}
	ds := daemons{l: c.l, log: c.log}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		st, ok := ds.running(name)
		if !ok {
			t.Fatalf("%s not running after Up", name)
		}
		before[name] = st
	}
	if _, err := up(ctx, cfg, false); err != nil {
		t.Fatal(err)
	}
	for name, st := range before {
		if now, ok := ds.running(name); !ok || now.PID != st.PID {
			t.Errorf("second Up restarted %s (pid %d, now %d)", name, st.PID, now.PID)
		}
	}
	if !strings.Contains(out.String(), "etcd running (reused)") {
		t.Errorf("second Up did not say it reused etcd:\n%s", out)
	}
}
