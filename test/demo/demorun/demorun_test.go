package demorun

import (
	"slices"
	"strings"
	"testing"

	mapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// TestDeployments: the Deployments of the manifest, each of which gets
// traffic; the load generator is not one of them.
func TestDeployments(t *testing.T) {
	got, err := Deployments()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"authors", "books", "ticker", "web"}; !slices.Equal(got, want) {
		t.Errorf("Deployments() = %v, want %v", got, want)
	}
}

// TestFlowing says what is missing until every Deployment has traffic.
func TestFlowing(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	ok := mapi.StatRow{Resource: mapi.Resource{Name: "web"}, MeshedPods: 1, TotalPods: 1, RequestRate: 2, SuccessRate: f(0.9),
		LatencyP50Ms: f(1), LatencyP95Ms: f(2), LatencyP99Ms: f(3)}
	unmeshed := ok
	unmeshed.Name, unmeshed.MeshedPods = "books", 0
	idle := ok
	idle.Name, idle.RequestRate, idle.SuccessRate = "ticker", 0, nil
	noLatency := ok
	noLatency.Name, noLatency.LatencyP99Ms = "authors", nil
	noFailure := ok
	noFailure.Name, noFailure.SuccessRate = "authors", f(1)
	for _, tc := range []struct {
		rows []mapi.StatRow
		want []string
	}{
		{[]mapi.StatRow{ok}, nil},
		{nil, []string{"web: no row"}},
		{[]mapi.StatRow{ok, unmeshed, idle, noLatency}, []string{"books: 0/1 meshed", "ticker: no requests yet", "authors: no latencies yet"}},
		{[]mapi.StatRow{ok, noFailure}, []string{"authors: no failure counted yet"}},
	} {
		deps := []string{"web"}
		for _, r := range tc.rows {
			if r.Name != "web" {
				deps = append(deps, r.Name)
			}
		}
		got := Flowing(tc.rows, deps)
		if len(tc.want) == 0 && got != "" {
			t.Errorf("Flowing(%v) = %q, want \"\"", deps, got)
		}
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("Flowing(%v) = %q, want it to say %q", deps, got, w)
			}
		}
	}
}
