package discovery

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
)

// DefaultWeight is the weight of an endpoint whose update says 0.
const DefaultWeight = 10000

// Endpoint is one resolved endpoint. Its Labels map is shared between
// snapshots and must not be modified.
type Endpoint struct {
	Addr     netip.AddrPort
	Weight   uint32            // 0 from the API becomes DefaultWeight
	Labels   map[string]string // the add's set-level metric_labels merged with the address's own (address wins); no "dst_" prefix
	Identity string            // TLS identity ("" if none)
	H2       bool              // protocol hint h2: the endpoint is a Sluice proxy
	Opaque   bool              // protocol hint opaque
}

// Equal reports whether e and o describe the same endpoint in every field.
func (e Endpoint) Equal(o Endpoint) bool {
	return e.Addr == o.Addr && e.Weight == o.Weight && e.Identity == o.Identity &&
		e.H2 == o.H2 && e.Opaque == o.Opaque && maps.Equal(e.Labels, o.Labels)
}

// State of a destination.
type State uint8

const (
	// Pending means no answer yet (or the server was never reached).
	Pending State = iota
	// Found means Endpoints holds the current endpoints; it may be empty
	// after removes emptied the set.
	Found
	// NoEndpoints means the destination exists but has no endpoints.
	NoEndpoints
	// NotFound means the destination does not exist (no_endpoints{exists:false}).
	NotFound
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case Pending:
		return "pending"
	case Found:
		return "found"
	case NoEndpoints:
		return "no_endpoints"
	case NotFound:
		return "not_found"
	}
	return "unknown"
}

// Snapshot is an immutable view of a destination.
type Snapshot struct {
	State     State
	Endpoints []Endpoint // sorted by Addr
	Version   uint64     // increases with every change
}

// AddrFromAPI converts an API address. ok is false when the IP is neither 4
// nor 16 bytes long or the port is 0 or above 65535. IPv4-mapped IPv6
// addresses become IPv4.
func AddrFromAPI(a *apinet.TcpAddress) (addr netip.AddrPort, ok bool) {
	ip, ok := netip.AddrFromSlice(a.GetIp())
	if !ok || a.GetPort() == 0 || a.GetPort() > 0xffff {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(a.GetPort())), true
}

// AddrToAPI converts an address for the API: 4 bytes for IPv4, 16 for IPv6.
func AddrToAPI(a netip.AddrPort) *apinet.TcpAddress {
	return &apinet.TcpAddress{Ip: a.Addr().AsSlice(), Port: uint32(a.Port())}
}

// endpointsFromAdd converts the addresses of an add. Addresses that do not
// convert are returned in bad.
func endpointsFromAdd(set *destination.WeightedAddrSet) (eps []Endpoint, bad int) {
	common := set.GetMetricLabels()
	for _, wa := range set.GetAddrs() {
		addr, ok := AddrFromAPI(wa.GetAddr())
		if !ok {
			bad++
			continue
		}
		ep := Endpoint{
			Addr:     addr,
			Weight:   wa.GetWeight(),
			Identity: wa.GetTlsIdentity().GetDnsLikeIdentity(),
			H2:       wa.GetProtocolHint().GetH2() != nil,
			Opaque:   wa.GetProtocolHint().GetOpaque() != nil,
		}
		if ep.Weight == 0 {
			ep.Weight = DefaultWeight
		}
		if n := len(common) + len(wa.GetMetricLabels()); n > 0 {
			ep.Labels = make(map[string]string, n)
			maps.Copy(ep.Labels, common)
			maps.Copy(ep.Labels, wa.GetMetricLabels())
		}
		eps = append(eps, ep)
	}
	return eps, bad
}

// sortedEndpoints returns the endpoints of m sorted by address.
func sortedEndpoints(m map[netip.AddrPort]Endpoint) []Endpoint {
	eps := slices.Collect(maps.Values(m))
	slices.SortFunc(eps, func(a, b Endpoint) int { return a.Addr.Compare(b.Addr) })
	return eps
}
