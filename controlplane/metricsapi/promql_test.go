package metricsapi

import (
	"net/url"
	"testing"

	"github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// TestStatQueries checks the PromQL built for stat requests, from their
// query parameters.
func TestStatQueries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		query string // the request's query string
		want  statQueries
	}{
		{
			name:  "deployments of a namespace: their inbound traffic",
			query: "resource=deploy&namespace=shop",
			want: statQueries{
				responses: `sum by (namespace, deployment, classification) (rate(response_total{direction="inbound", namespace="shop", deployment!=""}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, namespace, deployment) (rate(response_latency_ms_bucket{direction="inbound", namespace="shop", deployment!=""}[60s])))`,
					`histogram_quantile(0.95, sum by (le, namespace, deployment) (rate(response_latency_ms_bucket{direction="inbound", namespace="shop", deployment!=""}[60s])))`,
					`histogram_quantile(0.99, sum by (le, namespace, deployment) (rate(response_latency_ms_bucket{direction="inbound", namespace="shop", deployment!=""}[60s])))`,
				},
				tcpOpen:  `sum by (namespace, deployment) (tcp_open_connections{direction="inbound", namespace="shop", deployment!="", peer="src"})`,
				tcpRead:  `sum by (namespace, deployment) (rate(tcp_read_bytes_total{direction="inbound", namespace="shop", deployment!="", peer="src"}[60s]))`,
				tcpWrite: `sum by (namespace, deployment) (rate(tcp_write_bytes_total{direction="inbound", namespace="shop", deployment!="", peer="src"}[60s]))`,
			},
		},
		{
			name:  "one pod in every namespace, 5 minutes",
			query: "resource=po&name=web-1&window=5m",
			want: statQueries{
				responses: `sum by (namespace, pod, classification) (rate(response_total{direction="inbound", pod="web-1"}[300s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, namespace, pod) (rate(response_latency_ms_bucket{direction="inbound", pod="web-1"}[300s])))`,
					`histogram_quantile(0.95, sum by (le, namespace, pod) (rate(response_latency_ms_bucket{direction="inbound", pod="web-1"}[300s])))`,
					`histogram_quantile(0.99, sum by (le, namespace, pod) (rate(response_latency_ms_bucket{direction="inbound", pod="web-1"}[300s])))`,
				},
				tcpOpen:  `sum by (namespace, pod) (tcp_open_connections{direction="inbound", pod="web-1", peer="src"})`,
				tcpRead:  `sum by (namespace, pod) (rate(tcp_read_bytes_total{direction="inbound", pod="web-1", peer="src"}[300s]))`,
				tcpWrite: `sum by (namespace, pod) (rate(tcp_write_bytes_total{direction="inbound", pod="web-1", peer="src"}[300s]))`,
			},
		},
		{
			name:  "namespaces: the namespace parameter is ignored",
			query: "resource=ns&namespace=shop&window=30s",
			want: statQueries{
				responses: `sum by (namespace, classification) (rate(response_total{direction="inbound", namespace!=""}[30s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, namespace) (rate(response_latency_ms_bucket{direction="inbound", namespace!=""}[30s])))`,
					`histogram_quantile(0.95, sum by (le, namespace) (rate(response_latency_ms_bucket{direction="inbound", namespace!=""}[30s])))`,
					`histogram_quantile(0.99, sum by (le, namespace) (rate(response_latency_ms_bucket{direction="inbound", namespace!=""}[30s])))`,
				},
				tcpOpen:  `sum by (namespace) (tcp_open_connections{direction="inbound", namespace!="", peer="src"})`,
				tcpRead:  `sum by (namespace) (rate(tcp_read_bytes_total{direction="inbound", namespace!="", peer="src"}[30s]))`,
				tcpWrite: `sum by (namespace) (rate(tcp_write_bytes_total{direction="inbound", namespace!="", peer="src"}[30s]))`,
			},
		},
		{
			name:  "a job: the k8s_job label",
			query: "resource=job&namespace=batch&name=nightly",
			want: statQueries{
				responses: `sum by (namespace, k8s_job, classification) (rate(response_total{direction="inbound", namespace="batch", k8s_job="nightly"}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, namespace, k8s_job) (rate(response_latency_ms_bucket{direction="inbound", namespace="batch", k8s_job="nightly"}[60s])))`,
					`histogram_quantile(0.95, sum by (le, namespace, k8s_job) (rate(response_latency_ms_bucket{direction="inbound", namespace="batch", k8s_job="nightly"}[60s])))`,
					`histogram_quantile(0.99, sum by (le, namespace, k8s_job) (rate(response_latency_ms_bucket{direction="inbound", namespace="batch", k8s_job="nightly"}[60s])))`,
				},
				tcpOpen:  `sum by (namespace, k8s_job) (tcp_open_connections{direction="inbound", namespace="batch", k8s_job="nightly", peer="src"})`,
				tcpRead:  `sum by (namespace, k8s_job) (rate(tcp_read_bytes_total{direction="inbound", namespace="batch", k8s_job="nightly", peer="src"}[60s]))`,
				tcpWrite: `sum by (namespace, k8s_job) (rate(tcp_write_bytes_total{direction="inbound", namespace="batch", k8s_job="nightly", peer="src"}[60s]))`,
			},
		},
		{
			name:  "--to: outbound traffic to the target, grouped by the source",
			query: "resource=deploy&namespace=shop&name=client&to=deploy/web&to_namespace=store",
			want: statQueries{
				responses: `sum by (namespace, deployment, classification) (rate(response_total{direction="outbound", namespace="shop", deployment="client", dst_namespace="store", dst_deployment="web"}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, namespace, deployment) (rate(response_latency_ms_bucket{direction="outbound", namespace="shop", deployment="client", dst_namespace="store", dst_deployment="web"}[60s])))`,
					`histogram_quantile(0.95, sum by (le, namespace, deployment) (rate(response_latency_ms_bucket{direction="outbound", namespace="shop", deployment="client", dst_namespace="store", dst_deployment="web"}[60s])))`,
					`histogram_quantile(0.99, sum by (le, namespace, deployment) (rate(response_latency_ms_bucket{direction="outbound", namespace="shop", deployment="client", dst_namespace="store", dst_deployment="web"}[60s])))`,
				},
				tcpOpen:  `sum by (namespace, deployment) (tcp_open_connections{direction="outbound", namespace="shop", deployment="client", dst_namespace="store", dst_deployment="web", peer="dst"})`,
				tcpRead:  `sum by (namespace, deployment) (rate(tcp_read_bytes_total{direction="outbound", namespace="shop", deployment="client", dst_namespace="store", dst_deployment="web", peer="dst"}[60s]))`,
				tcpWrite: `sum by (namespace, deployment) (rate(tcp_write_bytes_total{direction="outbound", namespace="shop", deployment="client", dst_namespace="store", dst_deployment="web", peer="dst"}[60s]))`,
			},
		},
		{
			name:  "--from: what the source sent, grouped by the dst_ labels",
			query: "resource=deploy&namespace=shop&from=deploy/client",
			want: statQueries{
				responses: `sum by (dst_namespace, dst_deployment, classification) (rate(response_total{direction="outbound", namespace="shop", deployment="client", dst_namespace="shop", dst_deployment!=""}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, dst_namespace, dst_deployment) (rate(response_latency_ms_bucket{direction="outbound", namespace="shop", deployment="client", dst_namespace="shop", dst_deployment!=""}[60s])))`,
					`histogram_quantile(0.95, sum by (le, dst_namespace, dst_deployment) (rate(response_latency_ms_bucket{direction="outbound", namespace="shop", deployment="client", dst_namespace="shop", dst_deployment!=""}[60s])))`,
					`histogram_quantile(0.99, sum by (le, dst_namespace, dst_deployment) (rate(response_latency_ms_bucket{direction="outbound", namespace="shop", deployment="client", dst_namespace="shop", dst_deployment!=""}[60s])))`,
				},
				tcpOpen:  `sum by (dst_namespace, dst_deployment) (tcp_open_connections{direction="outbound", namespace="shop", deployment="client", dst_namespace="shop", dst_deployment!="", peer="dst"})`,
				tcpRead:  `sum by (dst_namespace, dst_deployment) (rate(tcp_read_bytes_total{direction="outbound", namespace="shop", deployment="client", dst_namespace="shop", dst_deployment!="", peer="dst"}[60s]))`,
				tcpWrite: `sum by (dst_namespace, dst_deployment) (rate(tcp_write_bytes_total{direction="outbound", namespace="shop", deployment="client", dst_namespace="shop", dst_deployment!="", peer="dst"}[60s]))`,
			},
		},
		{
			name:  "services: the traffic sent to them",
			query: "resource=svc&namespace=shop&name=web",
			want: statQueries{
				responses: `sum by (dst_namespace, dst_service, classification) (rate(response_total{direction="outbound", dst_namespace="shop", dst_service="web"}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", dst_namespace="shop", dst_service="web"}[60s])))`,
					`histogram_quantile(0.95, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", dst_namespace="shop", dst_service="web"}[60s])))`,
					`histogram_quantile(0.99, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", dst_namespace="shop", dst_service="web"}[60s])))`,
				},
				tcpOpen:  `sum by (dst_namespace, dst_service) (tcp_open_connections{direction="outbound", dst_namespace="shop", dst_service="web", peer="dst"})`,
				tcpRead:  `sum by (dst_namespace, dst_service) (rate(tcp_read_bytes_total{direction="outbound", dst_namespace="shop", dst_service="web", peer="dst"}[60s]))`,
				tcpWrite: `sum by (dst_namespace, dst_service) (rate(tcp_write_bytes_total{direction="outbound", dst_namespace="shop", dst_service="web", peer="dst"}[60s]))`,
			},
		},
		{
			name:  "services --to the deployment behind them",
			query: "resource=svc&namespace=shop&to=deploy/web",
			want: statQueries{
				responses: `sum by (dst_namespace, dst_service, classification) (rate(response_total{direction="outbound", dst_namespace="shop", dst_service!="", dst_deployment="web"}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", dst_namespace="shop", dst_service!="", dst_deployment="web"}[60s])))`,
					`histogram_quantile(0.95, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", dst_namespace="shop", dst_service!="", dst_deployment="web"}[60s])))`,
					`histogram_quantile(0.99, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", dst_namespace="shop", dst_service!="", dst_deployment="web"}[60s])))`,
				},
				tcpOpen:  `sum by (dst_namespace, dst_service) (tcp_open_connections{direction="outbound", dst_namespace="shop", dst_service!="", dst_deployment="web", peer="dst"})`,
				tcpRead:  `sum by (dst_namespace, dst_service) (rate(tcp_read_bytes_total{direction="outbound", dst_namespace="shop", dst_service!="", dst_deployment="web", peer="dst"}[60s]))`,
				tcpWrite: `sum by (dst_namespace, dst_service) (rate(tcp_write_bytes_total{direction="outbound", dst_namespace="shop", dst_service!="", dst_deployment="web", peer="dst"}[60s]))`,
			},
		},
		{
			name:  "services --from a deployment in another namespace",
			query: "resource=svc&namespace=shop&from=deploy/client&from_namespace=front",
			want: statQueries{
				responses: `sum by (dst_namespace, dst_service, classification) (rate(response_total{direction="outbound", namespace="front", deployment="client", dst_namespace="shop", dst_service!=""}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", namespace="front", deployment="client", dst_namespace="shop", dst_service!=""}[60s])))`,
					`histogram_quantile(0.95, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", namespace="front", deployment="client", dst_namespace="shop", dst_service!=""}[60s])))`,
					`histogram_quantile(0.99, sum by (le, dst_namespace, dst_service) (rate(response_latency_ms_bucket{direction="outbound", namespace="front", deployment="client", dst_namespace="shop", dst_service!=""}[60s])))`,
				},
				tcpOpen:  `sum by (dst_namespace, dst_service) (tcp_open_connections{direction="outbound", namespace="front", deployment="client", dst_namespace="shop", dst_service!="", peer="dst"})`,
				tcpRead:  `sum by (dst_namespace, dst_service) (rate(tcp_read_bytes_total{direction="outbound", namespace="front", deployment="client", dst_namespace="shop", dst_service!="", peer="dst"}[60s]))`,
				tcpWrite: `sum by (dst_namespace, dst_service) (rate(tcp_write_bytes_total{direction="outbound", namespace="front", deployment="client", dst_namespace="shop", dst_service!="", peer="dst"}[60s]))`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			req, err := api.ParseStatRequest(q)
			if err != nil {
				t.Fatalf("ParseStatRequest(%s): %v", tc.query, err)
			}
			got := buildStatQueries(statSelection(req.Resource, req.Namespace, req.Name, req.To, req.From), req.Window)
			check := func(what, got, want string) {
				t.Helper()
				if got != want {
					t.Errorf("%s query:\n got %s\nwant %s", what, got, want)
				}
			}
			check("responses", got.responses, tc.want.responses)
			for i := range got.latency {
				check("latency", got.latency[i], tc.want.latency[i])
			}
			check("tcp_open_connections", got.tcpOpen, tc.want.tcpOpen)
			check("tcp_read_bytes_total", got.tcpRead, tc.want.tcpRead)
			check("tcp_write_bytes_total", got.tcpWrite, tc.want.tcpWrite)
		})
	}
}

// TestRouteQueries checks the PromQL of top-routes: by authority.
func TestRouteQueries(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  routeQueries
	}{
		{
			query: "resource=deploy&namespace=shop&name=web&window=2m",
			want: routeQueries{
				responses: `sum by (authority, classification) (rate(response_total{direction="inbound", namespace="shop", deployment="web"}[120s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, authority) (rate(response_latency_ms_bucket{direction="inbound", namespace="shop", deployment="web"}[120s])))`,
					`histogram_quantile(0.95, sum by (le, authority) (rate(response_latency_ms_bucket{direction="inbound", namespace="shop", deployment="web"}[120s])))`,
					`histogram_quantile(0.99, sum by (le, authority) (rate(response_latency_ms_bucket{direction="inbound", namespace="shop", deployment="web"}[120s])))`,
				},
			},
		},
		{
			query: "resource=sts&namespace=db&to=svc/cache",
			want: routeQueries{
				responses: `sum by (authority, classification) (rate(response_total{direction="outbound", namespace="db", statefulset!="", dst_namespace="db", dst_service="cache"}[60s]))`,
				latency: [3]string{
					`histogram_quantile(0.5, sum by (le, authority) (rate(response_latency_ms_bucket{direction="outbound", namespace="db", statefulset!="", dst_namespace="db", dst_service="cache"}[60s])))`,
					`histogram_quantile(0.95, sum by (le, authority) (rate(response_latency_ms_bucket{direction="outbound", namespace="db", statefulset!="", dst_namespace="db", dst_service="cache"}[60s])))`,
					`histogram_quantile(0.99, sum by (le, authority) (rate(response_latency_ms_bucket{direction="outbound", namespace="db", statefulset!="", dst_namespace="db", dst_service="cache"}[60s])))`,
				},
			},
		},
	} {
		t.Run(tc.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			req, err := api.ParseTopRoutesRequest(q)
			if err != nil {
				t.Fatalf("ParseTopRoutesRequest(%s): %v", tc.query, err)
			}
			got := buildRouteQueries(statSelection(req.Resource, req.Namespace, req.Name, req.To, nil), req.Window)
			if got != tc.want {
				t.Errorf("queries:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestEdgeQueries checks the PromQL of edges: outbound series with both
// ends named, inbound series that carry a client identity.
func TestEdgeQueries(t *testing.T) {
	for _, tc := range []struct {
		t    api.ResourceType
		want edgeQueries
	}{
		{api.Deployment, edgeQueries{
			outbound: `count by (namespace, deployment, dst_namespace, dst_deployment, tls, server_id, no_tls_reason) (tcp_open_total{direction="outbound", deployment!="", dst_deployment!="", peer="dst"} or response_total{direction="outbound", deployment!="", dst_deployment!=""})`,
			inbound:  `count by (namespace, deployment, client_id) (tcp_open_total{direction="inbound", tls="true", client_id!="", deployment!="", peer="src"} or response_total{direction="inbound", tls="true", client_id!="", deployment!=""})`,
		}},
		{api.Namespace, edgeQueries{
			outbound: `count by (namespace, dst_namespace, tls, server_id, no_tls_reason) (tcp_open_total{direction="outbound", namespace!="", dst_namespace!="", peer="dst"} or response_total{direction="outbound", namespace!="", dst_namespace!=""})`,
			inbound:  `count by (namespace, client_id) (tcp_open_total{direction="inbound", tls="true", client_id!="", namespace!="", peer="src"} or response_total{direction="inbound", tls="true", client_id!="", namespace!=""})`,
		}},
	} {
		t.Run(string(tc.t), func(t *testing.T) {
			if got := buildEdgeQueries(tc.t); got != tc.want {
				t.Errorf("queries:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestSelectorEscapes checks that label values are written as escaped
// string literals, whatever they hold.
func TestSelectorEscapes(t *testing.T) {
	for _, tc := range []struct {
		value, want string
	}{
		{`web`, `{deployment="web"}`},
		{`a"} or vector(1) or {x="`, `{deployment="a\"} or vector(1) or {x=\""}`},
		{`back\slash`, `{deployment="back\\slash"}`},
		{"new\nline", `{deployment="new\nline"}`},
	} {
		if got := (selector{eq("deployment", tc.value)}).String(); got != tc.want {
			t.Errorf("selector of %q: got %s, want %s", tc.value, got, tc.want)
		}
	}
}
