package destination_test

import (
	"fmt"
	"strings"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// benchCluster returns manifests of services × perService meshed pods
// behind their services, owned by Deployments through ReplicaSets.
func benchCluster(services, perService int) string {
	var b strings.Builder
	for s := range services {
		fmt.Fprintf(&b, `---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: svc%d-abc
  namespace: bench
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: svc%d, uid: d%d, controller: true}]
---
apiVersion: v1
kind: Service
metadata: {name: svc%d, namespace: bench}
spec: {clusterIP: 10.96.%d.%d, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc%d-1, namespace: bench, labels: {kubernetes.io/service-name: svc%d}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
`, s, s, s, s, s/250, s%250+1, s, s)
		for p := range perService {
			fmt.Fprintf(&b, "- {addresses: [10.%d.%d.%d], conditions: {ready: true}, targetRef: {kind: Pod, name: svc%d-abc-%d, namespace: bench}}\n",
				10+s/250, s%250, p+1, s, p)
		}
		for p := range perService {
			fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: svc%d-abc-%d
  namespace: bench
  labels: {pod-template-hash: abc, sluice.io/control-plane-ns: sluice}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: svc%d-abc, uid: r%d, controller: true}]
spec: {serviceAccountName: svc%d}
status: {phase: Running, podIPs: [{ip: 10.%d.%d.%d}]}
`, s, p, s, s, s, 10+s/250, s%250, p+1)
		}
	}
	return b.String()
}

// BenchmarkPropagation measures one endpoint change's way from the
// (fake) API server to a proxy's stream: informer, watcher, translator,
// gRPC over loopback, with 100 services of 50 endpoints (5 000 in all),
// each with a stream open. Each op takes one endpoint out of a service or
// puts it back and waits for the update.
func BenchmarkPropagation(b *testing.B) {
	const services, perService = 100, 50
	e := newEnv(b, nil, benchCluster(services, perService))
	streams := make([]*stream, services)
	for s := range services {
		streams[s] = get(b, e.dc, fmt.Sprintf("svc%d.bench.svc.cluster.local:80", s), "")
		if u := <-streams[s].updates; len(u.GetAdd().GetAddrs()) != perService {
			b.Fatalf("svc%d: initial %v", s, describe(u))
		}
	}
	slices := e.api.Client().DiscoveryV1().EndpointSlices("bench")
	b.ResetTimer()
	for i := range b.N {
		s := i % services
		sl, err := slices.Get(bg, fmt.Sprintf("svc%d-1", s), metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		r := (i / services) % 2
		ready := r == 1
		sl.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: &ready}
		if _, err := slices.Update(bg, sl, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		u := <-streams[s].updates
		if (u.GetRemove() == nil) == (r == 0) {
			b.Fatalf("svc%d: %v", s, describe(u))
		}
	}
}
