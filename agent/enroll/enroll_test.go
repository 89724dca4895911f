package enroll

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
)

func TestConfigRoundTripsThroughTheMapLayout(t *testing.T) {
	cfg := api.PodConfig{
		ProxyUID: 2102, OutboundPort: 4140, InboundPort: 4143, DisableRedirect: true,
		SkipInboundPorts:  []api.PortRange{{Lo: 4190, Hi: 4191}, {Lo: 22, Hi: 22}},
		SkipOutboundPorts: []api.PortRange{{Lo: 5432, Hi: 5432}, {Lo: 9000, Hi: 9100}},
		SkipSubnets:       []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00:1::/48")},
	}
	pc := toBPF(cfg, 7)
	if pc.Slot != 7 || pc.N_skipOut != 2 || pc.N_skipSubnets != 2 || pc.Flags != 1 {
		t.Fatalf("toBPF: %+v", pc)
	}
	// The kernel compares addresses as the bytes of the packet: 10.96.0.0
	// must read as 0x0a,0x60,0,0 in memory.
	k := ipKey(netip.MustParseAddr("10.96.0.0"))
	if pc.SkipSubnets[0].Addr != k.Addr || pc.SkipSubnets[0].PrefixLen != 12 || pc.SkipSubnets[0].Family != 2 {
		t.Errorf("subnet 0: %+v", pc.SkipSubnets[0])
	}
	if got := fromBPF(pc); !reflect.DeepEqual(got, cfg) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, cfg)
	}
}

func TestIPKeyIsNetworkByteOrder(t *testing.T) {
	k := ipKey(netip.MustParseAddr("1.2.3.4"))
	b := [4]byte{byte(k.Addr[0]), byte(k.Addr[0] >> 8), byte(k.Addr[0] >> 16), byte(k.Addr[0] >> 24)}
	if b != [4]byte{1, 2, 3, 4} || k.Family != 2 {
		t.Errorf("ipKey(1.2.3.4) = %+v (bytes %v)", k, b)
	}
	k6 := ipKey(netip.MustParseAddr("fd5c::1"))
	if k6.Family != 10 || byte(k6.Addr[0]) != 0xfd || byte(k6.Addr[3]>>24) != 1 {
		t.Errorf("ipKey(fd5c::1) = %+v", k6)
	}
}
