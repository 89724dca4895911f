// Package api holds the metrics API's JSON types, the parsing and
// encoding of its query parameters, and a small Go client, for meshctl and
// the dashboard. It imports no Prometheus client: callers get plain
// structs.
//
// The API is served by sluice-controller metrics-api (port 8085):
//
//	GET /api/v1/stat        StatRequest      → StatResponse
//	GET /api/v1/edges       EdgesRequest     → EdgesResponse
//	GET /api/v1/top-routes  TopRoutesRequest → TopRoutesResponse
//
// Errors are answered with an HTTP status and an Error as JSON body: 400
// for a bad parameter (Error.Param names it), 404 for a resource that does
// not exist, 503 when Prometheus cannot be queried.
package api

import (
	"fmt"
	"strings"
)

// Paths of the API's endpoints.
const (
	StatPath      = "/api/v1/stat"
	EdgesPath     = "/api/v1/edges"
	TopRoutesPath = "/api/v1/top-routes"
)

// ResourceType is a kind of Kubernetes resource the API reports on, by
// its canonical (singular, lower-case) name.
type ResourceType string

// The resource types the API knows.
const (
	Deployment  ResourceType = "deployment"
	StatefulSet ResourceType = "statefulset"
	DaemonSet   ResourceType = "daemonset"
	Job         ResourceType = "job"
	Pod         ResourceType = "pod"
	Namespace   ResourceType = "namespace"
	// Service stats are about the traffic sent to a service (the clients'
	// outbound metrics with dst_service), as Linkerd reports them.
	Service ResourceType = "service"
)

// ResourceTypes are the known types, in the order help texts list them.
var ResourceTypes = []ResourceType{Deployment, StatefulSet, DaemonSet, Job, Pod, Namespace, Service}

// aliases maps every accepted spelling to its type.
var aliases = map[string]ResourceType{
	"deploy": Deployment, "deployment": Deployment, "deployments": Deployment,
	"sts": StatefulSet, "statefulset": StatefulSet, "statefulsets": StatefulSet,
	"ds": DaemonSet, "daemonset": DaemonSet, "daemonsets": DaemonSet,
	"job": Job, "jobs": Job,
	"po": Pod, "pod": Pod, "pods": Pod,
	"ns": Namespace, "namespace": Namespace, "namespaces": Namespace,
	"svc": Service, "service": Service, "services": Service,
}

// ParseResourceType returns the type s names: its canonical name, plural
// or kubectl's short name (deploy, sts, ds, job, po, ns, svc), in any case.
func ParseResourceType(s string) (ResourceType, error) {
	if t, ok := aliases[strings.ToLower(s)]; ok {
		return t, nil
	}
	return "", fmt.Errorf("unknown resource type %q (want one of deploy, sts, ds, job, po, ns, svc)", s)
}

// IsWorkload reports whether t is a kind that sends traffic (everything
// but Service).
func (t ResourceType) IsWorkload() bool { return t != Service && t != "" }

// Resource names one Kubernetes resource. Namespace is empty for a
// namespace (its Name is the namespace).
type Resource struct {
	Namespace string       `json:"namespace,omitempty"`
	Kind      ResourceType `json:"kind"`
	Name      string       `json:"name"`
}

// String returns "kind/name" or "namespace/kind/name".
func (r Resource) String() string {
	if r.Namespace == "" {
		return string(r.Kind) + "/" + r.Name
	}
	return r.Namespace + "/" + string(r.Kind) + "/" + r.Name
}

// Statuses of a StatRow.
const (
	// StatusOK: the resource had traffic in the window.
	StatusOK = "ok"
	// StatusNoTraffic: meshed pods, but no request and no open connection
	// in the window.
	StatusNoTraffic = "no traffic"
	// StatusNotMeshed: pods, none of them meshed, and no traffic.
	StatusNotMeshed = "not meshed"
	// StatusNoPods: no running or pending pod, and no traffic.
	StatusNoPods = "no pods"
)

// StatResponse answers GET /api/v1/stat.
type StatResponse struct {
	// Window is the time window the rates and quantiles are computed over,
	// in Go's duration syntax ("1m0s").
	Window string `json:"window"`
	// Rows holds one row per resource that exists in Kubernetes, sorted by
	// namespace and name; a resource without traffic has a row too.
	Rows []StatRow `json:"rows"`
}

// StatRow is the stats of one resource over the window. Request figures
// are about the resource's inbound traffic; with a To target about its
// outbound traffic to the target; with a From source about the traffic
// the source sent to it; for a service about the traffic sent to it.
type StatRow struct {
	Resource
	// MeshedPods of TotalPods carry the mesh's proxy. TotalPods counts the
	// resource's pods that are pending or running (for a service: the pods
	// its selector picks).
	MeshedPods int `json:"meshed_pods"`
	TotalPods  int `json:"total_pods"`
	// SuccessRate is the share of responses classified "success" (0 to
	// 1); nil when there was no response.
	SuccessRate *float64 `json:"success_rate"`
	// RequestRate is the responses per second.
	RequestRate float64 `json:"rps"`
	// LatencyP50Ms, LatencyP95Ms and LatencyP99Ms are response latency
	// quantiles in milliseconds, interpolated within the proxies' histogram
	// buckets; nil when there was no response.
	LatencyP50Ms *float64 `json:"latency_ms_p50"`
	LatencyP95Ms *float64 `json:"latency_ms_p95"`
	LatencyP99Ms *float64 `json:"latency_ms_p99"`
	// TCPConnections is the number of open TCP connections now
	// (tcp_open_connections).
	TCPConnections float64 `json:"tcp_connections"`
	// TCPReadBytesPerSec and TCPWriteBytesPerSec are the proxies' byte
	// rates on those connections.
	TCPReadBytesPerSec  float64 `json:"tcp_read_bytes_per_sec"`
	TCPWriteBytesPerSec float64 `json:"tcp_write_bytes_per_sec"`
	// Status is StatusOK, StatusNoTraffic, StatusNotMeshed or StatusNoPods.
	Status string `json:"status"`
}

// EdgesResponse answers GET /api/v1/edges.
type EdgesResponse struct {
	// Edges are sorted by source, then destination.
	Edges []Edge `json:"edges"`
}

// Edge is traffic seen from one resource to another: an outbound
// connection or request of Src's proxies whose destination is Dst.
type Edge struct {
	Src Resource `json:"src"`
	Dst Resource `json:"dst"`
	// ClientID is Src's TLS identity as Dst's proxies saw it; empty when
	// Dst's proxies saw no identity from Src's namespace.
	ClientID string `json:"client_id"`
	// ServerID is Dst's TLS identity as Src's proxies verified it.
	ServerID string `json:"server_id"`
	// Secured is true when every connection seen was mutual TLS.
	Secured bool `json:"secured"`
	// NoTLSReason says why some traffic was not mutual TLS (the proxies'
	// no_tls_reason label), when it said.
	NoTLSReason string `json:"no_tls_reason,omitempty"`
}

// TopRoutesResponse answers GET /api/v1/top-routes.
type TopRoutesResponse struct {
	// Window is as in StatResponse.
	Window string `json:"window"`
	// Routes are sorted by RequestRate, highest first, then by authority.
	Routes []Route `json:"routes"`
}

// Route is the traffic to one authority (Host or :authority): the proxies
// label requests by authority, there are no finer route labels.
type Route struct {
	Authority    string   `json:"authority"`
	RequestRate  float64  `json:"rps"`
	SuccessRate  *float64 `json:"success_rate"`
	LatencyP50Ms *float64 `json:"latency_ms_p50"`
	LatencyP95Ms *float64 `json:"latency_ms_p95"`
	LatencyP99Ms *float64 `json:"latency_ms_p99"`
}

// Error is the API's error answer, and what the Client returns for one.
// The parse functions return it (Status 400) for bad parameters.
type Error struct {
	// Status is the HTTP status code: 400, 404, 503, ...
	Status int `json:"-"`
	// Message says what went wrong.
	Message string `json:"error"`
	// Param names the query parameter at fault, if one is.
	Param string `json:"param,omitempty"`
}

// Error implements error.
func (e *Error) Error() string {
	if e.Param != "" {
		return fmt.Sprintf("%s: %s", e.Param, e.Message)
	}
	return e.Message
}
