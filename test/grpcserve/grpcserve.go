// Package grpcserve runs a gRPC server for tests that can be killed as a
// crash would kill it and started again on the same address: the fake
// control-plane services (test/destinationtest, identitytest) use it to
// simulate outages.
package grpcserve

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"google.golang.org/grpc"
)

// Server serves the gRPC server that its build function returns, on one
// address across restarts. Its methods are safe for concurrent use.
type Server struct {
	name  string
	build func() *grpc.Server
	log   *slog.Logger

	mu      sync.Mutex
	addr    netip.AddrPort
	gs      *grpc.Server
	serving chan struct{} // closed when the current Serve returns
	closed  bool
}

// New returns a Server named name (for errors and logs) that listens on
// addr (port 0: a free port, kept across restarts) and, at each start,
// serves what build returns. It does not serve until Start.
func New(name string, addr netip.AddrPort, build func() *grpc.Server, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{name: name, build: build, log: log, addr: addr}
}

// Start listens and serves in the background; serving already, it does
// nothing. The first call fixes the port.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("serve %s: server closed", s.name)
	}
	if s.gs != nil {
		return nil
	}
	l, err := net.Listen("tcp", s.addr.String())
	if err != nil {
		return fmt.Errorf("serve %s: listen on %s: %w", s.name, s.addr, err)
	}
	s.addr = l.Addr().(*net.TCPAddr).AddrPort()
	gs := s.build()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := gs.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Warn(s.name+" server stopped", "error", err)
		}
	}()
	s.gs, s.serving = gs, done
	return nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Stop kills the server as a crash would: the listener and every
// connection close, open streams break. Start serves again.
func (s *Server) Stop() {
	s.mu.Lock()
	gs, done := s.gs, s.serving
	s.gs, s.serving = nil, nil
	s.mu.Unlock()
	if gs == nil {
		return
	}
	gs.Stop()
	<-done
}

// Close stops the server for good: Start fails after it.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.Stop()
}
