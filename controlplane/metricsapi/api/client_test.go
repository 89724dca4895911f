package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// TestClient calls a server behind a path prefix (as through the API
// server's service proxy) and checks what it sent and what it decoded,
// for answers and for errors.
func TestClient(t *testing.T) {
	var gotPath, gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotQuery = r.URL.Path, r.URL.RawQuery
		switch r.URL.Query().Get("namespace") {
		case "bad":
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error":"\"X\" is not a deployment name","param":"name"}`))
			return
		case "down":
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("<html>no backend</html>"))
			return
		}
		switch r.URL.Path {
		case "/proxy" + StatPath:
			w.Write([]byte(`{"window":"1m0s","rows":[{"namespace":"shop","kind":"deployment","name":"web","meshed_pods":2,"total_pods":2,"success_rate":0.8,"rps":10,"latency_ms_p50":7.5,"latency_ms_p95":null,"latency_ms_p99":null,"tcp_connections":6,"tcp_read_bytes_per_sec":0,"tcp_write_bytes_per_sec":0,"status":"ok"}]}`))
		case "/proxy" + EdgesPath:
			w.Write([]byte(`{"edges":[{"src":{"namespace":"shop","kind":"deployment","name":"client"},"dst":{"namespace":"shop","kind":"deployment","name":"web"},"client_id":"c","server_id":"s","secured":true}]}`))
		case "/proxy" + TopRoutesPath:
			w.Write([]byte(`{"window":"1m0s","routes":[{"authority":"web:80","rps":8,"success_rate":1,"latency_ms_p50":null,"latency_ms_p95":null,"latency_ms_p99":null}]}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL+"/proxy/", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f := func(v float64) *float64 { return &v }

	stat, err := c.Stat(ctx, StatRequest{Resource: Deployment, Namespace: "shop", To: &Resource{Kind: Service, Name: "web"}})
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if gotPath != "/proxy/api/v1/stat" || gotQuery != "namespace=shop&resource=deployment&to=service%2Fweb" {
		t.Errorf("Stat sent %s?%s", gotPath, gotQuery)
	}
	wantRow := StatRow{Resource: Resource{Namespace: "shop", Kind: Deployment, Name: "web"}, MeshedPods: 2, TotalPods: 2,
		SuccessRate: f(0.8), RequestRate: 10, LatencyP50Ms: f(7.5), TCPConnections: 6, Status: StatusOK}
	if len(stat.Rows) != 1 || !reflect.DeepEqual(stat.Rows[0], wantRow) {
		t.Errorf("Stat rows %+v, want [%+v]", stat.Rows, wantRow)
	}

	edges, err := c.Edges(ctx, EdgesRequest{Resource: Deployment})
	if err != nil {
		t.Fatalf("Edges: %v", err)
	}
	if len(edges.Edges) != 1 || edges.Edges[0].Src.Name != "client" || !edges.Edges[0].Secured {
		t.Errorf("Edges %+v", edges.Edges)
	}
	routes, err := c.TopRoutes(ctx, TopRoutesRequest{Resource: Deployment, Name: "web"})
	if err != nil {
		t.Fatalf("TopRoutes: %v", err)
	}
	if len(routes.Routes) != 1 || routes.Routes[0].Authority != "web:80" || *routes.Routes[0].SuccessRate != 1 {
		t.Errorf("TopRoutes %+v", routes.Routes)
	}

	for _, tc := range []struct {
		ns        string
		status    int
		param     string
		inMessage string
	}{
		{"bad", 400, "name", `"X" is not a deployment name`},
		{"down", 502, "", "502 Bad Gateway from " + srv.URL + "/proxy/api/v1/stat?namespace=down&resource=deployment: <html>no backend</html>"},
	} {
		_, err := c.Stat(ctx, StatRequest{Resource: Deployment, Namespace: tc.ns})
		var e *Error
		if !errors.As(err, &e) || e.Status != tc.status || e.Param != tc.param || !strings.Contains(e.Message, tc.inMessage) {
			t.Errorf("Stat in %s: got %#v, want %d naming %q with %q", tc.ns, err, tc.status, tc.param, tc.inMessage)
		}
	}
}

// TestNewClient refuses URLs that are not http(s) with a host.
func TestNewClient(t *testing.T) {
	for _, u := range []string{"", "localhost:8085", "ftp://x", "http://", "::"} {
		if _, err := NewClient(u, nil); err == nil {
			t.Errorf("NewClient(%q) accepted it", u)
		}
	}
}
