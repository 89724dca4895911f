package meshctl

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// fakeMetricsAPI answers the metrics API's endpoints as the real server
// does as far as parameters go (it parses them with the same functions,
// and a resource named "missing" does not exist), with canned rows. It
// records each query.
type fakeMetricsAPI struct {
	rows   []metricsapi.StatRow
	routes []metricsapi.Route
	edges  []metricsapi.Edge

	mu      sync.Mutex
	queries []string
}

func (f *fakeMetricsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.queries = append(f.queries, r.URL.Path+"?"+r.URL.RawQuery)
	f.mu.Unlock()
	q := r.URL.Query()
	var out any
	var err error
	switch r.URL.Path {
	case metricsapi.StatPath:
		var req metricsapi.StatRequest
		if req, err = metricsapi.ParseStatRequest(q); err == nil {
			out = metricsapi.StatResponse{Window: req.Window.String(), Rows: f.rows}
		}
	case metricsapi.TopRoutesPath:
		var req metricsapi.TopRoutesRequest
		if req, err = metricsapi.ParseTopRoutesRequest(q); err == nil {
			out = metricsapi.TopRoutesResponse{Window: req.Window.String(), Routes: f.routes}
		}
	case metricsapi.EdgesPath:
		if _, err = metricsapi.ParseEdgesRequest(q); err == nil {
			out = metricsapi.EdgesResponse{Edges: f.edges}
		}
	default:
		http.NotFound(w, r)
		return
	}
	if q.Get(metricsapi.ParamName) == "missing" {
		err = &metricsapi.Error{Status: http.StatusNotFound, Param: metricsapi.ParamName,
			Message: q.Get(metricsapi.ParamResource) + " " + q.Get(metricsapi.ParamNamespace) + "/missing not found"}
	}
	status := http.StatusOK
	if e, ok := err.(*metricsapi.Error); ok {
		status, out = e.Status, e
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(out)
}

// lastQuery is the last query's path and parameters.
func (f *fakeMetricsAPI) lastQuery() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.queries) == 0 {
		return ""
	}
	return f.queries[len(f.queries)-1]
}

// TestMetricsCommands runs stat, top and edges against a fake API server
// whose service proxy leads to a fake metrics API, and checks the query
// each sent and its output.
func TestMetricsCommands(t *testing.T) {
	api := &fakeMetricsAPI{
		rows: statRows()[:1],
		routes: []metricsapi.Route{{Authority: "web.demo.svc.cluster.local", RequestRate: 2, SuccessRate: new(1.0),
			LatencyP50Ms: new(1.5), LatencyP95Ms: new(4.0), LatencyP99Ms: new(5.0)}},
		edges: []metricsapi.Edge{{Src: metricsapi.Resource{Namespace: "demo", Kind: metricsapi.Deployment, Name: "client"},
			Dst: metricsapi.Resource{Namespace: "demo", Kind: metricsapi.Deployment, Name: "web"}, Secured: true}},
	}
	kubeconfig, _ := fakeCluster{metrics: api}.start(t)
	for _, tc := range []struct {
		args      []string
		wantQuery string
		wantOut   []string // lines the output has
	}{
		{[]string{"stat", "deploy"}, "/api/v1/stat?namespace=demo&resource=deployment&window=1m0s",
			[]string{"NAME  MESHED  SUCCESS  RPS      LATENCY_P50  LATENCY_P95  LATENCY_P99  TCP_CONN",
				"web   2/2     90.48%   12.3rps  3.2ms        10ms         250ms        6"}},
		{[]string{"stat", "deploy/web", "-n", "shop", "-t", "10m", "--to", "svc/api", "--to-namespace", "store", "-o", "json"},
			"/api/v1/stat?name=web&namespace=shop&resource=deployment&to=service%2Fapi&to_namespace=store&window=10m0s",
			[]string{`    "success_rate": 0.904761,`}},
		{[]string{"stat", "po", "web-1", "--from", "deploy/client", "-A", "-o", "wide"},
			"/api/v1/stat?from=deployment%2Fclient&name=web-1&resource=pod&window=1m0s",
			[]string{"NAMESPACE  NAME  MESHED  SUCCESS  RPS      LATENCY_P50  LATENCY_P95  LATENCY_P99  TCP_CONN  READ_BYTES/SEC  WRITE_BYTES/SEC  STATUS"}},
		{[]string{"stat", "ns", "-A"}, "/api/v1/stat?resource=namespace&window=1m0s",
			[]string{"NAME  MESHED  SUCCESS  RPS      LATENCY_P50  LATENCY_P95  LATENCY_P99  TCP_CONN"}},
		{[]string{"top", "deploy/web", "--once"}, "/api/v1/top-routes?name=web&namespace=demo&resource=deployment&window=1m0s",
			[]string{"web.demo.svc.cluster.local  100.00%  2.0rps  1.5ms        4.0ms        5.0ms"}},
		{[]string{"top", "svc", "api", "--once", "-o", "json", "-t", "5m"},
			"/api/v1/top-routes?name=api&namespace=demo&resource=service&window=5m0s", []string{`    "authority": "web.demo.svc.cluster.local",`}},
		{[]string{"edges", "deploy"}, "/api/v1/edges?namespace=demo&resource=deployment",
			[]string{"client  web  demo    demo    yes      -          -"}},
		{[]string{"edges", "po", "-A", "-o", "json"}, "/api/v1/edges?resource=pod", []string{`    "secured": true`}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, err := runIn(t.Context(), kubeconfig, tc.args...)
			if err != nil || stderr != "" {
				t.Fatalf("error %v, stderr %q", err, stderr)
			}
			if got := api.lastQuery(); got != tc.wantQuery {
				t.Errorf("query %s, want %s", got, tc.wantQuery)
			}
			lines := strings.Split(stdout, "\n")
			for _, want := range tc.wantOut {
				if !slices.Contains(lines, want) {
					t.Errorf("output lacks the line %q:\n%s", want, stdout)
				}
			}
		})
	}
}

// TestMetricsCommandsNoRows prints "No traffic found." or [] and succeeds.
func TestMetricsCommandsNoRows(t *testing.T) {
	kubeconfig, _ := fakeCluster{metrics: &fakeMetricsAPI{}}.start(t)
	for args, want := range map[string]string{
		"stat job":              "No traffic found.\n",
		"stat job -o json":      "[]\n",
		"top deploy --once":     "No traffic found.\n",
		"edges ns -o wide":      "No edges found.\n",
		"edges deploy -o json":  "[]\n",
		"top ns -o json --once": "[]\n",
	} {
		stdout, _, err := runIn(t.Context(), kubeconfig, strings.Fields(args)...)
		if err != nil || stdout != want {
			t.Errorf("meshctl %s: %q, %v; want %q", args, stdout, err, want)
		}
	}
}

// TestMetricsCommandsFail checks the one-line errors of a resource that
// does not exist, of a cluster without Sluice and of a metrics API
// without endpoints.
func TestMetricsCommandsFail(t *testing.T) {
	withAPI, _ := fakeCluster{metrics: &fakeMetricsAPI{}}.start(t)
	noSluice, _ := fakeCluster{noSluice: true}.start(t)
	noAPI, _ := fakeCluster{}.start(t)
	for _, tc := range []struct {
		kubeconfig string
		args       string
		want       string
	}{
		{withAPI, "stat deploy/missing", "deployment demo/missing not found"},
		{withAPI, "top sts missing -n shop --once", "statefulset shop/missing not found"},
		{noSluice, "stat deploy", `Sluice is not installed in this cluster (no namespace "sluice")`},
		{noSluice, "edges deploy", "Sluice is not installed"},
		{noAPI, "stat deploy", `the metrics API answered 503 Service Unavailable: no endpoints available for service "sluice-metrics-api"`},
		{noAPI, "top deploy --once", "the metrics API answered 503"},
	} {
		stdout, _, err := runIn(t.Context(), tc.kubeconfig, strings.Fields(tc.args)...)
		oneLine(t, "meshctl "+tc.args, err, tc.want)
		if stdout != "" {
			t.Errorf("meshctl %s printed %q", tc.args, stdout)
		}
	}
}

// TestMetricsCommandsInvalid checks that bad arguments and flags are
// refused with one line before any cluster is asked (the kubeconfig does
// not exist).
func TestMetricsCommandsInvalid(t *testing.T) {
	for _, tc := range []struct {
		args string
		want string
	}{
		{"stat widgets", `invalid TYPE: unknown resource type "widgets" (want one of deploy, sts, ds, job, po, ns, svc)`},
		{"stat deploy -o yaml", `invalid --output "yaml": use "table", "wide" or "json"`},
		{"top deploy -o wide", `invalid --output "wide": use "table" or "json"`},
		{"edges deploy -o yaml", `invalid --output "yaml"`},
		{"stat deploy -t 500ms", "invalid --time-window: 500ms is not whole seconds from 1s to 24h0m0s"},
		{"stat deploy -t 25h", "invalid --time-window: 25h0m0s is not whole seconds"},
		{"top deploy -t 0s", "invalid --time-window: 0s is not whole seconds"},
		{"stat deploy -t forever", `invalid argument "forever" for "-t, --time-window" flag`},
		{"stat deploy --to svc/a --from deploy/b", "--to and --from exclude each other"},
		{"stat deploy --from svc/a", "invalid --from: a service sends no traffic"},
		{"stat deploy --to widget/a", `invalid --to: unknown resource type "widget"`},
		{"stat deploy --to-namespace shop", "invalid --to-namespace: given without to"},
		{"stat deploy -n demo -A", "--namespace and --all-namespaces exclude each other"},
		{"stat deploy -n Demo", `invalid --namespace: "Demo" is not a namespace name`},
		{"stat deploy Web", `invalid NAME: "Web" is not a deployment name`},
		{"stat deploy/web web", "give TYPE/NAME or TYPE NAME, not both"},
		{"stat deploy/", "give TYPE/NAME, such as deploy/web"},
		{"stat", "accepts between 1 and 2 arg(s), received 0"},
		{"edges svc", "invalid TYPE: edges join workloads, pods or namespaces, not services"},
		{"edges deploy web", "accepts 1 arg(s), received 2"},
		{"top deploy --from deploy/a", "unknown flag: --from"},
	} {
		_, _, err := runIn(context.Background(), "/nonexistent/kubeconfig", strings.Fields(tc.args)...)
		oneLine(t, "meshctl "+tc.args, err, tc.want)
	}
}

// TestRefresh checks top's loop: a first error ends it, later ones are
// reported and retried, and the end of ctx ends it without error.
func TestRefresh(t *testing.T) {
	if err := refresh(t.Context(), time.Millisecond, func(context.Context) error { return errBoom }, nil); err != errBoom {
		t.Errorf("first call failing: %v, want %v", err, errBoom)
	}
	ctx, cancel := context.WithCancel(t.Context())
	calls := 0
	var errOut strings.Builder
	err := refresh(ctx, time.Millisecond, func(context.Context) error {
		calls++
		switch calls {
		case 2:
			return errBoom
		case 4:
			cancel()
		}
		return nil
	}, &errOut)
	if err != nil || calls != 4 || errOut.String() != "Error: boom\n" {
		t.Errorf("refresh: %v after %d calls, errors %q; want nil after 4 with one error", err, calls, errOut.String())
	}
}

var errBoom = &metricsapi.Error{Message: "boom"}

// TestStatusMessage shortens API server Status answers and keeps others.
func TestStatusMessage(t *testing.T) {
	for in, want := range map[string]string{
		`503 Service Unavailable from https://h/x: {"kind":"Status","message":"no endpoints"}`: "no endpoints",
		"502 Bad Gateway from https://h/x: <html>bad</html>":                                   "502 Bad Gateway from https://h/x: <html>bad</html>",
		"500 from x: {not json": "500 from x: {not json",
	} {
		if got := statusMessage(in); got != want {
			t.Errorf("statusMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestHelp checks that the observability commands have a long help and
// examples of themselves.
func TestHelp(t *testing.T) {
	root := newCmdRoot(newGlobalOptions())
	for _, name := range []string{"stat", "top", "edges", "tap", "dashboard"} {
		cmd, _, err := root.Find([]string{name})
		if err != nil || cmd.Name() != name {
			t.Fatalf("meshctl %s: %v", name, err)
		}
		if cmd.Long == "" || !strings.Contains(cmd.Example, "meshctl "+name) {
			t.Errorf("meshctl %s lacks a long help or examples", name)
		}
	}
}
