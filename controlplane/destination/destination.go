// Package destination is the destination service: the gRPC
// sluice.destination.Destination API that proxies ask to resolve a
// service authority, a cluster IP or a pod IP into weighted endpoints with
// metric labels, TLS identities and protocol hints.
//
// It has three layers, importing one way: the watcher package owns the
// informer handlers and publishes each watched target's changes (Add,
// Remove, NoEndpoints) to listeners; a translator per stream turns them
// into protobuf updates through a bounded queue, so that an informer
// callback never waits for a client (a stream whose queue overflows is
// ended with Unavailable and its client reconnects for a fresh snapshot);
// the Server validates requests and maps errors to gRPC codes.
//
// What each endpoint says (see the watcher package for which endpoints a
// target has):
//
//   - weight 10000;
//   - metric labels: on the set, namespace and (for a service) service;
//     on the address, for a pod, pod, serviceaccount, pod_template_hash
//     when the pod has one, its owner as <kind>=<name> (deployment,
//     statefulset, daemonset, job, cronjob, replicaset for a bare
//     ReplicaSet, pod for a bare pod) and control_plane_ns for a meshed
//     pod, as Linkerd's destination service does;
//   - a TLS identity, meshmeta.IdentityName(serviceaccount, namespace,
//     TrustDomain), for a pod meshed by this control plane (its
//     sluice.io/control-plane-ns label is ControlPlaneNamespace), whose
//     sluice.io/identity-mode is not "disabled" and which is not on the
//     host network (its proxy cannot receive the pod's traffic there);
//   - the protocol hint Opaque when the port is opaque (the pod's
//     config.sluice.io/opaque-ports lists the endpoint's port, or the
//     service's lists the service port): the client must not speak HTTP
//     on its own terms to it; else H2 for a meshed pod (any control
//     plane) not on the host network; else none.
package destination

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/controlplane/destination/watcher"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// Resources returns the resources Config.API must be built with:
// Services, EndpointSlices, Pods, ReplicaSets and Jobs.
func Resources() []k8s.Resource { return watcher.Resources() }

// Defaults of Config.
const (
	DefaultClusterDomain = "cluster.local"
	DefaultQueueCapacity = 100
)

// Config of a Server.
type Config struct {
	// API is the informer wrapper, built with (at least) Resources() and
	// not started yet: New adds its handlers. Streams are refused with
	// Unavailable until it has synced.
	API *k8s.API
	// ClusterDomain completes and recognizes service names; ""
	// means DefaultClusterDomain.
	ClusterDomain string
	// TrustDomain ends identity names; "" means meshmeta.DefaultTrustDomain.
	TrustDomain string
	// ControlPlaneNamespace is the namespace of this control plane: pods
	// whose sluice.io/control-plane-ns label names it get identities. ""
	// means meshmeta.DefaultNamespace.
	ControlPlaneNamespace string
	// QueueCapacity is how many updates may wait for one stream's client;
	// beyond that the stream is ended. 0 means DefaultQueueCapacity.
	QueueCapacity int
	// Logger receives stream and watch events; nil discards them.
	Logger *slog.Logger
	// Registerer, when not nil, gets the service's metrics:
	// destination_streams, destination_updates_sent_total
	// (by kind: add, remove, no_endpoints),
	// destination_queue_overflows_total and
	// destination_watched_targets.
	Registerer prometheus.Registerer
}

// withDefaults fills the defaults and validates c.
func (c Config) withDefaults() (Config, error) {
	if c.API == nil {
		return c, errors.New("no Kubernetes API")
	}
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	c.ClusterDomain = strings.ToLower(strings.TrimSuffix(c.ClusterDomain, "."))
	if c.TrustDomain == "" {
		c.TrustDomain = meshmeta.DefaultTrustDomain
	}
	if c.ControlPlaneNamespace == "" {
		c.ControlPlaneNamespace = meshmeta.DefaultNamespace
	}
	if c.QueueCapacity == 0 {
		c.QueueCapacity = DefaultQueueCapacity
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	// A probe path checks the cluster domain the way requests will use it.
	if _, err := watcher.ParsePath("probe.default.svc."+c.ClusterDomain+":80", "", c.ClusterDomain); err != nil {
		return c, fmt.Errorf("cluster domain %q is not a DNS name", c.ClusterDomain)
	}
	if c.QueueCapacity < 0 {
		return c, fmt.Errorf("queue capacity %d is negative", c.QueueCapacity)
	}
	return c, nil
}
