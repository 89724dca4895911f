package watcher_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/controlplane/destination/watcher"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
)

// hang bounds waits that should end far sooner; it is no assertion on time.
const hang = 20 * time.Second

// event is one Listener call.
type event struct {
	kind   string // add, remove, no_endpoints
	set    watcher.AddressSet
	addrs  []netip.AddrPort
	exists bool
}

func (e event) String() string {
	switch e.kind {
	case "add":
		var as []string
		for _, a := range e.set.Addresses {
			as = append(as, a.Addr.String())
		}
		return fmt.Sprintf("add%v %v", as, e.set.Labels)
	case "remove":
		return fmt.Sprintf("remove%v", e.addrs)
	}
	return fmt.Sprintf("no_endpoints{exists:%v}", e.exists)
}

// recorder is a Listener that records what it is told.
type recorder struct{ ch chan event }

func newRecorder() *recorder { return &recorder{ch: make(chan event, 10000)} }

func (r *recorder) Add(set watcher.AddressSet)    { r.ch <- event{kind: "add", set: set} }
func (r *recorder) Remove(addrs []netip.AddrPort) { r.ch <- event{kind: "remove", addrs: addrs} }
func (r *recorder) NoEndpoints(exists bool)       { r.ch <- event{kind: "no_endpoints", exists: exists} }
func (r *recorder) next(t *testing.T, what string) event {
	t.Helper()
	select {
	case e := <-r.ch:
		return e
	case <-time.After(hang):
		t.Fatalf("waited %v for %s", hang, what)
	}
	return event{}
}

// start returns a started, synced watcher over the manifests.
func start(t *testing.T, manifests ...string) (*watcher.Watcher, *k8s.API) {
	t.Helper()
	cs, err := k8s.NewFakeClientset(manifests...)
	if err != nil {
		t.Fatal(err)
	}
	api := k8s.NewAPI(cs, watcher.Resources()...)
	w, err := watcher.New(api, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
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
	return w, api
}

// subscribe subscribes a new recorder to target until the test ends.
func subscribe(t *testing.T, w *watcher.Watcher, target watcher.Target) *recorder {
	r := newRecorder()
	w.Subscribe(target, r)
	t.Cleanup(func() { w.Unsubscribe(target, r) })
	return r
}

// addrsOf returns the addresses of an add, as strings.
func addrsOf(e event) []string {
	var s []string
	for _, a := range e.set.Addresses {
		s = append(s, a.Addr.String())
	}
	return s
}

// The cluster the resolution tests run against.
const cluster = `
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-7d4b9
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: d1, controller: true}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9-a
  namespace: shop
  labels: {app: web, pod-template-hash: 7d4b9, sluice.io/control-plane-ns: sluice}
  annotations: {config.sluice.io/opaque-ports: "9000-9100,metrics"}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9, uid: r1, controller: true}]
spec:
  serviceAccountName: web
  containers:
  - name: app
    ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9464}]
status:
  phase: Running
  podIPs: [{ip: 10.0.0.1}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9-b
  namespace: shop
  labels: {app: web, pod-template-hash: 7d4b9}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9, uid: r1, controller: true}]
status:
  phase: Running
  podIPs: [{ip: 10.0.0.2}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9-c
  namespace: shop
  labels: {app: web, pod-template-hash: 7d4b9}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9, uid: r1, controller: true}]
status:
  phase: Running
  podIPs: [{ip: 10.0.0.3}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9-d
  namespace: shop
  labels: {app: web, pod-template-hash: 7d4b9}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9, uid: r1, controller: true}]
status:
  phase: Running
  podIPs: [{ip: 10.0.0.4}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {config.sluice.io/opaque-ports: "5432"}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: db, port: 5432, targetPort: 5432}
  - {name: dns, port: 53, protocol: UDP}
---
# Pods a, b: ready; c: not ready; http is 8080 on them.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: db, port: 5432}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true, serving: true, terminating: false}
  targetRef: {kind: Pod, name: web-7d4b9-a, namespace: shop}
- addresses: [10.0.0.2]
  conditions: {}
  targetRef: {kind: Pod, name: web-7d4b9-b, namespace: shop}
- addresses: [10.0.0.3]
  conditions: {ready: false, serving: false}
  targetRef: {kind: Pod, name: web-7d4b9-c, namespace: shop}
---
# Pod d names its http port 8081: another slice.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-2
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints:
- addresses: [10.0.0.4]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-7d4b9-d}
---
# The IPv6 side of a dual-stack service is not read for an IPv4 one.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["fd00::1"]
  conditions: {ready: true}
---
# Shutting down: no endpoint is ready; one still serves while terminating.
apiVersion: v1
kind: Service
metadata: {name: draining, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: draining-1
  namespace: shop
  labels: {kubernetes.io/service-name: draining}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.1.2]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.0.1.3]
  conditions: {ready: false, serving: false, terminating: false}
---
# Ready endpoints win over serving, terminating ones.
apiVersion: v1
kind: Service
metadata: {name: rolling, namespace: shop}
spec:
  clusterIP: 10.96.0.12
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: rolling-1
  namespace: shop
  labels: {kubernetes.io/service-name: rolling}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.0.2.1]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.0.2.2]
  conditions: {ready: true, serving: true, terminating: false}
---
# The same address in two slices (while the controller moves it): ready wins.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: rolling-2
  namespace: shop
  labels: {kubernetes.io/service-name: rolling}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.0.2.1]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec:
  clusterIP: 10.96.0.13
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: shop}
spec:
  type: ExternalName
  externalName: search.example.com
  ports: [{port: 443}]
---
# A StatefulSet behind a headless service that declares 5432 → 15432.
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, targetPort: 15432}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: s1, controller: true}]
spec: {hostname: db-0, subdomain: db}
status:
  phase: Running
  podIPs: [{ip: 10.0.3.1}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db-1
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: s1, controller: true}]
spec: {hostname: db-1, subdomain: db}
status:
  phase: Running
  podIPs: [{ip: 10.0.3.2}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: shop
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 15432}]
endpoints:
- addresses: [10.0.3.1]
  hostname: db-0
  conditions: {ready: true}
  targetRef: {kind: Pod, name: db-0, namespace: shop}
- addresses: [10.0.3.2]
  hostname: db-1
  conditions: {ready: true}
  targetRef: {kind: Pod, name: db-1, namespace: shop}
---
# A selectorless service whose endpoint is no pod.
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  clusterIP: 10.96.0.14
  ports: [{port: 3306}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-1
  namespace: shop
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports: [{port: 3306}]
endpoints:
- addresses: [192.168.10.5]
---
# An endpoint whose pod the cache does not have (yet).
apiVersion: v1
kind: Service
metadata: {name: ghost, namespace: shop}
spec:
  clusterIP: 10.96.0.15
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ghost-1
  namespace: shop
  labels: {kubernetes.io/service-name: ghost}
addressType: IPv4
ports: [{port: 80}]
endpoints:
- addresses: [10.0.4.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: ghost-abc, namespace: shop}
---
# An IPv6 single-stack service.
apiVersion: v1
kind: Service
metadata: {name: six, namespace: shop}
spec:
  clusterIP: fd00:96::20
  clusterIPs: [fd00:96::20]
  ipFamilies: [IPv6]
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: six-1
  namespace: shop
  labels: {kubernetes.io/service-name: six}
addressType: IPv6
ports: [{port: 80}]
endpoints:
- addresses: ["fd00:10::1"]
---
# Host-network pods on node 192.168.1.10 and a finished pod whose IP a
# running pod reuses.
apiVersion: v1
kind: Pod
metadata: {name: node-exporter-x, namespace: monitoring}
spec:
  hostNetwork: true
  containers: [{name: exporter, ports: [{containerPort: 9100, hostPort: 9100}]}]
status:
  phase: Running
  podIPs: [{ip: 192.168.1.10}]
---
apiVersion: v1
kind: Pod
metadata:
  name: agent-y
  namespace: kube-system
  labels: {sluice.io/control-plane-ns: sluice}
  ownerReferences: [{apiVersion: apps/v1, kind: DaemonSet, name: agent, uid: ds1, controller: true}]
spec:
  hostNetwork: true
  containers: [{name: agent, ports: [{containerPort: 4191}]}]
status:
  phase: Running
  podIPs: [{ip: 192.168.1.10}]
---
apiVersion: v1
kind: Pod
metadata: {name: job-done, namespace: shop}
status:
  phase: Succeeded
  podIPs: [{ip: 10.0.5.1}]
---
apiVersion: v1
kind: Pod
metadata: {name: reuser, namespace: shop}
status:
  phase: Running
  podIPs: [{ip: 10.0.5.1}]
`

func TestResolve(t *testing.T) {
	w, _ := start(t, cluster)
	tests := []struct {
		name   string
		target watcher.Target
		// exists and want: the first update. want nil with exists: no
		// endpoints.
		exists bool
		want   []string
		labels map[string]string
	}{
		{"service port with a named targetPort resolved per slice", svc("shop", "web", 80), true,
			[]string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.4:8081"}, map[string]string{"namespace": "shop", "service": "web"}},
		{"service port with a numeric targetPort", svc("shop", "web", 5432), true,
			[]string{"10.0.0.1:5432", "10.0.0.2:5432"}, map[string]string{"namespace": "shop", "service": "web"}},
		{"port the service does not declare", svc("shop", "web", 8080), false, nil, nil},
		{"UDP port", svc("shop", "web", 53), false, nil, nil},
		{"service that does not exist", svc("shop", "nope", 80), false, nil, nil},
		{"namespace that does not exist", svc("nope", "web", 80), false, nil, nil},
		{"no ready endpoint: serving and terminating ones", svc("shop", "draining", 80), true,
			[]string{"10.0.1.1:8080"}, nil},
		{"ready endpoints win; an address ready in one slice is ready", svc("shop", "rolling", 80), true,
			[]string{"10.0.2.1:8080", "10.0.2.2:8080"}, nil},
		{"service without endpoints", svc("shop", "empty", 80), true, nil, nil},
		{"ExternalName service", svc("shop", "search", 443), false, nil, nil},
		{"headless service: pod IPs, the port asked for", svc("shop", "db", 5432), true,
			[]string{"10.0.3.1:5432", "10.0.3.2:5432"}, map[string]string{"namespace": "shop", "service": "db"}},
		{"headless service on a port it does not declare", svc("shop", "db", 9187), true,
			[]string{"10.0.3.1:9187", "10.0.3.2:9187"}, nil},
		{"headless service's pod by hostname", host("db-1", "shop", "db", 5432), true,
			[]string{"10.0.3.2:5432"}, nil},
		{"hostname no endpoint has", host("db-7", "shop", "db", 5432), true, nil, nil},
		{"hostname of a service that is not headless", host("web-0", "shop", "web", 80), false, nil, nil},
		{"selectorless service", svc("shop", "legacy", 3306), true, []string{"192.168.10.5:3306"}, nil},
		{"endpoint whose pod is not cached", svc("shop", "ghost", 80), true, nil, nil},
		{"IPv6 service", svc("shop", "six", 80), true, []string{"[fd00:10::1]:80"}, nil},
		{"cluster IP", ip("10.96.0.10", 80), true,
			[]string{"10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.4:8081"}, map[string]string{"namespace": "shop", "service": "web"}},
		{"IPv6 cluster IP", ip("fd00:96::20", 80), true, []string{"[fd00:10::1]:80"}, nil},
		{"cluster IP, port the service does not declare", ip("10.96.0.10", 81), false, nil, nil},
		{"pod IP: that pod, whatever the port", ip("10.0.0.1", 7777), true,
			[]string{"10.0.0.1:7777"}, map[string]string{"namespace": "shop"}},
		{"pod IP of a pod that is not ready", ip("10.0.0.3", 8080), true, []string{"10.0.0.3:8080"}, nil},
		{"IP of a finished pod and a running one", ip("10.0.5.1", 80), true, []string{"10.0.5.1:80"}, nil},
		{"host network: the pod with the port", ip("192.168.1.10", 9100), true,
			[]string{"192.168.1.10:9100"}, map[string]string{"namespace": "monitoring"}},
		{"host network: the other pod with the port", ip("192.168.1.10", 4191), true,
			[]string{"192.168.1.10:4191"}, map[string]string{"namespace": "kube-system"}},
		{"host network: no pod has the port", ip("192.168.1.10", 22), false, nil, nil},
		{"unknown IP", ip("10.9.9.9", 80), false, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := subscribe(t, w, tt.target).next(t, "the first update")
			switch {
			case !tt.exists || tt.want == nil:
				if e.kind != "no_endpoints" || e.exists != tt.exists {
					t.Fatalf("first update %v, want no_endpoints{exists:%v}", e, tt.exists)
				}
			case e.kind != "add":
				t.Fatalf("first update %v, want add%v", e, tt.want)
			default:
				if got := addrsOf(e); !slices.Equal(got, tt.want) {
					t.Errorf("add%v, want add%v", got, tt.want)
				}
				if tt.labels != nil && !maps.Equal(e.set.Labels, tt.labels) {
					t.Errorf("set labels %v, want %v", e.set.Labels, tt.labels)
				}
			}
		})
	}
}

func TestAddressDetails(t *testing.T) {
	w, _ := start(t, cluster)
	web1 := watcher.PodInfo{Name: "web-7d4b9-a", Namespace: "shop", ServiceAccount: "web", OwnerKind: "deployment", OwnerName: "web", PodTemplateHash: "7d4b9", ControlPlaneNS: "sluice"}
	web2 := watcher.PodInfo{Name: "web-7d4b9-b", Namespace: "shop", ServiceAccount: "default", OwnerKind: "deployment", OwnerName: "web", PodTemplateHash: "7d4b9"}
	tests := []struct {
		name   string
		target watcher.Target
		want   []watcher.Address
	}{
		{"pods' facts; the service's opaque port", svc("shop", "web", 5432), []watcher.Address{
			{Addr: netip.MustParseAddrPort("10.0.0.1:5432"), Pod: web1, Opaque: true},
			{Addr: netip.MustParseAddrPort("10.0.0.2:5432"), Pod: web2, Opaque: true},
		}},
		{"the pod's opaque ports: a range", ip("10.0.0.1", 9050), []watcher.Address{
			{Addr: netip.MustParseAddrPort("10.0.0.1:9050"), Pod: web1, Opaque: true},
		}},
		{"the pod's opaque ports: a container port's name", ip("10.0.0.1", 9464), []watcher.Address{
			{Addr: netip.MustParseAddrPort("10.0.0.1:9464"), Pod: web1, Opaque: true},
		}},
		{"a port not listed", ip("10.0.0.1", 8080), []watcher.Address{
			{Addr: netip.MustParseAddrPort("10.0.0.1:8080"), Pod: web1},
		}},
		{"statefulset", host("db-0", "shop", "db", 5432), []watcher.Address{
			{Addr: netip.MustParseAddrPort("10.0.3.1:5432"), Pod: watcher.PodInfo{Name: "db-0", Namespace: "shop", ServiceAccount: "default", OwnerKind: "statefulset", OwnerName: "db"}},
		}},
		{"daemonset on the host network", ip("192.168.1.10", 4191), []watcher.Address{
			{Addr: netip.MustParseAddrPort("192.168.1.10:4191"), Pod: watcher.PodInfo{Name: "agent-y", Namespace: "kube-system", ServiceAccount: "default", OwnerKind: "daemonset", OwnerName: "agent", ControlPlaneNS: "sluice", HostNetwork: true}},
		}},
		{"bare pod", ip("10.0.5.1", 80), []watcher.Address{
			{Addr: netip.MustParseAddrPort("10.0.5.1:80"), Pod: watcher.PodInfo{Name: "reuser", Namespace: "shop", ServiceAccount: "default", OwnerKind: "pod", OwnerName: "reuser"}},
		}},
		{"no pod", svc("shop", "legacy", 3306), []watcher.Address{
			{Addr: netip.MustParseAddrPort("192.168.10.5:3306")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := subscribe(t, w, tt.target).next(t, "the first update")
			if e.kind != "add" || !slices.Equal(e.set.Addresses, tt.want) {
				t.Errorf("got %v %+v\nwant add %+v", e, e.set.Addresses, tt.want)
			}
		})
	}
}

func TestNewNeedsResources(t *testing.T) {
	cs, err := k8s.NewFakeClientset()
	if err != nil {
		t.Fatal(err)
	}
	_, err = watcher.New(k8s.NewAPI(cs, k8s.Service, k8s.Pod), nil)
	if err == nil || !strings.Contains(err.Error(), "endpointslices") {
		t.Errorf("New without EndpointSlice = %v, want an error naming endpointslices", err)
	}
}
