// Package cri is procri, a process container runtime: a CRI
// (k8s.io/cri-api runtime v1) RuntimeService and ImageService for the real
// kubelet that runs containers as processes of this machine.
//
// A pod sandbox is a holder process (package container) owning the pod's
// network, UTS and IPC namespaces, in the cgroup the kubelet asks for, with
// its network set up by the CNI plugins (package cni). A container is a
// program of this machine started in those namespaces with a private mount
// namespace holding every mount the kubelet passes, its output written in
// the CRI log format (package crilog) at the kubelet's log path, in its own
// cgroup (package cgroup) with the container's limits. An "image" is an
// entry of the image table, a YAML file mapping image references to
// programs (see ImageEntry).
//
// Sandboxes and containers are persisted as JSON under the state directory,
// so that a restarted procri knows them: holders and containers still
// running are adopted and watched through pidfds.
//
// procri does not implement the streaming calls (Exec, Attach,
// PortForward), checkpoints, container events or pod metrics: they answer
// codes.Unimplemented with a message saying so.
package cri

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cni"
)

// Runtime identification, as Version reports it.
const (
	// RuntimeName is the runtime's name.
	RuntimeName = "procri"
	// RuntimeVersion is the runtime's version.
	RuntimeVersion = "0.1.0"
	// criAPIVersion is the CRI API version procri serves.
	criAPIVersion = "v1"
	// kubeAPIVersion is the version string runtimes answer Version with.
	kubeAPIVersion = "0.1.0"
)

// Options configure a Server.
type Options struct {
	// StateDir holds procri's records (created when missing).
	StateDir string
	// ImagesFile is the image table (a YAML list of ImageEntry), re-read
	// when it changes; it may not exist yet.
	ImagesFile string
	// CNI sets up pod networks; nil runs host-network sandboxes only.
	CNI *cni.Network
	// Cgroups places, limits and kills the processes (required).
	Cgroups *cgroup.Manager
	// Log receives the runtime's log (nil: discarded).
	Log *slog.Logger
}

// Server is procri: a runtimeapi.RuntimeServiceServer and
// runtimeapi.ImageServiceServer.
type Server struct {
	// The embedded Unimplemented servers are required by the generated
	// code; procri implements every call itself.
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	opts   Options
	log    *slog.Logger
	images *imageTable

	// stop is closed by Close: it ends the watchers.
	stop      chan struct{}
	closeOnce sync.Once

	mu sync.Mutex
	// closed is set by Close: watchers no longer record anything.
	closed     bool
	sandboxes  map[string]*sandbox
	containers map[string]*ctr
	// pulled maps the normalized references pulled to their image ids.
	pulled map[string]string
	// cpu holds the previous CPU sample per cgroup path, for usage_nano_cores.
	cpu map[string]cgroup.Stats
}

var (
	_ runtimeapi.RuntimeServiceServer = (*Server)(nil)
	_ runtimeapi.ImageServiceServer   = (*Server)(nil)
)

// New returns a Server over opts.StateDir, loading what an earlier procri
// recorded there: its sandboxes and containers, with running holders and
// containers adopted.
func New(opts Options) (*Server, error) {
	if opts.StateDir == "" {
		return nil, errors.New("create runtime: no state directory")
	}
	if opts.ImagesFile == "" {
		return nil, errors.New("create runtime: no image table file")
	}
	if opts.Cgroups == nil {
		return nil, errors.New("create runtime: no cgroup manager")
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return nil, fmt.Errorf("create runtime: %w", err)
	}
	opts.StateDir = abs
	for _, d := range []string{abs, filepath.Join(abs, sandboxesDir), filepath.Join(abs, containersDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create state directory: %w", err)
		}
	}
	s := &Server{
		opts:       opts,
		log:        log.With("component", "procri"),
		images:     newImageTable(opts.ImagesFile),
		stop:       make(chan struct{}),
		sandboxes:  map[string]*sandbox{},
		containers: map[string]*ctr{},
		pulled:     map[string]string{},
		cpu:        map[string]cgroup.Stats{},
	}
	if err := s.load(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Register registers the runtime and image services on g.
func (s *Server) Register(g *grpc.Server) {
	runtimeapi.RegisterRuntimeServiceServer(g, s)
	runtimeapi.RegisterImageServiceServer(g, s)
}

// Close stops watching processes. Sandboxes and containers keep running:
// a new Server over the same state directory adopts them.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
	})
}

// newID returns a random 64-hex-digit id, as containerd's.
func newID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// notFound is the gRPC NotFound error the kubelet recognizes.
func notFound(kind, id string) error {
	return status.Errorf(codes.NotFound, "%s %q not found", kind, id)
}

// unimplemented is the answer of the calls procri does not implement.
func unimplemented(call, why string) error {
	return status.Errorf(codes.Unimplemented, "procri does not implement %s: %s (see test/cluster/README.md)", call, why)
}

// matchLabels reports whether labels hold every pair of selector.
func matchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// matchID reports whether id matches a filter id: empty matches all, and a
// prefix (a truncated id, as crictl shows them) matches too.
func matchID(id, filter string) bool {
	return filter == "" || len(filter) <= len(id) && id[:len(filter)] == filter
}

// Version answers the runtime's name and versions.
func (s *Server) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version:           kubeAPIVersion,
		RuntimeName:       RuntimeName,
		RuntimeVersion:    RuntimeVersion,
		RuntimeApiVersion: criAPIVersion,
	}, nil
}

// Status reports the runtime ready, and the network ready when the CNI
// network has a configuration.
func (s *Server) Status(_ context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	network := &runtimeapi.RuntimeCondition{Type: runtimeapi.NetworkReady, Status: true}
	switch {
	case s.opts.CNI == nil:
		network.Status, network.Reason, network.Message = false, "NetworkPluginNotReady", "procri runs without a CNI network: only host-network pods can run"
	default:
		if err := s.opts.CNI.Ready(); err != nil {
			network.Status, network.Reason, network.Message = false, "NetworkPluginNotReady", err.Error()
		}
	}
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			network,
		}},
		// One default handler; procri has neither recursive read-only
		// mounts nor user namespaces.
		RuntimeHandlers: []*runtimeapi.RuntimeHandler{{Name: "", Features: &runtimeapi.RuntimeHandlerFeatures{}}},
		Features:        &runtimeapi.RuntimeFeatures{SupplementalGroupsPolicy: false},
	}
	if req.GetVerbose() {
		resp.Info = map[string]string{
			"stateDir":   fmt.Sprintf("%q", s.opts.StateDir),
			"imagesFile": fmt.Sprintf("%q", s.opts.ImagesFile),
			"cgroups":    fmt.Sprintf("%q", s.opts.Cgroups.Mode()),
		}
	}
	return resp, nil
}

// RuntimeConfig tells the kubelet procri uses the cgroupfs driver.
func (s *Server) RuntimeConfig(context.Context, *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{
		Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS},
	}, nil
}

// UpdateRuntimeConfig accepts the kubelet's pod CIDR; the CNI
// configuration carries the ranges, so procri has nothing to change.
func (s *Server) UpdateRuntimeConfig(_ context.Context, req *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	s.log.Debug("runtime config update", "podCIDR", req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr())
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

// UpdatePodSandboxResources accepts the update: the kubelet resizes the
// pod cgroup itself, and procri keeps nothing per pod to change.
func (s *Server) UpdatePodSandboxResources(_ context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	if _, err := s.getSandbox(req.GetPodSandboxId()); err != nil {
		return nil, err
	}
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}

// Exec is not implemented: procri has no streaming server.
func (s *Server) Exec(context.Context, *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	return nil, unimplemented("Exec", "streaming exec (kubectl exec) needs a streaming server; exec probes and hooks use ExecSync, which procri implements")
}

// Attach is not implemented: procri has no streaming server.
func (s *Server) Attach(context.Context, *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	return nil, unimplemented("Attach", "attaching (kubectl attach, stdin, tty) needs a streaming server; use kubectl logs")
}

// PortForward is not implemented: procri has no streaming server.
func (s *Server) PortForward(context.Context, *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	return nil, unimplemented("PortForward", "port forwarding (kubectl port-forward) needs a streaming server; reach the pod IP directly, it is routable from the node")
}

// CheckpointContainer is not implemented.
func (s *Server) CheckpointContainer(context.Context, *runtimeapi.CheckpointContainerRequest) (*runtimeapi.CheckpointContainerResponse, error) {
	return nil, unimplemented("CheckpointContainer", "processes are not checkpointed")
}

// GetContainerEvents is not implemented: the kubelet's generic PLEG polls.
func (s *Server) GetContainerEvents(*runtimeapi.GetEventsRequest, grpc.ServerStreamingServer[runtimeapi.ContainerEventResponse]) error {
	return unimplemented("GetContainerEvents", "no container event stream; leave the EventedPLEG feature gate off so the kubelet polls")
}

// ListMetricDescriptors is not implemented.
func (s *Server) ListMetricDescriptors(context.Context, *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return nil, unimplemented("ListMetricDescriptors", "no pod metrics; the kubelet's stats come from ContainerStats and the cgroups")
}

// ListPodSandboxMetrics is not implemented.
func (s *Server) ListPodSandboxMetrics(context.Context, *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	return nil, unimplemented("ListPodSandboxMetrics", "no pod metrics; the kubelet's stats come from ContainerStats and the cgroups")
}

// sortedKeys returns m's keys in order, for stable listings.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
