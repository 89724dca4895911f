package destination

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	"github.com/sluice-mesh/sluice/controlplane/destination/watcher"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
)

// hang bounds waits that should end far sooner; it is no assertion on time.
const hang = 20 * time.Second

var testIdentity = identityConfig{trustDomain: "cluster.local", controlPlaneNS: "sluice"}

func h2() *destination.ProtocolHint {
	return &destination.ProtocolHint{Protocol: &destination.ProtocolHint_H2_{H2: &destination.ProtocolHint_H2{}}}
}

func opaque() *destination.ProtocolHint {
	return &destination.ProtocolHint{Protocol: &destination.ProtocolHint_Opaque_{Opaque: &destination.ProtocolHint_Opaque{}}}
}

func tlsID(s string) *destination.TlsIdentity { return &destination.TlsIdentity{DnsLikeIdentity: s} }

func TestWeightedAddr(t *testing.T) {
	addr := netip.MustParseAddrPort("10.0.0.1:8080")
	apiAddr := &apinet.TcpAddress{Ip: []byte{10, 0, 0, 1}, Port: 8080}
	meshed := watcher.PodInfo{Name: "web-7d4b9-a", Namespace: "shop", ServiceAccount: "web", OwnerKind: "deployment", OwnerName: "web", PodTemplateHash: "7d4b9", ControlPlaneNS: "sluice"}
	meshedLabels := map[string]string{"pod": "web-7d4b9-a", "serviceaccount": "web", "deployment": "web", "pod_template_hash": "7d4b9", "control_plane_ns": "sluice"}
	with := func(p watcher.PodInfo, f func(*watcher.PodInfo)) watcher.PodInfo {
		f(&p)
		return p
	}
	const webID = "web.shop.serviceaccount.identity.sluice.cluster.local"
	tests := []struct {
		name string
		addr watcher.Address
		want *destination.WeightedAddr
	}{
		{"meshed by this control plane: identity and h2", watcher.Address{Addr: addr, Pod: meshed},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, MetricLabels: meshedLabels, TlsIdentity: tlsID(webID), ProtocolHint: h2()}},
		{"opaque port of a meshed pod: identity, opaque", watcher.Address{Addr: addr, Pod: meshed, Opaque: true},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, MetricLabels: meshedLabels, TlsIdentity: tlsID(webID), ProtocolHint: opaque()}},
		{"identity disabled: h2 only", watcher.Address{Addr: addr, Pod: with(meshed, func(p *watcher.PodInfo) { p.IdentityMode = "disabled" })},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, MetricLabels: meshedLabels, ProtocolHint: h2()}},
		{"identity mode default", watcher.Address{Addr: addr, Pod: with(meshed, func(p *watcher.PodInfo) { p.IdentityMode = "default" })},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, MetricLabels: meshedLabels, TlsIdentity: tlsID(webID), ProtocolHint: h2()}},
		{"meshed by another control plane: h2 only",
			watcher.Address{Addr: addr, Pod: with(meshed, func(p *watcher.PodInfo) { p.ControlPlaneNS = "other" })},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, ProtocolHint: h2(),
				MetricLabels: map[string]string{"pod": "web-7d4b9-a", "serviceaccount": "web", "deployment": "web", "pod_template_hash": "7d4b9", "control_plane_ns": "other"}}},
		{"meshed on the host network: neither", watcher.Address{Addr: addr, Pod: with(meshed, func(p *watcher.PodInfo) { p.HostNetwork = true })},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, MetricLabels: meshedLabels}},
		{"not meshed", watcher.Address{Addr: addr, Pod: watcher.PodInfo{Name: "db-0", Namespace: "shop", ServiceAccount: "default", OwnerKind: "statefulset", OwnerName: "db"}},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, MetricLabels: map[string]string{"pod": "db-0", "serviceaccount": "default", "statefulset": "db"}}},
		{"not meshed, opaque", watcher.Address{Addr: addr, Opaque: true, Pod: watcher.PodInfo{Name: "x", Namespace: "shop", ServiceAccount: "default", OwnerKind: "replicaset", OwnerName: "x-rs"}},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, ProtocolHint: opaque(), MetricLabels: map[string]string{"pod": "x", "serviceaccount": "default", "replicaset": "x-rs"}}},
		{"cronjob's pod", watcher.Address{Addr: addr, Pod: watcher.PodInfo{Name: "b-1-x", Namespace: "shop", ServiceAccount: "backup", OwnerKind: "cronjob", OwnerName: "b", ControlPlaneNS: "sluice"}},
			&destination.WeightedAddr{Addr: apiAddr, Weight: 10000, TlsIdentity: tlsID("backup.shop.serviceaccount.identity.sluice.cluster.local"), ProtocolHint: h2(),
				MetricLabels: map[string]string{"pod": "b-1-x", "serviceaccount": "backup", "cronjob": "b", "control_plane_ns": "sluice"}}},
		{"no pod", watcher.Address{Addr: netip.MustParseAddrPort("[fd00::1]:80")},
			&destination.WeightedAddr{Addr: &apinet.TcpAddress{Ip: netip.MustParseAddr("fd00::1").AsSlice(), Port: 80}, Weight: 10000}},
	}
	tr := newTranslator(testIdentity, newMetrics(func() float64 { return 0 }), 1)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tr.weightedAddr(tt.addr); !proto.Equal(got, tt.want) {
				t.Errorf("weightedAddr =\n%v\nwant\n%v", got, tt.want)
			}
		})
	}
	// The trust domain ends the identity.
	other := newTranslator(identityConfig{trustDomain: "example.org", controlPlaneNS: "sluice"}, newMetrics(func() float64 { return 0 }), 1)
	if got := other.weightedAddr(watcher.Address{Addr: addr, Pod: meshed}).GetTlsIdentity().GetDnsLikeIdentity(); got != "web.shop.serviceaccount.identity.sluice.example.org" {
		t.Errorf("identity in trust domain example.org: %q", got)
	}
}

// sent records what a translator sends; when block is not nil, every
// send says so on entered and then waits until block closes (or gets a
// value), then fails as a gone client's would.
type sent struct {
	ch      chan *destination.Update
	block   chan struct{}
	entered chan struct{}
}

func (s *sent) send(u *destination.Update) error {
	if s.block != nil {
		s.entered <- struct{}{}
		<-s.block
		return errors.New("client gone")
	}
	s.ch <- u
	return nil
}

func blocking() *sent { return &sent{block: make(chan struct{}), entered: make(chan struct{}, 100)} }

func (s *sent) next(t *testing.T) *destination.Update {
	t.Helper()
	select {
	case u := <-s.ch:
		return u
	case <-time.After(hang):
		t.Fatalf("waited %v for an update", hang)
	}
	return nil
}

func TestTranslatorSendsEventsInOrder(t *testing.T) {
	m := newMetrics(func() float64 { return 0 })
	tr := newTranslator(testIdentity, m, 10)
	s := &sent{ch: make(chan *destination.Update, 10)}
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- tr.run(s.send, done) }()

	a1 := netip.MustParseAddrPort("10.0.0.1:80")
	a2 := netip.MustParseAddrPort("10.0.0.2:80")
	tr.NoEndpoints(false)
	tr.NoEndpoints(true)
	tr.Add(watcher.AddressSet{Labels: map[string]string{"namespace": "shop", "service": "web"}, Addresses: []watcher.Address{{Addr: a1}, {Addr: a2}}})
	tr.Remove([]netip.AddrPort{a1})
	want := []*destination.Update{
		{Update: &destination.Update_NoEndpoints{NoEndpoints: &destination.NoEndpoints{Exists: false}}},
		{Update: &destination.Update_NoEndpoints{NoEndpoints: &destination.NoEndpoints{Exists: true}}},
		{Update: &destination.Update_Add{Add: &destination.WeightedAddrSet{
			MetricLabels: map[string]string{"namespace": "shop", "service": "web"},
			Addrs: []*destination.WeightedAddr{
				{Addr: &apinet.TcpAddress{Ip: []byte{10, 0, 0, 1}, Port: 80}, Weight: 10000},
				{Addr: &apinet.TcpAddress{Ip: []byte{10, 0, 0, 2}, Port: 80}, Weight: 10000},
			}}}},
		{Update: &destination.Update_Remove{Remove: &destination.AddrSet{Addrs: []*apinet.TcpAddress{{Ip: []byte{10, 0, 0, 1}, Port: 80}}}}},
	}
	for i, w := range want {
		if got := s.next(t); !proto.Equal(got, w) {
			t.Errorf("update %d = %v, want %v", i, got, w)
		}
	}
	close(done)
	if err := <-errc; err != nil {
		t.Errorf("run = %v once done, want nil", err)
	}
	for kind, n := range map[string]float64{kindAdd: 1, kindRemove: 1, kindNoEndpoints: 2} {
		if got := value(m.updates.WithLabelValues(kind)); got != n {
			t.Errorf("updates sent of kind %s = %v, want %v", kind, got, n)
		}
	}
}

func TestOverflowEndsTheStream(t *testing.T) {
	m := newMetrics(func() float64 { return 0 })
	tr := newTranslator(testIdentity, m, 2)
	s := blocking()
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 1)
	go func() { errc <- tr.run(s.send, done) }()

	// The first event is taken and its send blocks; two more fill the
	// queue, the next overflows it; every call returns at once all the
	// same.
	tr.NoEndpoints(true)
	select {
	case <-s.entered:
	case <-time.After(hang):
		t.Fatal("the first update was never sent")
	}
	for i := range 10 {
		tr.NoEndpoints(i%2 == 0)
	}
	select {
	case <-tr.overflow:
	default:
		t.Fatal("queue of 2 did not overflow with 10 updates waiting")
	}
	if n := value(m.overflows); n != 1 {
		t.Errorf("overflows = %v, want 1 (one per stream)", n)
	}
	close(s.block) // the blocked send fails
	select {
	case err := <-errc:
		if err == nil || errors.Is(err, errOverflow) {
			t.Errorf("run = %v after its send failed, want the send's error", err)
		}
	case <-time.After(hang):
		t.Fatal("run did not return after its send failed")
	}

	// A stream whose send is not blocked stops at the overflow.
	tr2 := newTranslator(testIdentity, m, 1)
	tr2.NoEndpoints(true)
	tr2.NoEndpoints(true)
	if err := tr2.run(func(*destination.Update) error { return nil }, done); !errors.Is(err, errOverflow) {
		t.Errorf("run after an overflow = %v, want errOverflow", err)
	}
}

// TestBlockedClientDoesNotBlockOthers drives a real watcher over a fake
// API: one stream's client never reads, another's does. The informer
// handlers go on, the reading stream gets every change, the other one
// overflows.
func TestBlockedClientDoesNotBlockOthers(t *testing.T) {
	api, err := k8s.NewFakeAPI(`
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 80}]
endpoints: []
`)
	if err != nil {
		t.Fatal(err)
	}
	w, err := watcher.New(api, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		api.Wait()
	}()
	api.Start(ctx)
	if err := api.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	m := newMetrics(func() float64 { return 0 })
	target := watcher.Target{Service: watcher.ServiceID{Namespace: "shop", Name: "web"}, Port: 80}
	done := make(chan struct{})
	defer close(done)

	blocked := newTranslator(testIdentity, m, 4)
	stuck := blocking()
	defer close(stuck.block)
	go blocked.run(stuck.send, done)
	w.Subscribe(target, blocked)
	defer w.Unsubscribe(target, blocked)

	reading := newTranslator(testIdentity, m, 4)
	got := &sent{ch: make(chan *destination.Update, 1)}
	go reading.run(got.send, done)
	w.Subscribe(target, reading)
	defer w.Unsubscribe(target, reading)
	if u := got.next(t); !u.GetNoEndpoints().GetExists() {
		t.Fatalf("initial update %v, want no_endpoints{exists:true}", u)
	}

	// Each step makes one update; the reader reads each before the next
	// step, the blocked client reads none.
	const steps = 20
	for i := 1; i <= steps; i++ {
		ip := fmt.Sprintf("10.0.0.%d", i)
		ready := true
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Port: ptr(int32(80))}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		}
		if _, err := api.Client().DiscoveryV1().EndpointSlices("shop").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		u := got.next(t)
		if i > 1 { // after the first add: add the new one, then remove the old
			if u.GetAdd() == nil {
				t.Fatalf("step %d: %v, want an add", i, u)
			}
			u = got.next(t)
			if u.GetRemove() == nil {
				t.Fatalf("step %d: %v, want a remove", i, u)
			}
			continue
		}
		if u.GetAdd() == nil {
			t.Fatalf("step %d: %v, want an add", i, u)
		}
	}
	select {
	case <-blocked.overflow:
	default:
		t.Error("the blocked stream did not overflow")
	}
	select {
	case <-reading.overflow:
		t.Error("the reading stream overflowed")
	default:
	}
}

func ptr[T any](v T) *T { return &v }

// value returns the value of a counter or gauge.
func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if c := d.GetCounter(); c != nil {
		return c.GetValue()
	}
	return d.GetGauge().GetValue()
}
