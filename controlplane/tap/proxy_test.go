package tap_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/taptest"
	ptap "github.com/sluice-mesh/sluice/proxy/tap"
)

// TestFiltersInTheProxy taps a pod whose proxy is the real proxy's tap
// server (proxy/tap), to check that the Match the service builds compiles
// there and keeps exactly the requests the filters describe.
func TestFiltersInTheProxy(t *testing.T) {
	hub := ptap.NewHub(ptap.HubOptions{})
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	tappb.RegisterTapServer(gs, ptap.NewServer(hub))
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	env := newEnv(t, nil, taptest.Options{Adjust: func(c *tap.Config) {
		c.Dial = func(ctx context.Context, a netip.AddrPort) (net.Conn, error) { return lis.DialContext(ctx) }
	}})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resp := do(t, ctx, env, call{
		path: base + "/watch/namespaces/shop/pods/web-1/tap", user: "alice", contentType: "application/json",
		body: []byte(`{"method":"GET","path":"/api/","to":{"type":"deployment","name":"db"},"maxRps":1000}`),
	})
	er := newEventReader(t, resp)
	deadline := time.Now().Add(hangGuard)
	for hub.Taps() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the proxy has no tap open")
		}
		time.Sleep(5 * time.Millisecond)
	}

	dbLabels := map[string]string{"namespace": "shop", "deployment": "db", "pod": "db-1", "tls": "true"}
	for _, r := range []struct {
		method, path string
		dst          netip.Addr
		labels       map[string]string
		want         bool
	}{
		{"GET", "/api/a", ipDB1, dbLabels, true},
		{"GET", "/api/b", netip.MustParseAddr("10.0.7.7"), map[string]string{"namespace": "shop", "deployment": "cache"}, false},
		{"GET", "/api/c", netip.MustParseAddr("10.0.7.8"), map[string]string{"namespace": "other", "deployment": "db"}, false},
		{"POST", "/api/d", ipDB1, dbLabels, false},
		{"GET", "/metrics", ipDB1, dbLabels, false},
		{"GET", "/api/e", ipDB1, map[string]string{"tls": "no_identity"}, true}, // no labels from discovery: matched by db-1's IP
	} {
		req := hub.Start(&ptap.RequestInfo{
			Direction:         tappb.TapEvent_OUTBOUND,
			Source:            addr(ipWeb1, 40000),
			Destination:       addr(r.dst, 5432),
			DestinationLabels: r.labels,
			Method:            r.method, Scheme: "http", Authority: "db:5432", Path: r.path,
		})
		if (req != nil) != r.want {
			t.Errorf("%s %s to %v: tapped %v, want %v", r.method, r.path, r.labels, req != nil, r.want)
		}
		req.ResponseEnd(0, ptap.Eos{}, nil)
	}
	for _, want := range []string{"/api/a", "/api/e"} {
		ev := er.next()
		if got := ev.GetHttp().GetRequestInit().GetPath(); got != want {
			t.Fatalf("got %v, want the request init of %s", ev, want)
		}
		if got := ev.GetSourceMeta().GetLabels()["pod"]; got != "web-1" {
			t.Errorf("source pod %q, want web-1", got)
		}
		if got := ev.GetDestinationMeta().GetLabels()["pod"]; got != "db-1" {
			t.Errorf("destination pod %q, want db-1", got)
		}
		if ev := er.next(); ev.GetHttp().GetResponseEnd() == nil {
			t.Fatalf("got %v, want the response end of %s", ev, want)
		}
	}
}
