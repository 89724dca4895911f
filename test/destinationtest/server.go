// Package destinationtest is a real Destination gRPC server over TCP whose
// table of endpoints can change while clients stream from it: for tests of
// the proxy's discovery (Start, StartOn) and for the static destination
// server used in benchmarks (New). Changes reach open streams as the
// destination service sends them: add for new or changed endpoints, then
// remove for gone ones, no_endpoints when a path empties or disappears.
package destinationtest

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/grpcserve"
)

// Options of a Server made by New.
type Options struct {
	// Addr is the address to listen on; port 0 picks a free port.
	Addr netip.AddrPort
	// Logger receives stream starts and ends; nil discards them.
	Logger *slog.Logger
}

// Server is a Destination gRPC server whose table of paths can change while
// clients stream. Its methods are safe for concurrent use.
type Server struct {
	destination.UnimplementedDestinationServer

	log *slog.Logger
	tb  testing.TB // set by StartOn: Restart failures fail the test

	grpc *grpcserve.Server

	mu      sync.Mutex
	table   map[string]map[netip.AddrPort]discovery.Endpoint // a present, empty map: exists with no endpoints
	streams map[string]map[*stream]struct{}
	tokens  map[string]string // path → context token of its latest Get
}

var _ destination.DestinationServer = (*Server)(nil)

// New listens on o.Addr and serves until Close. Paths not in the table get
// no_endpoints{exists:false} and their streams stay open.
func New(o Options) (*Server, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:     o.Logger.With("component", "destinationtest"),
		table:   map[string]map[netip.AddrPort]discovery.Endpoint{},
		streams: map[string]map[*stream]struct{}{},
		tokens:  map[string]string{},
	}
	s.grpc = grpcserve.New("destination", o.Addr, func() *grpc.Server {
		gs := grpc.NewServer(grpc.WaitForHandlers(true)) // Stop returns once streams are gone
		destination.RegisterDestinationServer(gs, s)
		return gs
	}, s.log)
	if err := s.grpc.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// Start is StartOn(t, 127.0.0.1:0).
func Start(t testing.TB) *Server {
	t.Helper()
	return StartOn(t, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 0))
}

// StartOn starts a Server listening on addr (port 0: any free port), such as
// a netns node's bridge gateway so that proxies in pod namespaces reach it.
// The server is closed in t.Cleanup; a failure to listen fails the test.
func StartOn(t testing.TB, addr netip.AddrPort) *Server {
	t.Helper()
	s, err := New(Options{Addr: addr})
	if err != nil {
		t.Fatalf("destinationtest: %v", err)
	}
	s.tb = t
	t.Cleanup(s.Close)
	return s
}

// Addr returns the address the server listens on.
func (s *Server) Addr() netip.AddrPort { return s.grpc.Addr() }

// Stop kills the server as a crash would: the listener and every
// connection close, open streams break. The table is kept for Restart.
func (s *Server) Stop() { s.grpc.Stop() }

// Restart serves again on the same address, with the current table. It
// returns an error (and fails the test of a StartOn server) when the
// address cannot be listened on again.
func (s *Server) Restart() error {
	err := s.grpc.Start()
	if err != nil && s.tb != nil {
		s.tb.Errorf("destinationtest: restart: %v", err)
	}
	return err
}

// Close stops the server for good.
func (s *Server) Close() { s.grpc.Close() }

// Set replaces the endpoints of path. Open streams get an add with the new
// and changed endpoints and then a remove with the gone ones, or
// no_endpoints{exists:true} when eps is empty. A later endpoint with the
// same address as an earlier one replaces it.
func (s *Server) Set(path string, eps ...discovery.Endpoint) {
	next := make(map[netip.AddrPort]discovery.Endpoint, len(eps))
	for _, ep := range eps {
		next[ep.Addr] = ep
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(path, next)
}

// Delete removes path: open streams get no_endpoints{exists:false}.
func (s *Server) Delete(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(path, nil)
}

// Replace makes table the whole table: every path in it is Set, every other
// path is Deleted.
func (s *Server) Replace(table map[string][]discovery.Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for path := range s.table {
		if _, ok := table[path]; !ok {
			s.setLocked(path, nil)
		}
	}
	for _, path := range slices.Sorted(maps.Keys(table)) {
		next := make(map[netip.AddrPort]discovery.Endpoint, len(table[path]))
		for _, ep := range table[path] {
			next[ep.Addr] = ep
		}
		s.setLocked(path, next)
	}
}

// setLocked makes next (nil: the path does not exist) the endpoints of path
// and sends the difference to its streams. Callers hold s.mu.
func (s *Server) setLocked(path string, next map[netip.AddrPort]discovery.Endpoint) {
	prev, existed := s.table[path]
	if next == nil {
		delete(s.table, path)
	} else {
		s.table[path] = next
	}
	for _, u := range diff(prev, existed, next) {
		for st := range s.streams[path] {
			st.send(u)
		}
	}
}

// Streams returns how many Get streams for path are open.
func (s *Server) Streams(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams[path])
}

// ContextToken returns the context token of the latest Get for path ("" if
// none came).
func (s *Server) ContextToken(path string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[path]
}

// Get implements destination.DestinationServer.
func (s *Server) Get(req *destination.GetDestination, gs grpc.ServerStreamingServer[destination.Update]) error {
	if req.GetScheme() != "k8s" {
		return status.Errorf(codes.InvalidArgument, "unsupported scheme %q", req.GetScheme())
	}
	path := req.GetPath()
	if path == "" {
		return status.Error(codes.InvalidArgument, "empty path")
	}
	st := &stream{wake: make(chan struct{}, 1)}
	s.mu.Lock()
	eps, exists := s.table[path]
	st.send(initial(eps, exists))
	if s.streams[path] == nil {
		s.streams[path] = map[*stream]struct{}{}
	}
	s.streams[path][st] = struct{}{}
	s.tokens[path] = req.GetContextToken()
	s.mu.Unlock()
	s.log.Debug("stream opened", "path", path)
	defer func() {
		s.mu.Lock()
		delete(s.streams[path], st)
		if len(s.streams[path]) == 0 {
			delete(s.streams, path)
		}
		s.mu.Unlock()
		s.log.Debug("stream closed", "path", path)
	}()
	ctx := gs.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-st.wake:
		}
		for _, u := range st.take() {
			if err := gs.Send(u); err != nil {
				return err
			}
		}
	}
}

// stream is one open Get stream: updates queue here (without bound, so a
// table change never waits for a client) until its handler sends them.
type stream struct {
	mu    sync.Mutex
	queue []*destination.Update
	wake  chan struct{}
}

func (st *stream) send(u *destination.Update) {
	st.mu.Lock()
	st.queue = append(st.queue, u)
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *stream) take() []*destination.Update {
	st.mu.Lock()
	defer st.mu.Unlock()
	q := st.queue
	st.queue = nil
	return q
}

// initial is the first update of a stream: the whole current state.
func initial(eps map[netip.AddrPort]discovery.Endpoint, exists bool) *destination.Update {
	if !exists || len(eps) == 0 {
		return noEndpoints(exists)
	}
	return add(slices.Collect(maps.Values(eps)))
}

// diff returns the updates that take a stream from prev (existed: the path
// existed) to next (nil: the path does not exist).
func diff(prev map[netip.AddrPort]discovery.Endpoint, existed bool, next map[netip.AddrPort]discovery.Endpoint) []*destination.Update {
	switch {
	case next == nil:
		if !existed {
			return nil
		}
		return []*destination.Update{noEndpoints(false)}
	case len(next) == 0:
		if existed && len(prev) == 0 {
			return nil
		}
		return []*destination.Update{noEndpoints(true)}
	}
	var added []discovery.Endpoint
	for addr, ep := range next {
		if old, ok := prev[addr]; !ok || !old.Equal(ep) {
			added = append(added, ep)
		}
	}
	var removed []*apinet.TcpAddress
	for _, addr := range slices.SortedFunc(maps.Keys(prev), netip.AddrPort.Compare) {
		if _, ok := next[addr]; !ok {
			removed = append(removed, discovery.AddrToAPI(addr))
		}
	}
	var us []*destination.Update
	if len(added) > 0 {
		us = append(us, add(added))
	}
	if len(removed) > 0 {
		us = append(us, &destination.Update{Update: &destination.Update_Remove{Remove: &destination.AddrSet{Addrs: removed}}})
	}
	return us
}

func noEndpoints(exists bool) *destination.Update {
	return &destination.Update{Update: &destination.Update_NoEndpoints{NoEndpoints: &destination.NoEndpoints{Exists: exists}}}
}

// add returns an add of eps, sorted by address. Labels that every endpoint
// shares with the same value go in the set's metric_labels, as the
// destination service puts namespace and service there; the rest stay with
// each address.
func add(eps []discovery.Endpoint) *destination.Update {
	slices.SortFunc(eps, func(a, b discovery.Endpoint) int { return a.Addr.Compare(b.Addr) })
	common := maps.Clone(eps[0].Labels)
	for _, ep := range eps[1:] {
		maps.DeleteFunc(common, func(k, v string) bool {
			w, ok := ep.Labels[k]
			return !ok || w != v
		})
	}
	set := &destination.WeightedAddrSet{MetricLabels: common}
	for _, ep := range eps {
		wa := &destination.WeightedAddr{Addr: discovery.AddrToAPI(ep.Addr), Weight: ep.Weight}
		for k, v := range ep.Labels {
			if _, ok := common[k]; !ok {
				if wa.MetricLabels == nil {
					wa.MetricLabels = map[string]string{}
				}
				wa.MetricLabels[k] = v
			}
		}
		if ep.Identity != "" {
			wa.TlsIdentity = &destination.TlsIdentity{DnsLikeIdentity: ep.Identity}
		}
		switch {
		case ep.H2:
			wa.ProtocolHint = &destination.ProtocolHint{Protocol: &destination.ProtocolHint_H2_{H2: &destination.ProtocolHint_H2{}}}
		case ep.Opaque:
			wa.ProtocolHint = &destination.ProtocolHint{Protocol: &destination.ProtocolHint_Opaque_{Opaque: &destination.ProtocolHint_Opaque{}}}
		}
		set.Addrs = append(set.Addrs, wa)
	}
	return &destination.Update{Update: &destination.Update_Add{Add: set}}
}
