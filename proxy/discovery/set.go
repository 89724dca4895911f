package discovery

import (
	"net/netip"
	"slices"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
)

// set is the state of a destination that one stream builds from its
// updates.
type set struct {
	state State
	eps   map[netip.AddrPort]Endpoint
}

// newSet returns the empty set a stream starts from.
func newSet() *set {
	return &set{state: Pending, eps: map[netip.AddrPort]Endpoint{}}
}

// apply applies one update. It returns how many addresses were invalid and
// ignored, and whether the update was understood (an empty oneof is not).
func (s *set) apply(u *destination.Update) (bad int, ok bool) {
	switch u := u.GetUpdate().(type) {
	case *destination.Update_Add:
		eps, bad := endpointsFromAdd(u.Add)
		for _, ep := range eps {
			s.eps[ep.Addr] = ep
		}
		s.state = Found
		return bad, true
	case *destination.Update_Remove:
		for _, a := range u.Remove.GetAddrs() {
			addr, ok := AddrFromAPI(a)
			if !ok {
				bad++
				continue
			}
			delete(s.eps, addr)
		}
		// Removes that empty the set leave it Found with no endpoints:
		// the destination still exists.
		s.state = Found
		return bad, true
	case *destination.Update_NoEndpoints:
		clear(s.eps)
		s.state = NotFound
		if u.NoEndpoints.GetExists() {
			s.state = NoEndpoints
		}
		return 0, true
	}
	return 0, false
}

// same reports whether snapshot p already shows s.
func (s *set) same(p *Snapshot) bool {
	if p.State != s.state || len(p.Endpoints) != len(s.eps) {
		return false
	}
	for _, ep := range p.Endpoints {
		if cur, ok := s.eps[ep.Addr]; !ok || !cur.Equal(ep) {
			return false
		}
	}
	return true
}

// snapshot returns s as a snapshot with the given version.
func (s *set) snapshot(version uint64) *Snapshot {
	return &Snapshot{State: s.state, Endpoints: slices.Clip(sortedEndpoints(s.eps)), Version: version}
}
