package watcher_test

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

const small = `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, namespace: shop, labels: {app: web}}
status: {phase: Running, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, namespace: shop, labels: {app: web}}
status: {phase: Running, podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-c, namespace: shop, labels: {app: web}}
status: {phase: Running, podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: web-a, namespace: shop}
`

var ctx = context.Background()

// endpoint returns a slice endpoint for pod at ip.
func endpoint(pod, ip string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod},
	}
}

// setEndpoints replaces the endpoints of slice shop/name.
func setEndpoints(t *testing.T, c kubernetes.Interface, name string, eps ...discoveryv1.Endpoint) {
	t.Helper()
	s, err := c.DiscoveryV1().EndpointSlices("shop").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints = eps
	if _, err := c.DiscoveryV1().EndpointSlices("shop").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// updatePod changes pod shop/name with f.
func updatePod(t *testing.T, c kubernetes.Interface, name string, f func(*corev1.Pod)) {
	t.Helper()
	p, err := c.CoreV1().Pods("shop").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f(p)
	if _, err := c.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// expect reads the next event and checks it is want (an event's String).
func expect(t *testing.T, r *recorder, step, want string) event {
	t.Helper()
	e := r.next(t, step)
	if e.String() != want {
		t.Fatalf("%s: got %v, want %s", step, e, want)
	}
	return e
}

func TestUpdatesAreDifferences(t *testing.T) {
	w, api := start(t, small)
	c := api.Client()
	r := subscribe(t, w, svc("shop", "web", 80))
	labels := "map[namespace:shop service:web]"
	expect(t, r, "initial state", "add[10.0.0.1:8080] "+labels)

	setEndpoints(t, c, "web-1", endpoint("web-a", "10.0.0.1", true), endpoint("web-b", "10.0.0.2", true))
	expect(t, r, "a second endpoint", "add[10.0.0.2:8080] "+labels)

	setEndpoints(t, c, "web-1", endpoint("web-a", "10.0.0.1", true), endpoint("web-b", "10.0.0.2", false))
	expect(t, r, "an endpoint not ready", "remove[10.0.0.2:8080]")

	updatePod(t, c, "web-a", func(p *corev1.Pod) { p.Labels[meshmeta.LabelControlPlaneNS] = "sluice" })
	e := expect(t, r, "a pod meshed", "add[10.0.0.1:8080] "+labels)
	if e.set.Addresses[0].Pod.ControlPlaneNS != "sluice" {
		t.Errorf("re-added endpoint %+v is not meshed", e.set.Addresses[0])
	}

	// A pod change nothing depends on sends nothing: the next update is
	// the one of the change after it.
	updatePod(t, c, "web-a", func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
		p.Labels["version"] = "v2"
	})
	setEndpoints(t, c, "web-1", endpoint("web-a", "10.0.0.1", true), endpoint("web-c", "10.0.0.3", true))
	expect(t, r, "the change after an irrelevant one", "add[10.0.0.3:8080] "+labels)

	setEndpoints(t, c, "web-1", endpoint("web-b", "10.0.0.2", true))
	expect(t, r, "every endpoint replaced: add", "add[10.0.0.2:8080] "+labels)
	expect(t, r, "every endpoint replaced: remove", "remove[10.0.0.1:8080 10.0.0.3:8080]")

	setEndpoints(t, c, "web-1")
	expect(t, r, "no endpoint left", "no_endpoints{exists:true}")

	setEndpoints(t, c, "web-1", endpoint("web-c", "10.0.0.3", true))
	expect(t, r, "back", "add[10.0.0.3:8080] "+labels)

	if err := c.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, r, "service deleted", "no_endpoints{exists:false}")

	svcObj := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}
	if _, err := c.CoreV1().Services("shop").Create(ctx, svcObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, r, "service created again", "add[10.0.0.3:8080] "+labels)
}

func TestTargetThatAppearsLater(t *testing.T) {
	w, api := start(t)
	c := api.Client()
	r := subscribe(t, w, svc("shop", "api", 8080))
	expect(t, r, "before the service exists", "no_endpoints{exists:false}")

	svcObj := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.20", Ports: []corev1.ServicePort{{Port: 8080}}},
	}
	if _, err := c.CoreV1().Services("shop").Create(ctx, svcObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, r, "service without endpoints", "no_endpoints{exists:true}")

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "shop"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.0.9.1"}}},
	}
	port := int32(8080)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "api-x", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: &port}},
		Endpoints:   []discoveryv1.Endpoint{endpoint("api-1", "10.0.9.1", true)},
	}
	// The slice first: its endpoint waits for its pod.
	if _, err := c.DiscoveryV1().EndpointSlices("shop").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e := expect(t, r, "endpoint once its pod is cached", "add[10.0.9.1:8080] map[namespace:shop service:api]")
	if e.set.Addresses[0].Pod.Name != "api-1" {
		t.Errorf("endpoint %+v lacks its pod", e.set.Addresses[0])
	}
}

func TestPodIPTarget(t *testing.T) {
	w, api := start(t, small)
	c := api.Client()
	r := subscribe(t, w, ip("10.0.7.7", 9000))
	expect(t, r, "no pod has the IP", "no_endpoints{exists:false}")

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: "shop"},
		Status:     corev1.PodStatus{Phase: corev1.PodPending},
	}
	if _, err := c.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	updatePod(t, c, "late", func(p *corev1.Pod) {
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.7.7"}}
	})
	expect(t, r, "a pod got the IP", "add[10.0.7.7:9000] map[namespace:shop]")

	updatePod(t, c, "late", func(p *corev1.Pod) { p.Spec.ServiceAccountName = "batch" })
	e := expect(t, r, "the pod changed", "add[10.0.7.7:9000] map[namespace:shop]")
	if sa := e.set.Addresses[0].Pod.ServiceAccount; sa != "batch" {
		t.Errorf("service account %q after the change, want batch", sa)
	}

	updatePod(t, c, "late", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	expect(t, r, "the pod finished", "no_endpoints{exists:false}")
}

func TestListenersShareAWatch(t *testing.T) {
	w, api := start(t, small)
	target := svc("shop", "web", 80)
	r1 := subscribe(t, w, target)
	r2 := newRecorder()
	w.Subscribe(target, r2)
	for i, r := range []*recorder{r1, r2} {
		if e := r.next(t, "initial state"); e.kind != "add" {
			t.Errorf("listener %d: initial %v", i+1, e)
		}
	}
	if n := w.Watched(); n != 1 {
		t.Errorf("Watched = %d with two listeners of one target, want 1", n)
	}
	w.Unsubscribe(target, r2)
	setEndpoints(t, api.Client(), "web-1", endpoint("web-b", "10.0.0.2", true))
	expect(t, r1, "change after the other left", "add[10.0.0.2:8080] map[namespace:shop service:web]")
	expect(t, r1, "change after the other left", "remove[10.0.0.1:8080]")
	if len(r2.ch) != 0 {
		t.Errorf("an unsubscribed listener got %v", <-r2.ch)
	}
	w.Unsubscribe(target, r1)
	if n := w.Watched(); n != 0 {
		t.Errorf("Watched = %d with no listener, want 0", n)
	}
	// Unsubscribing twice is harmless.
	w.Unsubscribe(target, r1)
}
