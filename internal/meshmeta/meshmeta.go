// Package meshmeta holds the names that Sluice's parts agree on: the labels
// and annotations of meshed pods, the proxy's container name, the control
// plane's namespace, services and ports, and the form of identity names.
// The injector writes them; the destination, tap and identity services, the
// node agent's pod watcher and meshctl read them. It imports nothing.
package meshmeta

import (
	"fmt"
	"strings"
)

// Annotations and labels users set.
const (
	// AnnotationInject on a namespace or pod asks for injection:
	// InjectEnabled or InjectDisabled (a pod's value wins over its
	// namespace's).
	AnnotationInject = "sluice.io/inject"
	InjectEnabled    = "enabled"
	InjectDisabled   = "disabled"

	// ConfigAnnotationPrefix starts every per-workload proxy setting, such
	// as config.sluice.io/skip-inbound-ports.
	ConfigAnnotationPrefix = "config.sluice.io/"

	AnnotationSkipInboundPorts  = ConfigAnnotationPrefix + "skip-inbound-ports"
	AnnotationSkipOutboundPorts = ConfigAnnotationPrefix + "skip-outbound-ports"
	AnnotationSkipSubnets       = ConfigAnnotationPrefix + "skip-subnets"
	AnnotationOpaquePorts       = ConfigAnnotationPrefix + "opaque-ports"
	AnnotationProxyLogLevel     = ConfigAnnotationPrefix + "proxy-log-level"
	// AnnotationInterceptionMode overrides the installation's mode for a
	// workload: ModeEBPF or ModeIPTables.
	AnnotationInterceptionMode = ConfigAnnotationPrefix + "interception-mode"
)

// Interception modes, as in the agent's API.
const (
	ModeEBPF     = "ebpf"
	ModeIPTables = "iptables"
)

// What the injector writes on a pod it injected.
const (
	// LabelControlPlaneNS marks a meshed pod: its value is the namespace of
	// the control plane its proxy talks to.
	LabelControlPlaneNS = "sluice.io/control-plane-ns"
	// LabelWorkloadNS is the pod's own namespace.
	LabelWorkloadNS = "sluice.io/workload-ns"
	// LabelProxyDeployment and its siblings name the pod's owner, as Linkerd
	// does (sluice.io/proxy-deployment: web).
	LabelProxyDeployment  = "sluice.io/proxy-deployment"
	LabelProxyStatefulSet = "sluice.io/proxy-statefulset"
	LabelProxyDaemonSet   = "sluice.io/proxy-daemonset"
	LabelProxyJob         = "sluice.io/proxy-job"
	LabelProxyCronJob     = "sluice.io/proxy-cronjob"
	LabelProxyReplicaSet  = "sluice.io/proxy-replicaset"
	// AnnotationProxyVersion is the injected proxy's version.
	AnnotationProxyVersion = "sluice.io/proxy-version"
	// AnnotationCreatedBy names what injected the pod: "sluice/proxy-injector
	// <version>" or "meshctl <version>".
	AnnotationCreatedBy = "sluice.io/created-by"
	// AnnotationIdentityMode is "default" (identity from the control plane)
	// or "disabled".
	AnnotationIdentityMode = "sluice.io/identity-mode"
	// AnnotationMode is the interception mode the pod was injected for
	// (ModeEBPF or ModeIPTables); the agent enrolls only ModeEBPF pods.
	AnnotationMode = "sluice.io/interception-mode"
	// AnnotationSteering is what the node agent steers for the pod: the
	// installation's defaults with the pod's config.sluice.io/skip-*
	// annotations applied, as the JSON of the agent API's PodConfig
	// ({"proxyUID":2102,"skipOutboundPorts":["25"],...}). Without it (a pod
	// injected by hand) the agent reads the config annotations over its
	// own defaults.
	AnnotationSteering = "sluice.io/steering"
)

// Containers the injector adds.
const (
	ProxyContainerName = "sluice-proxy"
	// InitContainerName is the iptables-mode init container, as linkerd-init.
	InitContainerName = "sluice-init"
)

// The control plane's defaults.
const (
	DefaultNamespace   = "sluice"
	DefaultTrustDomain = "cluster.local"
	// IdentityAudience is the audience of the service-account tokens that
	// proxies present to the identity service.
	IdentityAudience = "identity.sluice.io"
)

// The control plane's services in its namespace, and their ports.
const (
	DestinationService = "sluice-dst"
	IdentityService    = "sluice-identity"
	TapService         = "sluice-tap"
	MetricsAPIService  = "sluice-metrics-api"
	InjectorService    = "sluice-proxy-injector"
	WebService         = "sluice-web"

	DestinationPort = 8086
	IdentityPort    = 8080
	TapPort         = 8088
	MetricsAPIPort  = 8085
	InjectorPort    = 8443
	DashboardPort   = 8084
)

// Admin ports (/metrics, /ready, /live) of the control plane's services.
const (
	IdentityAdminPort    = 9990
	InjectorAdminPort    = 9995
	DestinationAdminPort = 9996
	MetricsAPIAdminPort  = 9997
	TapAdminPort         = 9998
)

// identitySuffix sits between the namespace and the trust domain.
const identitySuffix = "serviceaccount.identity.sluice"

// IdentityName returns the TLS identity of a pod running as serviceAccount
// in namespace: "<sa>.<ns>.serviceaccount.identity.sluice.<trust-domain>".
func IdentityName(serviceAccount, namespace, trustDomain string) string {
	return serviceAccount + "." + namespace + "." + identitySuffix + "." + trustDomain
}

// ParseIdentityName splits an identity name made by IdentityName. Service
// account and namespace names hold no dots, so the split is unambiguous.
func ParseIdentityName(name, trustDomain string) (serviceAccount, namespace string, err error) {
	rest, ok := strings.CutSuffix(name, "."+identitySuffix+"."+trustDomain)
	if !ok {
		return "", "", fmt.Errorf("identity %q does not end in .%s.%s", name, identitySuffix, trustDomain)
	}
	sa, ns, ok := strings.Cut(rest, ".")
	if !ok || sa == "" || ns == "" || strings.Contains(ns, ".") {
		return "", "", fmt.Errorf("identity %q is not <serviceaccount>.<namespace>.%s.%s", name, identitySuffix, trustDomain)
	}
	return sa, ns, nil
}

// ServiceAddr returns the in-cluster address of a control-plane service:
// "<service>.<namespace>.svc.<clusterDomain>:<port>".
func ServiceAddr(service, namespace, clusterDomain string, port int) string {
	return fmt.Sprintf("%s.%s.svc.%s:%d", service, namespace, clusterDomain, port)
}
