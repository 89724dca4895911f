package destination

import (
	"errors"
	"net/netip"
	"sync/atomic"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	"github.com/sluice-mesh/sluice/controlplane/destination/watcher"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// Weight is every endpoint's weight.
const Weight = 10000

// event is one Listener call, queued.
type event struct {
	kind   string // kindAdd, kindRemove or kindNoEndpoints
	set    watcher.AddressSet
	addrs  []netip.AddrPort
	exists bool
}

// translator is one stream's Listener: it queues the watcher's events
// without ever blocking and, in run, turns them into updates for the
// stream's client. When the queue is full the stream is over: overflow
// closes, and the stream's handler ends it.
type translator struct {
	identity   identityConfig
	m          *metrics
	queue      chan event
	overflow   chan struct{} // closed when the queue overflowed
	overflowed atomic.Bool
}

// identityConfig is what the translator needs to name identities.
type identityConfig struct {
	trustDomain, controlPlaneNS string
}

var _ watcher.Listener = (*translator)(nil)

func newTranslator(id identityConfig, m *metrics, capacity int) *translator {
	return &translator{identity: id, m: m, queue: make(chan event, capacity), overflow: make(chan struct{})}
}

// Add implements watcher.Listener.
func (t *translator) Add(set watcher.AddressSet) { t.enqueue(event{kind: kindAdd, set: set}) }

// Remove implements watcher.Listener.
func (t *translator) Remove(addrs []netip.AddrPort) {
	t.enqueue(event{kind: kindRemove, addrs: addrs})
}

// NoEndpoints implements watcher.Listener.
func (t *translator) NoEndpoints(exists bool) {
	t.enqueue(event{kind: kindNoEndpoints, exists: exists})
}

// enqueue queues ev, or ends the stream when the queue is full. Events
// after an overflow are dropped: the client will get a fresh snapshot on
// its next stream.
func (t *translator) enqueue(ev event) {
	if t.overflowed.Load() {
		return
	}
	select {
	case t.queue <- ev:
	default:
		if t.overflowed.CompareAndSwap(false, true) {
			t.m.overflows.Inc()
			close(t.overflow)
		}
	}
}

// errOverflow is returned by run when the queue overflowed.
var errOverflow = errors.New("update queue overflowed")

// run sends the queued events as updates through send until done closes
// (it returns nil), the queue overflows (errOverflow) or send fails (its
// error).
func (t *translator) run(send func(*destination.Update) error, done <-chan struct{}) error {
	for {
		select {
		case <-done:
			return nil
		case <-t.overflow:
			return errOverflow
		case ev := <-t.queue:
			// A closed done or overflow may have raced with the event.
			select {
			case <-done:
				return nil
			case <-t.overflow:
				return errOverflow
			default:
			}
			if err := send(t.update(ev)); err != nil {
				return err
			}
			t.m.updates.WithLabelValues(ev.kind).Inc()
		}
	}
}

// update turns ev into an update.
func (t *translator) update(ev event) *destination.Update {
	switch ev.kind {
	case kindAdd:
		set := &destination.WeightedAddrSet{
			Addrs:        make([]*destination.WeightedAddr, len(ev.set.Addresses)),
			MetricLabels: ev.set.Labels,
		}
		for i, a := range ev.set.Addresses {
			set.Addrs[i] = t.weightedAddr(a)
		}
		return &destination.Update{Update: &destination.Update_Add{Add: set}}
	case kindRemove:
		rm := &destination.AddrSet{Addrs: make([]*apinet.TcpAddress, len(ev.addrs))}
		for i, a := range ev.addrs {
			rm.Addrs[i] = tcpAddress(a)
		}
		return &destination.Update{Update: &destination.Update_Remove{Remove: rm}}
	}
	return &destination.Update{Update: &destination.Update_NoEndpoints{NoEndpoints: &destination.NoEndpoints{Exists: ev.exists}}}
}

// tcpAddress converts an address for the API: 4 bytes for IPv4, 16 for
// IPv6.
func tcpAddress(a netip.AddrPort) *apinet.TcpAddress {
	return &apinet.TcpAddress{Ip: a.Addr().AsSlice(), Port: uint32(a.Port())}
}

// weightedAddr describes one endpoint (the package comment says how).
func (t *translator) weightedAddr(a watcher.Address) *destination.WeightedAddr {
	wa := &destination.WeightedAddr{Addr: tcpAddress(a.Addr), Weight: Weight}
	p := a.Pod
	meshed := p.IsPod() && p.ControlPlaneNS != "" && !p.HostNetwork
	if p.IsPod() {
		labels := map[string]string{
			"pod":            p.Name,
			"serviceaccount": p.ServiceAccount,
		}
		if p.OwnerKind != "" && p.OwnerName != "" {
			labels[p.OwnerKind] = p.OwnerName
		}
		if p.PodTemplateHash != "" {
			labels["pod_template_hash"] = p.PodTemplateHash
		}
		if p.ControlPlaneNS != "" {
			labels["control_plane_ns"] = p.ControlPlaneNS
		}
		wa.MetricLabels = labels
		if meshed && p.ControlPlaneNS == t.identity.controlPlaneNS && p.IdentityMode != "disabled" {
			wa.TlsIdentity = &destination.TlsIdentity{
				DnsLikeIdentity: meshmeta.IdentityName(p.ServiceAccount, p.Namespace, t.identity.trustDomain),
			}
		}
	}
	switch {
	case a.Opaque:
		wa.ProtocolHint = &destination.ProtocolHint{Protocol: &destination.ProtocolHint_Opaque_{Opaque: &destination.ProtocolHint_Opaque{}}}
	case meshed:
		wa.ProtocolHint = &destination.ProtocolHint{Protocol: &destination.ProtocolHint_H2_{H2: &destination.ProtocolHint_H2{}}}
	}
	return wa
}
