package destination_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/proxy/discovery"
)

// The proxy's own discovery client (proxy/discovery) against this server:
// what a proxy resolves, step by step, as the cluster changes. Only the
// tests import proxy/.

// waitFor waits until w's snapshot satisfies cond and returns it.
func waitFor(t *testing.T, w *discovery.Watch, what string, cond func(discovery.Snapshot) bool) discovery.Snapshot {
	t.Helper()
	timeout := time.After(hang)
	for {
		ch := w.Changed()
		s := w.Snapshot()
		if cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%s: waited %v for %s; last snapshot %+v", w.Path(), hang, what, s)
		}
	}
}

func state(st discovery.State, eps ...discovery.Endpoint) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		return s.State == st && slices.EqualFunc(s.Endpoints, eps, discovery.Endpoint.Equal)
	}
}

func TestProxyDiscoveryClient(t *testing.T) {
	e := newEnv(t, nil, service, `
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: shop
  annotations: {config.sluice.io/opaque-ports: "5432"}
spec:
  clusterIP: 10.96.0.20
  ports: [{port: 5432}]
`)
	opts := discovery.Options{ContextToken: `{"ns":"shop","nodeName":"node-1"}`, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	c := discovery.NewClient(e.dial(t, discovery.DialOptions(opts)...), opts)
	t.Cleanup(func() { c.Close() })
	names := discovery.Names{Namespace: "shop"}

	watch := func(host string, port uint16) *discovery.Watch {
		path, ok := names.Path(host, port)
		if !ok {
			t.Fatalf("the proxy does not resolve %s:%d", host, port)
		}
		w := c.Watch(path)
		t.Cleanup(w.Release)
		return w
	}

	web := watch("web", 80)
	waitFor(t, web, "no endpoints", state(discovery.NoEndpoints))

	replicaSet(t, e.api, "5d9f7c")
	n0, ip0 := pod(t, e.api, "5d9f7c", 0, 0, true)
	n1, ip1 := pod(t, e.api, "5d9f7c", 0, 1, false)
	setSlice(t, e.api, ready(n0, ip0), ready(n1, ip1))
	meshed := discovery.Endpoint{
		Addr:   netip.MustParseAddrPort(ip0 + ":8080"),
		Weight: 10000,
		Labels: map[string]string{
			"namespace": "shop", "service": "web", "pod": n0, "serviceaccount": "web",
			"deployment": "web", "pod_template_hash": "5d9f7c", "control_plane_ns": "sluice",
		},
		Identity: "web.shop.serviceaccount.identity.sluice.cluster.local",
		H2:       true,
	}
	plain := discovery.Endpoint{
		Addr:   netip.MustParseAddrPort(ip1 + ":8080"),
		Weight: 10000,
		Labels: map[string]string{
			"namespace": "shop", "service": "web", "pod": n1, "serviceaccount": "web",
			"deployment": "web", "pod_template_hash": "5d9f7c",
		},
	}
	waitFor(t, web, "two endpoints", state(discovery.Found, meshed, plain))

	// Pod 1 is meshed: the proxy's endpoint changes in place.
	updatePod(t, e.api, n1, func(p *corev1.Pod) { p.Labels["sluice.io/control-plane-ns"] = "sluice" })
	meshed1 := plain
	meshed1.Labels = map[string]string{
		"namespace": "shop", "service": "web", "pod": n1, "serviceaccount": "web",
		"deployment": "web", "pod_template_hash": "5d9f7c", "control_plane_ns": "sluice",
	}
	meshed1.Identity, meshed1.H2 = "web.shop.serviceaccount.identity.sluice.cluster.local", true
	waitFor(t, web, "pod 1 meshed", state(discovery.Found, meshed, meshed1))

	setSlice(t, e.api, ready(n1, ip1))
	waitFor(t, web, "one endpoint left", state(discovery.Found, meshed1))
	setSlice(t, e.api)
	waitFor(t, web, "scaled to 0", state(discovery.NoEndpoints))

	// The service's cluster IP and a pod IP, as the proxy resolves opaque
	// connections.
	setSlice(t, e.api, ready(n0, ip0))
	byIP := watch("10.96.0.10", 80)
	waitFor(t, byIP, "the cluster IP's endpoint", state(discovery.Found, meshed))
	podIP := watch(ip1, 9000)
	p1 := meshed1
	p1.Addr = netip.MustParseAddrPort(ip1 + ":9000")
	p1.Labels = map[string]string{"namespace": "shop", "pod": n1, "serviceaccount": "web", "deployment": "web", "pod_template_hash": "5d9f7c", "control_plane_ns": "sluice"}
	waitFor(t, podIP, "the pod IP's endpoint", state(discovery.Found, p1))

	// The service's opaque port: a service without endpoints yet.
	db := watch("db.shop.svc.cluster.local", 5432)
	waitFor(t, db, "db without endpoints", state(discovery.NoEndpoints))

	// What does not exist, or cannot: NotFound, so the proxy forwards to
	// the original destination.
	waitFor(t, watch("nope", 80), "a service that does not exist", state(discovery.NotFound))
	waitFor(t, watch("10.200.0.1", 80), "an unknown IP", state(discovery.NotFound))
	bad := c.Watch("api.example.com:443") // InvalidArgument
	t.Cleanup(bad.Release)
	waitFor(t, bad, "a name outside the cluster", state(discovery.NotFound))

	// The service goes away: NotFound, and back.
	if err := e.api.Client().CoreV1().Services("shop").Delete(bg, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, web, "the service deleted", state(discovery.NotFound))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	if _, err := e.api.Client().CoreV1().Services("shop").Create(bg, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, web, "the service back", state(discovery.Found, meshed))
}

// TestProxyDiscoveryClientAfterShutdown: the Unavailable that ends streams
// at shutdown is, for the proxy, a lost server: it keeps the endpoints it
// knew (InvalidArgument, say, would make it forget them).
func TestProxyDiscoveryClientAfterShutdown(t *testing.T) {
	e := newEnv(t, nil, service)
	replicaSet(t, e.api, "5d9f7c")
	n0, ip0 := pod(t, e.api, "5d9f7c", 0, 0, false)
	setSlice(t, e.api, ready(n0, ip0))
	opts := discovery.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	c := discovery.NewClient(e.dial(t, discovery.DialOptions(opts)...), opts)
	t.Cleanup(func() { c.Close() })
	w := c.Watch("web.shop.svc.cluster.local:80")
	t.Cleanup(w.Release)
	found := waitFor(t, w, "the endpoint", func(s discovery.Snapshot) bool { return s.State == discovery.Found })

	// The server stops streaming (as one replica of a rolling control
	// plane does): the proxy keeps what it knew.
	e.srv.Shutdown()
	eventually(t, "the stream to end", func() bool { return metric(t, e.reg, "destination_streams") == 0 })
	if s := w.Snapshot(); !slices.EqualFunc(s.Endpoints, found.Endpoints, discovery.Endpoint.Equal) || s.State != discovery.Found {
		t.Errorf("after the server's shutdown the proxy has %+v, want the last endpoints %+v", s, found)
	}
}
