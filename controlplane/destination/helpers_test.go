package destination_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	pb "github.com/sluice-mesh/sluice/controlplane/api/destination"
	"github.com/sluice-mesh/sluice/controlplane/destination"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
)

// hang bounds waits that should end far sooner; it is no assertion on time.
const hang = 20 * time.Second

var bg = context.Background()

// env is a destination server on loopback TCP over a fake API.
type env struct {
	api  *k8s.API
	srv  *destination.Server
	reg  *prometheus.Registry
	addr string
	dc   pb.DestinationClient
	conn *grpc.ClientConn
}

// newEnv serves the manifests; change, when not nil, adjusts the Config.
// Everything stops in t.Cleanup.
func newEnv(t testing.TB, change func(*destination.Config), manifests ...string) *env {
	t.Helper()
	api, err := k8s.NewFakeAPI(manifests...)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := destination.Config{API: api, Registerer: reg}
	if change != nil {
		change(&cfg)
	}
	srv, err := destination.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	t.Cleanup(func() {
		cancel()
		api.Wait()
	})
	api.Start(ctx)
	sctx, scancel := context.WithTimeout(ctx, hang)
	defer scancel()
	if err := api.Sync(sctx); err != nil {
		t.Fatal(err)
	}
	return serve(t, api, srv, reg)
}

// serve serves srv on loopback TCP and connects a client to it.
func serve(t testing.TB, api *k8s.API, srv *destination.Server, reg *prometheus.Registry) *env {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	pb.RegisterDestinationServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	e := &env{api: api, srv: srv, reg: reg, addr: lis.Addr().String()}
	e.conn = e.dial(t)
	e.dc = pb.NewDestinationClient(e.conn)
	return e
}

// dial returns a new connection to the server, closed in t.Cleanup.
func (e *env) dial(t testing.TB, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// stream is a Get stream whose updates a goroutine receives.
type stream struct {
	updates chan *pb.Update
	err     chan error // the stream's final error
	cancel  context.CancelFunc
}

// get opens a Get stream for path with the context token {"ns": ns}.
func get(t testing.TB, dc pb.DestinationClient, path, ns string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(bg)
	t.Cleanup(cancel)
	tok := ""
	if ns != "" {
		tok = fmt.Sprintf(`{"ns":%q,"nodeName":"node-1"}`, ns)
	}
	st, err := dc.Get(ctx, &pb.GetDestination{Scheme: "k8s", Path: path, ContextToken: tok})
	if err != nil {
		t.Fatal(err)
	}
	s := &stream{updates: make(chan *pb.Update, 1000), err: make(chan error, 1), cancel: cancel}
	go func() {
		for {
			u, err := st.Recv()
			if err != nil {
				s.err <- err
				close(s.updates)
				return
			}
			s.updates <- u
		}
	}()
	return s
}

// next returns the next update; the stream must not end first.
func (s *stream) next(t testing.TB, what string) *pb.Update {
	t.Helper()
	select {
	case u, ok := <-s.updates:
		if !ok {
			t.Fatalf("%s: the stream ended: %v", what, <-s.err)
		}
		return u
	case <-time.After(hang):
		t.Fatalf("waited %v for %s", hang, what)
	}
	return nil
}

// end returns the stream's final error, skipping updates before it.
func (s *stream) end(t testing.TB) error {
	t.Helper()
	timeout := time.After(hang)
	for {
		select {
		case _, ok := <-s.updates:
			if !ok {
				return <-s.err
			}
		case <-timeout:
			t.Fatalf("waited %v for the stream to end", hang)
		}
	}
}

// addrs returns the addresses of an add or remove, as strings.
func addrs(u *pb.Update) []string {
	var out []string
	for _, a := range u.GetAdd().GetAddrs() {
		out = append(out, addrString(a.GetAddr().GetIp(), a.GetAddr().GetPort()))
	}
	for _, a := range u.GetRemove().GetAddrs() {
		out = append(out, addrString(a.GetIp(), a.GetPort()))
	}
	return out
}

func addrString(ip []byte, port uint32) string {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a, uint16(port)).String()
}

// describe renders an update as add[...], remove[...] or no_endpoints{...}.
func describe(u *pb.Update) string {
	switch {
	case u.GetAdd() != nil:
		return fmt.Sprintf("add%v", addrs(u))
	case u.GetRemove() != nil:
		return fmt.Sprintf("remove%v", addrs(u))
	case u.GetNoEndpoints() != nil:
		return fmt.Sprintf("no_endpoints{exists:%v}", u.GetNoEndpoints().GetExists())
	}
	return "empty update"
}

// eventually polls cond, for facts no channel announces.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", hang, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// metric returns the value of a counter or gauge of reg, by name and
// label pairs.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

// A Deployment's workload as the tests build it through the clientset.

const service = `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: []
`

// replicaSet creates the ReplicaSet web-<hash> of the Deployment web.
func replicaSet(t testing.TB, api *k8s.API, hash string) {
	t.Helper()
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{
		Name: "web-" + hash, Namespace: "shop",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "web", UID: "d1", Controller: ptr(true)}},
	}}
	if _, err := api.Client().AppsV1().ReplicaSets("shop").Create(bg, rs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ReplicaSet in the cache", func() bool {
		_, err := api.ReplicaSet().Lister().ReplicaSets("shop").Get(rs.Name)
		return err == nil
	})
}

// pod creates pod web-<hash>-<i> at 10.1.<n>.<i+1>, where n is the
// ReplicaSet's number; meshed pods carry the control plane label.
func pod(t testing.TB, api *k8s.API, hash string, n, i int, meshed bool) (name, ip string) {
	t.Helper()
	name = fmt.Sprintf("web-%s-%d", hash, i)
	ip = fmt.Sprintf("10.1.%d.%d", n, i+1)
	labels := map[string]string{"app": "web", "pod-template-hash": hash}
	if meshed {
		labels["sluice.io/control-plane-ns"] = "sluice"
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "shop", Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-" + hash, UID: "r", Controller: ptr(true)}},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers:         []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	if _, err := api.Client().CoreV1().Pods("shop").Create(bg, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// As in a cluster, where the EndpointSlice controller lists a pod
	// once it is ready, long after the pod reached every cache.
	eventually(t, "pod "+name+" in the cache", func() bool {
		_, err := api.Pod().Lister().Pods("shop").Get(name)
		return err == nil
	})
	return name, ip
}

// ep is an endpoint of the slice.
type ep struct {
	pod, ip                     string
	ready, serving, terminating bool
}

// setSlice makes eps the endpoints of the EndpointSlice web-abcde.
func setSlice(t testing.TB, api *k8s.API, eps ...ep) {
	t.Helper()
	s, err := api.Client().DiscoveryV1().EndpointSlices("shop").Get(bg, "web-abcde", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints = nil
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.serving), Terminating: ptr(e.terminating)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: e.pod},
		})
	}
	if _, err := api.Client().DiscoveryV1().EndpointSlices("shop").Update(bg, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func ready(pod, ip string) ep       { return ep{pod: pod, ip: ip, ready: true, serving: true} }
func terminating(pod, ip string) ep { return ep{pod: pod, ip: ip, serving: true, terminating: true} }

func ptr[T any](v T) *T { return &v }

// port8080 returns ip:8080 for each ip.
func port8080(ips ...string) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip + ":8080"
	}
	slices.SortFunc(out, func(a, b string) int {
		return netip.MustParseAddrPort(a).Compare(netip.MustParseAddrPort(b))
	})
	return out
}

// contains reports whether s contains every one of subs.
func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
