package meshctl

import (
	"bytes"
	"testing"

	"github.com/sluice-mesh/sluice/cli/internal/golden"
	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// statRows are rows of every status, in two namespaces: figures of all
// sizes, a row with connections but no response (nil success and
// latencies), and rows without traffic.
func statRows() []metricsapi.StatRow {
	deploy := func(ns, name string) metricsapi.Resource {
		return metricsapi.Resource{Namespace: ns, Kind: metricsapi.Deployment, Name: name}
	}
	return []metricsapi.StatRow{
		{Resource: deploy("demo", "web"), MeshedPods: 2, TotalPods: 2, SuccessRate: new(0.904761), RequestRate: 12.34,
			LatencyP50Ms: new(3.2), LatencyP95Ms: new(9.96), LatencyP99Ms: new(250.0), TCPConnections: 6,
			TCPReadBytesPerSec: 1234.56, TCPWriteBytesPerSec: 98765.4, Status: metricsapi.StatusOK},
		{Resource: deploy("demo", "tcp-only"), MeshedPods: 1, TotalPods: 1, TCPConnections: 3,
			TCPReadBytesPerSec: 10, Status: metricsapi.StatusOK},
		{Resource: deploy("demo", "idle"), MeshedPods: 1, TotalPods: 1, Status: metricsapi.StatusNoTraffic},
		{Resource: deploy("shop", "legacy"), TotalPods: 3, Status: metricsapi.StatusNotMeshed},
		{Resource: deploy("shop", "scaled-down"), Status: metricsapi.StatusNoPods},
		{Resource: deploy("shop", "flaky"), MeshedPods: 1, TotalPods: 2, SuccessRate: new(0.0), RequestRate: 0.05,
			LatencyP50Ms: new(0.04), LatencyP95Ms: new(12000.0), TCPConnections: 1, Status: metricsapi.StatusOK},
	}
}

// render runs f into a buffer.
func render(t *testing.T, f func(*bytes.Buffer) error) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := f(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestRenderStat(t *testing.T) {
	for _, tc := range []struct {
		name          string
		rows          []metricsapi.StatRow
		output        string
		withNamespace bool
	}{
		{"stat_table", statRows()[:3], outputTable, false},
		{"stat_table_all_namespaces", statRows(), outputTable, true},
		{"stat_wide", statRows(), outputWide, false},
		{"stat_wide_all_namespaces", statRows(), outputWide, true},
		{"stat_json", statRows()[:2], outputJSON, true},
		{"stat_empty_table", nil, outputTable, true},
		{"stat_empty_wide", []metricsapi.StatRow{}, outputWide, false},
		{"stat_empty_json", nil, outputJSON, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden.Assert(t, "render/"+tc.name, render(t, func(b *bytes.Buffer) error {
				return renderStat(b, tc.rows, tc.output, tc.withNamespace)
			}))
		})
	}
}

func TestRenderTopRoutes(t *testing.T) {
	routes := []metricsapi.Route{
		{Authority: "web.demo.svc.cluster.local", RequestRate: 20.01, SuccessRate: new(1.0),
			LatencyP50Ms: new(1.0), LatencyP95Ms: new(4.75), LatencyP99Ms: new(10.0)},
		{Authority: "api.demo.svc.cluster.local:8080", RequestRate: 3, SuccessRate: new(0.6667),
			LatencyP50Ms: new(15.5), LatencyP95Ms: new(95.0), LatencyP99Ms: new(99.4)},
		{Authority: "", RequestRate: 0.5},
	}
	for _, tc := range []struct {
		name   string
		routes []metricsapi.Route
		output string
	}{
		{"top_table", routes, outputTable},
		{"top_json", routes, outputJSON},
		{"top_empty_table", nil, outputTable},
		{"top_empty_json", nil, outputJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden.Assert(t, "render/"+tc.name, render(t, func(b *bytes.Buffer) error {
				return renderTopRoutes(b, tc.routes, tc.output)
			}))
		})
	}
}

func TestRenderEdges(t *testing.T) {
	id := func(sa, ns string) string { return sa + "." + ns + ".serviceaccount.identity.sluice.cluster.local" }
	deploy := func(ns, name string) metricsapi.Resource {
		return metricsapi.Resource{Namespace: ns, Kind: metricsapi.Deployment, Name: name}
	}
	edges := []metricsapi.Edge{
		{Src: deploy("demo", "client"), Dst: deploy("demo", "web"), ClientID: id("client", "demo"), ServerID: id("web", "demo"), Secured: true},
		{Src: deploy("demo", "web"), Dst: deploy("shop", "api"), ServerID: id("api", "shop"), NoTLSReason: "not_provided_by_remote"},
		{Src: deploy("shop", "batch"), Dst: deploy("shop", "db")},
		{Src: metricsapi.Resource{Kind: metricsapi.Namespace, Name: "demo"}, Dst: metricsapi.Resource{Kind: metricsapi.Namespace, Name: "shop"}, Secured: true},
	}
	for _, tc := range []struct {
		name   string
		edges  []metricsapi.Edge
		output string
	}{
		{"edges_table", edges, outputTable},
		{"edges_wide", edges, outputWide},
		{"edges_json", edges, outputJSON},
		{"edges_empty_table", nil, outputTable},
		{"edges_empty_json", nil, outputJSON},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden.Assert(t, "render/"+tc.name, render(t, func(b *bytes.Buffer) error {
				return renderEdges(b, tc.edges, tc.output)
			}))
		})
	}
}

func TestFormatLatency(t *testing.T) {
	for _, tc := range []struct {
		ms   *float64
		want string
	}{
		{nil, "-"},
		{new(0.0), "0.0ms"},
		{new(0.04), "0.0ms"},
		{new(1.0), "1.0ms"},
		{new(1.25), "1.2ms"},
		{new(9.94), "9.9ms"},
		{new(9.96), "10ms"},
		{new(10.4), "10ms"},
		{new(999.5), "1000ms"},
		{new(12345.0), "12345ms"},
	} {
		if got := formatLatency(tc.ms); got != tc.want {
			t.Errorf("formatLatency(%v) = %q, want %q", deref(tc.ms), got, tc.want)
		}
	}
}

// deref is *p, or nil, for messages.
func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
