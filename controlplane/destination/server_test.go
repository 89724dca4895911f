package destination_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pb "github.com/sluice-mesh/sluice/controlplane/api/destination"
	"github.com/sluice-mesh/sluice/controlplane/destination"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
)

func TestGetRejectsBadRequests(t *testing.T) {
	e := newEnv(t, nil, service)
	tests := []struct {
		name string
		req  *pb.GetDestination
		msg  []string
	}{
		{"scheme", &pb.GetDestination{Scheme: "http", Path: "web.shop.svc.cluster.local:80"}, []string{`scheme "http"`}},
		{"empty path", &pb.GetDestination{Scheme: "k8s"}, []string{"empty path"}},
		{"name outside the cluster", &pb.GetDestination{Scheme: "k8s", Path: "api.example.com:443"}, []string{"api.example.com", "cluster domain"}},
		{"port 0", &pb.GetDestination{Scheme: "k8s", Path: "web.shop.svc.cluster.local:0"}, []string{"port"}},
		{"port beyond 65535", &pb.GetDestination{Scheme: "k8s", Path: "10.1.2.3:70000"}, []string{"port"}},
		{"not a name", &pb.GetDestination{Scheme: "k8s", Path: "web_1.shop:80"}, []string{"not a DNS name"}},
		{"short name without a namespace", &pb.GetDestination{Scheme: "k8s", Path: "web:80"}, []string{"namespace", "context token"}},
		{"context token not JSON", &pb.GetDestination{Scheme: "k8s", Path: "web:80", ContextToken: "ns=shop"}, []string{"context token", "JSON"}},
		{"huge path", &pb.GetDestination{Scheme: "k8s", Path: strings.Repeat("a.", 5000) + "svc:80"}, []string{"not a DNS name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := e.dc.Get(bg, tt.req)
			if err == nil {
				_, err = st.Recv()
			}
			if status.Code(err) != codes.InvalidArgument || !contains(status.Convert(err).Message(), tt.msg...) {
				t.Errorf("Get = %v, want InvalidArgument mentioning %q", err, tt.msg)
			}
		})
	}
	// The server goes on serving.
	if u := get(t, e.dc, "web.shop.svc.cluster.local:80", "").next(t, "an answer after bad requests"); u.GetNoEndpoints() == nil {
		t.Errorf("after bad requests: %v", u)
	}
}

func TestNonexistentServiceAnswersAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	// Nothing changes in the cluster before the answer: it comes from the
	// caches as they are.
	s := get(t, e.dc, "api.shop.svc.cluster.local:8080", "")
	if u := s.next(t, "the first update"); describe(u) != "no_endpoints{exists:false}" {
		t.Fatalf("first update %v, want no_endpoints{exists:false}", describe(u))
	}
	// The stream stays open and reports the service once it exists.
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.30", Ports: []corev1.ServicePort{{Port: 8080}}},
	}
	if _, err := e.api.Client().CoreV1().Services("shop").Create(bg, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if u := s.next(t, "the created service"); describe(u) != "no_endpoints{exists:true}" {
		t.Errorf("after the service is created: %v, want no_endpoints{exists:true}", describe(u))
	}
	// Unknown IPs too.
	if u := get(t, e.dc, "10.200.0.1:80", "").next(t, "the first update"); describe(u) != "no_endpoints{exists:false}" {
		t.Errorf("unknown IP: %v, want no_endpoints{exists:false}", describe(u))
	}
}

func TestGetBeforeSyncIsUnavailable(t *testing.T) {
	api, err := k8s.NewFakeAPI(service)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := destination.New(destination.Config{API: api})
	if err != nil {
		t.Fatal(err)
	}
	e := serve(t, api, srv, nil)
	err = get(t, e.dc, "web.shop.svc.cluster.local:80", "").end(t)
	if status.Code(err) != codes.Unavailable || !contains(err.Error(), "not synced") {
		t.Errorf("Get before the caches synced = %v, want Unavailable", err)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	api, err := k8s.NewFakeAPI()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := k8s.NewFakeClientset()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  destination.Config
		err  string
	}{
		{"no API", destination.Config{}, "no Kubernetes API"},
		{"API without EndpointSlices", destination.Config{API: k8s.NewAPI(cs, k8s.Service, k8s.Pod)}, "endpointslices"},
		{"bad cluster domain", destination.Config{API: api, ClusterDomain: "cluster_local"}, "cluster domain"},
		{"negative queue", destination.Config{API: api, QueueCapacity: -1}, "queue capacity"},
	}
	for _, tt := range tests {
		if _, err := destination.New(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: New = %v, want an error mentioning %q", tt.name, err, tt.err)
		}
	}
}

// view is what a client knows of a destination, built from updates as
// the proxy builds it.
type view struct {
	exists bool
	eps    map[string]*pb.WeightedAddr
	labels map[string]map[string]string // by address: set labels merged with the address's
}

func newView() *view {
	return &view{eps: map[string]*pb.WeightedAddr{}, labels: map[string]map[string]string{}}
}

func (v *view) apply(u *pb.Update) {
	switch {
	case u.GetAdd() != nil:
		v.exists = true
		for _, a := range u.GetAdd().GetAddrs() {
			k := addrString(a.GetAddr().GetIp(), a.GetAddr().GetPort())
			v.eps[k] = a
			l := maps.Clone(u.GetAdd().GetMetricLabels())
			if l == nil {
				l = map[string]string{}
			}
			maps.Copy(l, a.GetMetricLabels())
			v.labels[k] = l
		}
	case u.GetRemove() != nil:
		for _, k := range addrs(u) {
			delete(v.eps, k)
			delete(v.labels, k)
		}
	case u.GetNoEndpoints() != nil:
		v.exists = u.GetNoEndpoints().GetExists()
		clear(v.eps)
		clear(v.labels)
	}
}

// TestStreamFollowsADeployment scales a Deployment's pods 1→10, meshes
// one, rolls it to a new ReplicaSet and scales it to 0, as the
// EndpointSlice controller reports it, and checks each update a proxy's
// stream gets: only the differences, with the right labels, identities
// and hints.
func TestStreamFollowsADeployment(t *testing.T) {
	e := newEnv(t, nil, service)
	api := e.api
	replicaSet(t, api, "5d9f7c")
	name0, ip0 := pod(t, api, "5d9f7c", 0, 0, true)
	setSlice(t, api, ready(name0, ip0))

	s := get(t, e.dc, "web:80", "shop")
	v := newView()
	u := s.next(t, "the initial state")
	v.apply(u)
	if describe(u) != "add["+ip0+":8080]" {
		t.Fatalf("initial update %v, want add[%s:8080]", describe(u), ip0)
	}
	if got := u.GetAdd().GetMetricLabels(); !maps.Equal(got, map[string]string{"namespace": "shop", "service": "web"}) {
		t.Errorf("set labels %v", got)
	}
	wa := u.GetAdd().GetAddrs()[0]
	wantLabels := map[string]string{"pod": name0, "serviceaccount": "web", "deployment": "web", "pod_template_hash": "5d9f7c", "control_plane_ns": "sluice"}
	if !maps.Equal(wa.GetMetricLabels(), wantLabels) || wa.GetWeight() != 10000 ||
		wa.GetTlsIdentity().GetDnsLikeIdentity() != "web.shop.serviceaccount.identity.sluice.cluster.local" || wa.GetProtocolHint().GetH2() == nil {
		t.Errorf("endpoint %v\nwant labels %v, weight 10000, identity web.shop.serviceaccount.identity.sluice.cluster.local, h2", wa, wantLabels)
	}

	// 1 → 10: one add with the nine new endpoints. Pod 3 is not meshed.
	eps := []ep{ready(name0, ip0)}
	var ips []string
	for i := 1; i < 10; i++ {
		name, ip := pod(t, api, "5d9f7c", 0, i, i != 3)
		eps = append(eps, ready(name, ip))
		ips = append(ips, ip)
	}
	setSlice(t, api, eps...)
	u = s.next(t, "the scale-up")
	v.apply(u)
	if got, want := describe(u), fmt.Sprintf("add%v", port8080(ips...)); got != want {
		t.Fatalf("scale-up: %v, want %v", got, want)
	}
	unmeshed := v.eps["10.1.0.4:8080"]
	if unmeshed.GetTlsIdentity() != nil || unmeshed.GetProtocolHint() != nil || v.labels["10.1.0.4:8080"]["control_plane_ns"] != "" {
		t.Errorf("an unmeshed endpoint: %v", unmeshed)
	}

	// Pod 3 is meshed (relabelled): re-added, now with its identity.
	updatePod(t, api, "web-5d9f7c-3", func(p *corev1.Pod) { p.Labels["sluice.io/control-plane-ns"] = "sluice" })
	u = s.next(t, "the relabelled pod")
	v.apply(u)
	if describe(u) != "add[10.1.0.4:8080]" || u.GetAdd().GetAddrs()[0].GetTlsIdentity() == nil || u.GetAdd().GetAddrs()[0].GetProtocolHint().GetH2() == nil {
		t.Errorf("after meshing pod 3: %v, want it re-added with identity and h2", u)
	}

	// A change of a label no endpoint shows sends nothing: the next
	// update is that of the roll below.
	updatePod(t, api, "web-5d9f7c-5", func(p *corev1.Pod) { p.Labels["release"] = "canary" })

	// Roll to a new ReplicaSet: two new pods ready, the old ten
	// terminating: the new ones are added, the old ones removed.
	replicaSet(t, api, "6f8b2a")
	nA, ipA := pod(t, api, "6f8b2a", 1, 0, true)
	nB, ipB := pod(t, api, "6f8b2a", 1, 1, true)
	var rolling []ep
	for _, x := range eps {
		rolling = append(rolling, terminating(x.pod, x.ip))
	}
	setSlice(t, api, append(rolling, ready(nA, ipA), ready(nB, ipB))...)
	u = s.next(t, "the roll's add")
	v.apply(u)
	if got, want := describe(u), fmt.Sprintf("add%v", port8080(ipA, ipB)); got != want {
		t.Fatalf("roll: %v, want %v", got, want)
	}
	if h := v.labels[ipA+":8080"]["pod_template_hash"]; h != "6f8b2a" {
		t.Errorf("new pod's pod_template_hash %q", h)
	}
	u = s.next(t, "the roll's remove")
	v.apply(u)
	if got, want := describe(u), fmt.Sprintf("remove%v", port8080(append([]string{ip0}, ips...)...)); got != want {
		t.Fatalf("roll: %v, want %v", got, want)
	}

	// The new pods terminate while no other is ready: they keep serving.
	setSlice(t, api, terminating(nA, ipA), terminating(nB, ipB))
	setSlice(t, api, terminating(nA, ipA))
	u = s.next(t, "a terminating endpoint gone")
	v.apply(u)
	if got, want := describe(u), fmt.Sprintf("remove%v", port8080(ipB)); got != want {
		t.Fatalf("%v, want %v", got, want)
	}

	// Scale to 0.
	setSlice(t, api)
	u = s.next(t, "the scale-down")
	v.apply(u)
	if describe(u) != "no_endpoints{exists:true}" {
		t.Fatalf("scale to 0: %v, want no_endpoints{exists:true}", describe(u))
	}

	if n := metric(t, e.reg, "destination_streams"); n != 1 {
		t.Errorf("streams gauge %v with one stream open", n)
	}
	// Counted once sent: the count may follow the client's receipt.
	for kind, n := range map[string]float64{"add": 4, "remove": 2, "no_endpoints": 1} {
		eventually(t, fmt.Sprintf("%v %s updates counted", n, kind), func() bool {
			return metric(t, e.reg, "destination_updates_sent_total", "kind", kind) == n
		})
	}
	s.cancel()
	eventually(t, "the streams gauge back to 0", func() bool { return metric(t, e.reg, "destination_streams") == 0 })
	eventually(t, "no destination watched", func() bool { return metric(t, e.reg, "destination_watched_targets") == 0 })
}

// updatePod changes pod shop/name with f.
func updatePod(t *testing.T, api *k8s.API, name string, f func(*corev1.Pod)) {
	t.Helper()
	p, err := api.Client().CoreV1().Pods("shop").Get(bg, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f(p)
	if _, err := api.Client().CoreV1().Pods("shop").Update(bg, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestPathsOfOneService(t *testing.T) {
	e := newEnv(t, nil, service)
	replicaSet(t, e.api, "5d9f7c")
	name, ip := pod(t, e.api, "5d9f7c", 0, 0, true)
	setSlice(t, e.api, ready(name, ip))
	for _, tt := range []struct{ path, ns string }{
		{"web.shop.svc.cluster.local:80", ""},
		{"web.shop.svc.cluster.local.:80", "other"},
		{"web.shop.svc:80", ""},
		{"web.shop:80", ""},
		{"web:80", "shop"},
		{"10.96.0.10:80", ""},
	} {
		u := get(t, e.dc, tt.path, tt.ns).next(t, tt.path)
		if describe(u) != "add[10.1.0.1:8080]" {
			t.Errorf("%s (ns %q): %v, want add[10.1.0.1:8080]", tt.path, tt.ns, describe(u))
		}
	}
	// The pod's own IP, on any port.
	u := get(t, e.dc, "10.1.0.1:9999", "").next(t, "the pod IP")
	if describe(u) != "add[10.1.0.1:9999]" || u.GetAdd().GetAddrs()[0].GetTlsIdentity() == nil {
		t.Errorf("pod IP: %v", u)
	}
	if l := u.GetAdd().GetMetricLabels(); !maps.Equal(l, map[string]string{"namespace": "shop"}) {
		t.Errorf("pod IP set labels %v, want namespace only", l)
	}
}

func TestShutdownEndsStreams(t *testing.T) {
	e := newEnv(t, nil, service)
	s := get(t, e.dc, "web.shop.svc.cluster.local:80", "")
	s.next(t, "the initial state")
	e.srv.Shutdown()
	if err := s.end(t); status.Code(err) != codes.Unavailable || !contains(err.Error(), "shutting down") {
		t.Errorf("stream after Shutdown ended with %v, want Unavailable", err)
	}
	if err := get(t, e.dc, "web.shop.svc.cluster.local:80", "").end(t); status.Code(err) != codes.Unavailable {
		t.Errorf("Get after Shutdown = %v, want Unavailable", err)
	}
}

// TestSlowClientIsCutOff has one client that never reads while a
// service's endpoints change with large updates: its stream's queue
// overflows and the stream ends with Unavailable; a second client of the
// same service gets every update all along.
func TestSlowClientIsCutOff(t *testing.T) {
	e := newEnv(t, func(c *destination.Config) { c.QueueCapacity = 2 }, service)
	// A fixed 64 KiB flow-control window: the server's sends block once
	// that much waits unread.
	slowConn := e.dial(t, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	slow := pb.NewDestinationClient(slowConn)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	slowStream, err := slow.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: "web.shop.svc.cluster.local:80"})
	if err != nil {
		t.Fatal(err)
	}
	fast := get(t, e.dc, "web.shop.svc.cluster.local:80", "")
	fv := newView()
	fv.apply(fast.next(t, "the initial state"))
	eventually(t, "both streams open", func() bool { return metric(t, e.reg, "destination_streams") == 2 })

	// Each step replaces 2000 selectorless endpoints with 2000 others.
	const n = 2000
	for step := range 8 {
		s, err := e.api.Client().DiscoveryV1().EndpointSlices("shop").Get(bg, "web-abcde", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Endpoints = make([]discoveryv1.Endpoint, n)
		for i := range n {
			s.Endpoints[i] = discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 2+step%2, i/250, i%250+1)}}
		}
		if _, err := e.api.Client().DiscoveryV1().EndpointSlices("shop").Update(bg, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The reading client sees each step.
		u := fast.next(t, fmt.Sprintf("step %d's add", step))
		fv.apply(u)
		if len(u.GetAdd().GetAddrs()) != n {
			t.Fatalf("step %d: an update of %d addresses, want an add of %d", step, len(addrs(u)), n)
		}
		if step > 0 {
			fv.apply(fast.next(t, fmt.Sprintf("step %d's remove", step)))
		}
		if len(fv.eps) != n {
			t.Fatalf("step %d: the reading client has %d endpoints, want %d", step, len(fv.eps), n)
		}
	}
	eventually(t, "the slow stream's queue to overflow", func() bool {
		return metric(t, e.reg, "destination_queue_overflows_total") == 1
	})
	// The slow client finds, after what was already sent, the end.
	var end error
	for end == nil {
		_, end = slowStream.Recv()
	}
	if status.Code(end) != codes.Unavailable || !contains(end.Error(), "overflowed") {
		t.Errorf("slow stream ended with %v, want Unavailable naming the overflow", end)
	}
	if n := metric(t, e.reg, "destination_queue_overflows_total"); n != 1 {
		t.Errorf("overflows %v, want 1", n)
	}
}
