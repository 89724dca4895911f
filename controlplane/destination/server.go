package destination

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
	"github.com/sluice-mesh/sluice/controlplane/destination/watcher"
)

// Server implements the Destination gRPC service. Register it on a
// grpc.Server with destination.RegisterDestinationServer.
type Server struct {
	destination.UnimplementedDestinationServer

	cfg      Config
	log      *slog.Logger
	watcher  *watcher.Watcher
	m        *metrics
	stopping chan struct{}
	stopOnce sync.Once
}

var _ destination.DestinationServer = (*Server)(nil)

// New returns a Server for cfg. It adds its handlers to cfg.API's
// informers, which the caller then starts and syncs (k8s.API Start and
// Sync): until they have synced, Get answers Unavailable.
func New(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("make destination server: %w", err)
	}
	log := cfg.Logger.With("component", "destination")
	w, err := watcher.New(cfg.API, cfg.Logger)
	if err != nil {
		return nil, err
	}
	m := newMetrics(func() float64 { return float64(w.Watched()) })
	if cfg.Registerer != nil {
		if err := m.register(cfg.Registerer); err != nil {
			return nil, err
		}
	}
	return &Server{cfg: cfg, log: log, watcher: w, m: m, stopping: make(chan struct{})}, nil
}

// contextToken is GetDestination.context_token.
type contextToken struct {
	NS       string `json:"ns"`
	NodeName string `json:"nodeName"`
}

// Get implements destination.DestinationServer: it streams the endpoints
// of req's path until the client goes away. Errors: InvalidArgument for a
// scheme other than "k8s" (or empty), a context token that is not JSON,
// or a path ParsePath rejects; Unavailable before the informers have
// synced, when the server shuts down (Shutdown) and when the stream's
// queue overflowed because its client read too slowly. In each
// Unavailable case the client should reconnect.
func (s *Server) Get(req *destination.GetDestination, stream grpc.ServerStreamingServer[destination.Update]) error {
	if sc := req.GetScheme(); sc != "k8s" && sc != "" {
		return status.Errorf(codes.InvalidArgument, "unsupported scheme %q: only \"k8s\" is served", sc)
	}
	var tok contextToken
	if t := req.GetContextToken(); t != "" {
		if err := json.Unmarshal([]byte(t), &tok); err != nil {
			return status.Errorf(codes.InvalidArgument, "context token %q is not JSON {\"ns\": ..., \"nodeName\": ...}: %v", t, err)
		}
	}
	target, err := watcher.ParsePath(req.GetPath(), tok.NS, s.cfg.ClusterDomain)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	select {
	case <-s.stopping:
		return status.Error(codes.Unavailable, "the destination service is shutting down")
	default:
	}
	if !s.cfg.API.HasSynced() {
		return status.Error(codes.Unavailable, "the destination service is starting: its Kubernetes caches are not synced yet")
	}

	log := s.log.With("path", req.GetPath(), "target", target.String(), "node", tok.NodeName)
	log.Debug("stream opened")
	s.m.streams.Inc()
	defer s.m.streams.Dec()

	t := newTranslator(identityConfig{trustDomain: s.cfg.TrustDomain, controlPlaneNS: s.cfg.ControlPlaneNamespace}, s.m, s.cfg.QueueCapacity)
	s.watcher.Subscribe(target, t)
	defer s.watcher.Unsubscribe(target, t)

	// The translator sends from its own goroutine, so that this one can
	// end the stream while a send waits for a slow client: returning
	// cancels the stream, which ends that send.
	done := make(chan struct{})
	defer close(done)
	sendErr := make(chan error, 1)
	go func() { sendErr <- t.run(stream.Send, done) }()

	ctx := stream.Context()
	select {
	case <-ctx.Done():
		log.Debug("stream closed by the client")
		return status.FromContextError(ctx.Err()).Err()
	case err := <-sendErr:
		if errors.Is(err, errOverflow) {
			return s.overflowed(log)
		}
		log.Debug("stream failed", "error", err)
		return err
	case <-t.overflow:
		return s.overflowed(log)
	case <-s.stopping:
		return status.Error(codes.Unavailable, "the destination service is shutting down")
	}
}

// overflowed ends a stream whose queue overflowed.
func (s *Server) overflowed(log *slog.Logger) error {
	log.Warn("ended a stream whose client read too slowly", "queue_capacity", s.cfg.QueueCapacity)
	return status.Errorf(codes.Unavailable, "update queue overflowed (more than %d updates waited for this client): reconnect for a fresh snapshot", s.cfg.QueueCapacity)
}

// Shutdown ends every open stream with Unavailable, so that proxies
// reconnect (to another replica) and a graceful stop of the gRPC server
// need not wait for streams that never end on their own. Later streams
// are refused the same way.
func (s *Server) Shutdown() {
	s.stopOnce.Do(func() { close(s.stopping) })
}
