package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/test/demo"
	"github.com/sluice-mesh/sluice/test/demo/demorun"
)

// TestDemo runs `make demo`'s sequence on the suite's install (made by
// meshctl install): meshctl check and check --ebpf pass; the demo deployed
// through meshctl inject (demorun, as make demo does) shows in meshctl stat
// with every Deployment meshed, with RPS, a success rate that reflects the
// failing authors service, and latency percentiles; meshctl tap prints
// live request lines; the chart's Prometheus returns the demo's
// response_total series with the labels its relabelling adds.
func TestDemo(t *testing.T) {
	s := need(t)
	c := ctx(t, 15*time.Minute)
	r := demorun.Runner{MeshctlPath: s.meshctl, Kubeconfig: s.cluster.Kubeconfig, Out: os.Stderr}

	for _, args := range [][]string{{"check", "--wait", "2m"}, {"check", "--ebpf"}} {
		out, err := r.Meshctl(c, append(args, "-o", "json")...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var res struct {
			Success    bool `json:"success"`
			Categories []struct {
				Name   string `json:"categoryName"`
				Checks []struct {
					Description string `json:"description"`
					Result      string `json:"result"`
				} `json:"checks"`
			} `json:"categories"`
		}
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("meshctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
		}
		n := 0
		for _, cat := range res.Categories {
			for _, ch := range cat.Checks {
				n++
				if ch.Result != "success" && ch.Result != "warning" {
					t.Errorf("meshctl %s: %s / %s: %s", strings.Join(args, " "), cat.Name, ch.Description, ch.Result)
				}
			}
		}
		if !res.Success || n < 5 {
			t.Errorf("meshctl %s: success %v with %d checks:\n%s", strings.Join(args, " "), res.Success, n, out)
		}
	}

	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.describe(demo.Namespace))
		}
		dc, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := r.Delete(dc); err != nil {
			t.Errorf("delete the demo: %v", err)
		}
	})
	if err := r.Deploy(c); err != nil {
		t.Fatal(err)
	}
	rows, err := r.WaitTraffic(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rows {
		t.Logf("stat: %s meshed %d/%d, %.1f rps, success %.3f, p50/p95/p99 %.1f/%.1f/%.1f ms", row.Name, row.MeshedPods, row.TotalPods,
			row.RequestRate, *row.SuccessRate, *row.LatencyP50Ms, *row.LatencyP95Ms, *row.LatencyP99Ms)
		switch row.Name {
		case "authors", "web":
			// authors fails 10 % of its requests, web the /api/books
			// requests that call it (about 19 % of those).
			if sr := *row.SuccessRate; sr >= 0.99 || sr < 0.5 {
				t.Errorf("%s's success rate is %.3f: want the failing authors' share of failures (below 0.99)", row.Name, sr)
			}
		case "books":
			if sr := *row.SuccessRate; sr < 0.99 {
				t.Errorf("books' success rate is %.3f, want 1: it does not fail", sr)
			}
		}
	}
	table, err := r.Meshctl(c, "stat", "deploy", "-n", demo.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("meshctl stat deploy -n demo:\n%s", table)
	if lines := strings.Split(strings.TrimSpace(string(table)), "\n"); len(lines) != 5 ||
		strings.Join(strings.Fields(lines[0]), " ") != "NAME MESHED SUCCESS RPS LATENCY_P50 LATENCY_P95 LATENCY_P99 TCP_CONN" {
		t.Errorf("meshctl stat's table: want a header and 4 rows")
	}

	t.Run("tap", func(t *testing.T) {
		tc := ctx(t, 2*time.Minute)
		out, err := r.Meshctl(tc, "tap", "deploy/web", "-n", demo.Namespace, "--limit", "10")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		addr := `(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+`
		pats := map[string]*regexp.Regexp{
			"req": regexp.MustCompile(`^req id=\d+:\d+ proxy=(in|out) src=` + addr + ` dst=` + addr + ` tls=\S+ :method=[A-Z]+ :authority=\S+ :path=/\S*$`),
			"rsp": regexp.MustCompile(`^rsp id=\d+:\d+ proxy=(in|out) src=` + addr + ` dst=` + addr + ` tls=\S+ :status=\d{3} latency=\d+µs$`),
			"end": regexp.MustCompile(`^end id=\d+:\d+ proxy=(in|out) src=` + addr + ` dst=` + addr + ` tls=\S+ duration=\d+µs response-length=\d+B( .*)?$`),
		}
		// Outbound lines name web's pod as the source, not the loopback
		// address the application reaches its proxy on.
		pods, err := s.cluster.Client.CoreV1().Pods(demo.Namespace).List(tc, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			t.Fatal(err)
		}
		webIPs := map[string]bool{}
		for _, p := range pods.Items {
			for _, ip := range p.Status.PodIPs {
				webIPs[ip.IP] = true
			}
		}
		outSrc := regexp.MustCompile(` proxy=out src=(\S+) `)
		seen := map[string]int{}
		for line := range strings.Lines(strings.TrimSpace(string(out))) {
			line = strings.TrimRight(line, "\n")
			kind, _, _ := strings.Cut(line, " ")
			re, ok := pats[kind]
			if !ok || !re.MatchString(line) {
				t.Errorf("tap line %q does not have the documented shape", line)
				continue
			}
			seen[kind]++
			if m := outSrc.FindStringSubmatch(line); m != nil {
				seen["out"]++
				if ap, err := netip.ParseAddrPort(m[1]); err != nil || !webIPs[ap.Addr().String()] {
					t.Errorf("tap line %q: an outbound source that is not a web pod's address %v", line, webIPs)
				}
			}
		}
		if seen["out"] == 0 {
			t.Errorf("tap printed no outbound line of web (its calls to books and authors):\n%s", out)
		}
		if seen["req"] == 0 || seen["rsp"] == 0 || seen["end"] < 10 {
			t.Errorf("tap printed %v lines (want req, rsp and at least 10 end):\n%s", seen, out)
		}
		if !strings.Contains(string(out), "tls=true") {
			t.Errorf("no tap line shows mutual TLS between the demo's meshed pods:\n%s", out)
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		// The chart's Prometheus, through the API server's service proxy.
		q := fmt.Sprintf(`sum by (deployment, direction) (response_total{namespace=%q})`, demo.Namespace)
		var got map[string]bool
		waitFor(t, ctx(t, 2*time.Minute), "the chart's Prometheus to have the demo's response_total", func(c context.Context) (bool, string, error) {
			b, err := s.cluster.Client.CoreV1().Services(cpNamespace).ProxyGet("http", "prometheus", "9090", "/api/v1/query", map[string]string{"query": q}).DoRaw(c)
			if err != nil {
				return false, err.Error(), nil
			}
			var res struct {
				Status string `json:"status"`
				Data   struct {
					Result []struct {
						Metric map[string]string `json:"metric"`
					} `json:"result"`
				} `json:"data"`
			}
			if err := json.Unmarshal(b, &res); err != nil {
				return false, "", fmt.Errorf("prometheus answered %s: %w", b, err)
			}
			got = map[string]bool{}
			for _, r := range res.Data.Result {
				got[r.Metric["deployment"]+"/"+r.Metric["direction"]] = true
			}
			for _, want := range []string{"web/inbound", "books/inbound", "authors/inbound", "ticker/inbound", "web/outbound"} {
				if !got[want] {
					return false, fmt.Sprintf("series by deployment/direction: %v", got), nil
				}
			}
			return true, "", nil
		})
	})
}

// TestMeshctlErrors: meshctl against no cluster, a cluster without Sluice,
// an invalid manifest and an unknown resource prints one line saying what
// is wrong and what to do, and exits non-zero.
func TestMeshctlErrors(t *testing.T) {
	s := need(t)
	dir := t.TempDir()
	noCluster := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(noCluster, []byte(`apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: gone, context: {cluster: gone, user: u}}]
current-context: gone
`), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	kc := s.cluster.Kubeconfig
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no cluster", []string{"stat", "deploy", "--kubeconfig", noCluster}, "cannot reach the Kubernetes API server at https://127.0.0.1:1"},
		{"without Sluice", []string{"stat", "deploy", "--kubeconfig", kc, "-L", "no-sluice-here"}, "Sluice is not installed"},
		{"without Sluice tap", []string{"tap", "deploy/web", "--kubeconfig", kc, "-L", "no-sluice-here"}, "Sluice is not installed"},
		{"invalid manifest", []string{"inject", "--ignore-cluster", bad}, "bad.yaml"},
		{"unknown resource type", []string{"stat", "gizmo", "--kubeconfig", kc}, `unknown resource type "gizmo"`},
		{"unknown resource", []string{"stat", "deploy/no-such-deployment", "-n", "default", "--kubeconfig", kc}, "no-such-deployment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.CommandContext(ctx(t, time.Minute), s.meshctl, tc.args...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if err == nil {
				t.Fatalf("meshctl %s succeeded:\n%s", strings.Join(tc.args, " "), stdout.String())
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, tc.want) {
				t.Errorf("meshctl %s: stderr %q, want one line with %q", strings.Join(tc.args, " "), msg, tc.want)
			}
		})
	}
}
