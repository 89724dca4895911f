package watcher

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/sluice-mesh/sluice/controlplane/k8s"
)

// lastCall records the last NoEndpoints/Add/Remove a listener got.
type lastCall struct{ calls []string }

func (l *lastCall) Add(s AddressSet)              { l.calls = append(l.calls, "add") }
func (l *lastCall) Remove(addrs []netip.AddrPort) { l.calls = append(l.calls, "remove") }
func (l *lastCall) NoEndpoints(exists bool) {
	if exists {
		l.calls = append(l.calls, "no_endpoints{exists:true}")
	} else {
		l.calls = append(l.calls, "no_endpoints{exists:false}")
	}
}

// TestTombstones delivers deletions as an informer does when its watch
// missed them: cache.DeletedFinalStateUnknown wrapping the last state.
func TestTombstones(t *testing.T) {
	api, err := k8s.NewFakeAPI(`
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: shop}
status: {phase: Running, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.0.0.1], targetRef: {kind: Pod, name: web-a, namespace: shop}}]
`)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(api, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Not started: the test plays the informers, filling their stores and
	// calling the handlers.
	fill := func(inf cache.SharedIndexInformer, objs ...any) {
		for _, o := range objs {
			if err := inf.GetStore().Add(o); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	c := api.Client()
	svc, _ := c.CoreV1().Services("shop").Get(ctx, "web", metav1.GetOptions{})
	pod, _ := c.CoreV1().Pods("shop").Get(ctx, "web-a", metav1.GetOptions{})
	slice, _ := c.DiscoveryV1().EndpointSlices("shop").Get(ctx, "web-1", metav1.GetOptions{})
	fill(api.Service().Informer(), svc)
	fill(api.Pod().Informer(), pod)
	fill(api.EndpointSlice().Informer(), slice)

	byService, byIP := &lastCall{}, &lastCall{}
	w.Subscribe(Target{Service: ServiceID{"shop", "web"}, Port: 80}, byService)
	w.Subscribe(Target{IP: netip.MustParseAddr("10.0.0.1"), Port: 80}, byIP)

	tombstone := func(inf cache.SharedIndexInformer, obj any, h cache.ResourceEventHandler) {
		if err := inf.GetStore().Delete(obj); err != nil {
			t.Fatal(err)
		}
		key, _ := cache.MetaNamespaceKeyFunc(obj)
		h.OnDelete(cache.DeletedFinalStateUnknown{Key: key, Obj: obj})
	}
	tombstone(api.Pod().Informer(), pod, handler(w.onPod))
	tombstone(api.EndpointSlice().Informer(), slice, handler(w.onSlice))
	tombstone(api.Service().Informer(), svc, handler(w.onService))

	// The pod's deletion removes the service's endpoint (its pod is gone)
	// and the pod IP; the slice's changes nothing more; the service's
	// ends it.
	want := map[*lastCall][]string{
		byService: {"add", "no_endpoints{exists:true}", "no_endpoints{exists:false}"},
		byIP:      {"add", "no_endpoints{exists:false}"},
	}
	for l, calls := range want {
		if !slices.Equal(l.calls, calls) {
			t.Errorf("listener got %v, want %v", l.calls, calls)
		}
	}
	// Tombstones of other types are ignored.
	handler(w.onPod).OnDelete(cache.DeletedFinalStateUnknown{Key: "x", Obj: &discoveryv1.EndpointSlice{}})
	handler(w.onPod).OnDelete(&corev1.Service{})
}
