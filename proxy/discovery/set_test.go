package discovery

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
)

func tcp(s string) *apinet.TcpAddress { return AddrToAPI(netip.MustParseAddrPort(s)) }

func addU(labels map[string]string, was ...*destination.WeightedAddr) *destination.Update {
	return &destination.Update{Update: &destination.Update_Add{Add: &destination.WeightedAddrSet{Addrs: was, MetricLabels: labels}}}
}

func removeU(addrs ...string) *destination.Update {
	var as []*apinet.TcpAddress
	for _, a := range addrs {
		as = append(as, tcp(a))
	}
	return &destination.Update{Update: &destination.Update_Remove{Remove: &destination.AddrSet{Addrs: as}}}
}

func noEndpointsU(exists bool) *destination.Update {
	return &destination.Update{Update: &destination.Update_NoEndpoints{NoEndpoints: &destination.NoEndpoints{Exists: exists}}}
}

func wa(addr string, weight uint32, labels map[string]string) *destination.WeightedAddr {
	return &destination.WeightedAddr{Addr: tcp(addr), Weight: weight, MetricLabels: labels}
}

func TestSetApply(t *testing.T) {
	h2 := wa("10.0.0.3:80", 5, nil)
	h2.TlsIdentity = &destination.TlsIdentity{DnsLikeIdentity: "web.default.serviceaccount.identity.sluice.cluster.local"}
	h2.ProtocolHint = &destination.ProtocolHint{Protocol: &destination.ProtocolHint_H2_{H2: &destination.ProtocolHint_H2{}}}
	opaque := wa("[2001:db8::1]:80", 0, nil)
	opaque.ProtocolHint = &destination.ProtocolHint{Protocol: &destination.ProtocolHint_Opaque_{Opaque: &destination.ProtocolHint_Opaque{}}}
	svc := map[string]string{"namespace": "default", "service": "web"}

	tests := []struct {
		name    string
		updates []*destination.Update
		state   State
		want    []Endpoint
		bad     int
	}{
		{
			name:    "add merges set labels under address labels and defaults weight",
			updates: []*destination.Update{addU(svc, wa("10.0.0.2:80", 0, map[string]string{"pod": "web-1", "service": "override"}))},
			state:   Found,
			want: []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.2:80"), Weight: DefaultWeight,
				Labels: map[string]string{"namespace": "default", "service": "override", "pod": "web-1"}}},
		},
		{
			name:    "identity and protocol hints",
			updates: []*destination.Update{addU(nil, h2, opaque)},
			state:   Found,
			want: []Endpoint{
				{Addr: netip.MustParseAddrPort("10.0.0.3:80"), Weight: 5, Identity: "web.default.serviceaccount.identity.sluice.cluster.local", H2: true},
				{Addr: netip.MustParseAddrPort("[2001:db8::1]:80"), Weight: DefaultWeight, Opaque: true},
			},
		},
		{
			name: "add replaces an endpoint with the same address",
			updates: []*destination.Update{
				addU(nil, wa("10.0.0.2:80", 1, nil), wa("10.0.0.1:80", 1, nil)),
				addU(nil, wa("10.0.0.2:80", 7, map[string]string{"pod": "new"})),
			},
			state: Found,
			want: []Endpoint{
				{Addr: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 1},
				{Addr: netip.MustParseAddrPort("10.0.0.2:80"), Weight: 7, Labels: map[string]string{"pod": "new"}},
			},
		},
		{
			name: "remove of the last endpoints leaves Found and empty",
			updates: []*destination.Update{
				addU(nil, wa("10.0.0.2:80", 1, nil), wa("10.0.0.1:80", 1, nil)),
				removeU("10.0.0.1:80"),
				removeU("10.0.0.2:80", "10.0.0.9:80"),
			},
			state: Found,
		},
		{
			name:    "no_endpoints exists",
			updates: []*destination.Update{addU(nil, wa("10.0.0.2:80", 1, nil)), noEndpointsU(true)},
			state:   NoEndpoints,
		},
		{
			name:    "no_endpoints not exists",
			updates: []*destination.Update{addU(nil, wa("10.0.0.2:80", 1, nil)), noEndpointsU(false)},
			state:   NotFound,
		},
		{
			name:    "add after not found",
			updates: []*destination.Update{noEndpointsU(false), addU(nil, wa("10.0.0.2:80", 1, nil))},
			state:   Found,
			want:    []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.2:80"), Weight: 1}},
		},
		{
			name: "invalid addresses are counted and skipped; mapped IPv4 is unmapped",
			updates: []*destination.Update{addU(nil,
				&destination.WeightedAddr{Addr: &apinet.TcpAddress{Ip: []byte{1, 2, 3}, Port: 80}},
				&destination.WeightedAddr{Addr: &apinet.TcpAddress{Ip: []byte{10, 0, 0, 1}, Port: 0}},
				&destination.WeightedAddr{Addr: &apinet.TcpAddress{Ip: []byte{10, 0, 0, 1}, Port: 70000}},
				&destination.WeightedAddr{},
				&destination.WeightedAddr{Addr: AddrToAPI(netip.MustParseAddrPort("[::ffff:10.0.0.4]:80"))},
			)},
			state: Found,
			want:  []Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.4:80"), Weight: DefaultWeight}},
			bad:   4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSet()
			bad := 0
			for _, u := range tt.updates {
				n, ok := s.apply(u)
				if !ok {
					t.Fatalf("apply(%v) not understood", u)
				}
				bad += n
			}
			got := s.snapshot(1)
			if got.State != tt.state {
				t.Errorf("state = %v, want %v", got.State, tt.state)
			}
			if !slices.EqualFunc(got.Endpoints, tt.want, Endpoint.Equal) {
				t.Errorf("endpoints = %+v\nwant %+v", got.Endpoints, tt.want)
			}
			if bad != tt.bad {
				t.Errorf("invalid addresses = %d, want %d", bad, tt.bad)
			}
			if !s.same(got) {
				t.Errorf("a set is not the same as its own snapshot")
			}
		})
	}
}

func TestSetIgnoresEmptyUpdate(t *testing.T) {
	s := newSet()
	if _, ok := s.apply(&destination.Update{}); ok {
		t.Fatal("an update without a oneof was understood")
	}
	if s.state != Pending {
		t.Fatalf("state = %v after an empty update, want pending", s.state)
	}
}
