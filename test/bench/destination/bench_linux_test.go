package destination

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
	"github.com/sluice-mesh/sluice/test/kube"
	"github.com/sluice-mesh/sluice/test/netns"
)

var (
	report  = flag.Bool("report", false, "also write the Markdown report to docs/destination-benchmark.md")
	changes = flag.Int("changes", 1000, "timed endpoint changes per size")
)

const reproduceCmd = "make bench-destination   # = go test -count=1 -timeout 30m -run '^$' -bench . -benchtime 1x ./test/bench/destination/ -args -report"

// target is the issue's: p99 under 100 ms at 5 000 endpoints.
const target = 100 * time.Millisecond

// BenchmarkDestinationPropagation times endpoint changes from the API
// server to a proxy's discovery client with 1 000 and 5 000 endpoints
// across 100 services (a stream open for each), and the destination
// service's memory at that size, and prints one table.
func BenchmarkDestinationPropagation(b *testing.B) {
	netns.RequireRoot(b)
	controller := netns.BuildTool(b, "./controlplane/cmd/sluice-controller")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute) // hang guard
	defer cancel()
	c, err := kube.Up(ctx, os.Stderr)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := c.Down(context.Background()); err != nil {
			b.Errorf("cluster down: %v", err)
		}
	}()
	// A client of its own without client-go's default rate limit, so that
	// creating thousands of objects does not take minutes.
	rc := rest.CopyConfig(c.REST)
	rc.QPS, rc.Burst = 2000, 2000
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Client: client, Kubeconfig: c.Kubeconfig, Controller: controller, Log: os.Stderr}
	var results []Result
	b.ResetTimer()
	for _, size := range []Size{{Services: 100, PerService: 10, Changes: *changes}, {Services: 100, PerService: 50, Changes: *changes}} {
		r, err := Run(ctx, cfg, size)
		if err != nil {
			b.Fatalf("%d endpoints: %v", size.Endpoints(), err)
		}
		if len(r.Latencies) != size.Changes {
			b.Fatalf("%d endpoints: %d changes timed, want %d", size.Endpoints(), len(r.Latencies), size.Changes)
		}
		results = append(results, r)
	}
	b.StopTimer()
	table := Table(results)
	fmt.Println(table)
	last := results[len(results)-1]
	verdict := fmt.Sprintf("Target (p99 under %s at %d endpoints): **met**, p99 %s.", target, last.Size.Endpoints(), ms(last.Quantile(0.99)))
	if last.Quantile(0.99) >= target {
		verdict = fmt.Sprintf("Target (p99 under %s at %d endpoints): **missed**, p99 %s.", target, last.Size.Endpoints(), ms(last.Quantile(0.99)))
	}
	fmt.Println(verdict)
	if *report {
		if err := writeReport(table, verdict); err != nil {
			b.Fatalf("write report: %v", err)
		}
	}
}

func writeReport(table, verdict string) error {
	var s strings.Builder
	fmt.Fprintf(&s, `# Destination update propagation

How long an endpoint change takes from the Kubernetes API server to a proxy: the benchmark
updates an EndpointSlice (one endpoint turned not ready, or ready again) and times until the
proxy's own discovery client (proxy/discovery, the code in every sluice-proxy) publishes the new
snapshot. The path is the real one: kube-apiserver v1.34 and etcd of the local cluster
(test/cluster), the API server's watch, the destination service (the sluice-controller binary,
as a process on the node) with its informers, watcher and translator, and one gRPC stream per
service over loopback. 100 services, each with a stream open; the endpoints' pods exist as API
objects (held back from scheduling by a gate, so no node runs them) so that the destination
service resolves every endpoint's pod, labels and identity as it does for real pods. Changes go
one at a time, over the services in turn; the latency includes the API write itself.

%s
%s

The destination service's memory is its resident set (VmRSS) once every stream was answered,
after the changes, and its peak (VmHWM).

- Machine: %s, load average %s
- Commit: %s
- Run at: %s
- Reproduce: %s
`, table, verdict, benchkit.Host(), benchkit.LoadAvg(), benchkit.GitHead("controlplane", "proxy/discovery", "test/bench/destination"), time.Now().UTC().Format(time.RFC3339), "`"+reproduceCmd+"`")
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, "docs", "destination-benchmark.md"), []byte(s.String()), 0o644)
}

// moduleRoot is the module's root: two levels above this package.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	return filepath.Join(wd, "..", "..", ".."), nil
}
