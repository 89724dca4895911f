package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/cluster/cluster"
)

// TestDown brings the cluster down and checks that nothing is left behind:
// no daemon or pod process, mount, network namespace, iptables chain, link,
// cgroup or state directory (cluster.Leftovers). It is the suite's last
// test (its file sorts last). SLUICE_E2E_KEEP_CLUSTER=1 keeps the cluster
// up instead.
func TestDown(t *testing.T) {
	s := need(t)
	if os.Getenv("SLUICE_E2E_KEEP_CLUSTER") == "1" {
		t.Logf("SLUICE_E2E_KEEP_CLUSTER=1: the cluster stays up (kubeconfig %s)", s.cluster.Kubeconfig())
		return
	}
	if err := cluster.Down(ctx(t, 5*time.Minute), s.cfg); err != nil {
		t.Fatalf("bring the cluster down: %v", err)
	}
	left, err := cluster.Leftovers(s.cfg)
	if err != nil {
		t.Fatalf("look for leftovers: %v", err)
	}
	for _, l := range left {
		t.Errorf("left behind by cluster down: %s", l)
		if dir, ok := strings.CutPrefix(l, "dir "); ok {
			ents, err := os.ReadDir(dir)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Logf("%s holds %q (%v)", dir, names, err)
		}
	}
}
