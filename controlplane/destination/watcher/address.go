package watcher

import "net/netip"

// Listener receives the changes of one Target's endpoints. Its methods
// are called with the Watcher's lock held, from informer callbacks and
// from Subscribe: they must return at once (queue the change, never wait
// for a client), and must not call the Watcher.
//
// The first call after Subscribe is the current state: Add with every
// endpoint, NoEndpoints(true) when the target exists without endpoints,
// or NoEndpoints(false) when it does not exist. After that, changes:
// Add for new and changed endpoints, then Remove for gone ones.
type Listener interface {
	// Add adds endpoints, or replaces those with the same address.
	Add(set AddressSet)
	// Remove removes the endpoints with these addresses (sorted); others
	// remain. Listeners must not modify addrs.
	Remove(addrs []netip.AddrPort)
	// NoEndpoints says that no endpoint is left: exists is false when the
	// target itself does not exist (any more).
	NoEndpoints(exists bool)
}

// AddressSet is endpoints and the labels they all share. Listeners must
// not modify it: one set goes to every listener of a target.
type AddressSet struct {
	// Labels are the metric labels common to the whole target: namespace
	// and service for a service, namespace for a pod.
	Labels map[string]string
	// Addresses, sorted by Addr.
	Addresses []Address
}

// Address is one endpoint: what the translator needs to describe it to a
// proxy, and nothing else, so that two Addresses are equal (==) exactly
// when a proxy would be told the same thing about them.
type Address struct {
	Addr netip.AddrPort
	// Pod describes the pod behind the endpoint; zero for an endpoint
	// that is no pod (a selectorless service's EndpointSlice).
	Pod PodInfo
	// Opaque says the endpoint's port is in the pod's
	// config.sluice.io/opaque-ports, or the service port is in the
	// service's.
	Opaque bool
}

// PodInfo is what an Address carries about its pod.
type PodInfo struct {
	Name, Namespace string
	// ServiceAccount is the pod's service account ("default" when the
	// spec names none).
	ServiceAccount string
	// OwnerKind (lower case: deployment, statefulset, daemonset, job,
	// cronjob, replicaset, or pod for a bare pod) and OwnerName, from
	// k8s.API.GetOwnerKindAndName.
	OwnerKind, OwnerName string
	// PodTemplateHash is the pod's pod-template-hash label.
	PodTemplateHash string
	// ControlPlaneNS is the value of the pod's sluice.io/control-plane-ns
	// label: not empty when the pod is meshed.
	ControlPlaneNS string
	// IdentityMode is the pod's sluice.io/identity-mode annotation.
	IdentityMode string
	// HostNetwork is the pod's spec.hostNetwork.
	HostNetwork bool
}

// IsPod reports whether p describes a pod.
func (p PodInfo) IsPod() bool { return p.Name != "" }
