package e2e

import (
	"os"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/destination"
)

// TestDestinationPropagation runs the destination benchmark's procedure
// (test/bench/destination) at a small size, so that a broken benchmark
// fails here: every timed change must reach the proxy's discovery client.
func TestDestinationPropagation(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	size := destination.Size{Services: 5, PerService: 4, Changes: 40}
	r, err := destination.Run(c, destination.Config{Client: s.cluster.Client, Kubeconfig: s.cluster.Kubeconfig, Controller: s.controller, Log: os.Stderr}, size)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Latencies) != size.Changes {
		t.Fatalf("%d changes timed, want %d", len(r.Latencies), size.Changes)
	}
	if r.RSSLoaded <= 0 || r.UpdatesSent < float64(size.Changes) {
		t.Errorf("destination RSS %d KiB, updates sent %v: want a resident set and at least %d updates", r.RSSLoaded, r.UpdatesSent, size.Changes)
	}
	t.Logf("\n%s", destination.Table([]destination.Result{r}))
}
