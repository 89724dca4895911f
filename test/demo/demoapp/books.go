package demoapp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sluice-mesh/sluice/test/demo/api/books"
)

// BooksConfig configures the books role.
type BooksConfig struct {
	// FailureRate is the fraction, in [0, 1], of calls answered with the
	// gRPC code Unavailable, chosen at random.
	FailureRate float64
	// Log receives the server's logs; nil discards them.
	Log *slog.Logger
}

// booksServer serves the books API from the fixed catalog.
type booksServer struct {
	books.UnimplementedBooksServer
	failureRate float64
	catalog     []*books.Book
}

var _ books.BooksServer = (*booksServer)(nil)

// ListBooks returns the whole catalog.
func (s *booksServer) ListBooks(context.Context, *books.ListBooksRequest) (*books.ListBooksResponse, error) {
	if injectFailure(s.failureRate) {
		return nil, status.Error(codes.Unavailable, "books: injected failure (--failure-rate)")
	}
	return &books.ListBooksResponse{Books: s.catalog}, nil
}

// GetBook returns one book of the catalog.
func (s *booksServer) GetBook(_ context.Context, req *books.GetBookRequest) (*books.Book, error) {
	if injectFailure(s.failureRate) {
		return nil, status.Error(codes.Unavailable, "books: injected failure (--failure-rate)")
	}
	for _, b := range s.catalog {
		if b.GetId() == req.GetId() {
			return b, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "books: no book %q", req.GetId())
}

// RunBooks serves the books API (sluice.demo.books.Books) and the standard
// gRPC health service (grpc.health.v1.Health, SERVING for "" and for the
// books service) on l until ctx ends. Then it reports NOT_SERVING, stops
// gracefully (forcibly after shutdownTimeout) and returns nil.
func RunBooks(ctx context.Context, l net.Listener, cfg BooksConfig) error {
	log := orDiscard(cfg.Log)
	gs := grpc.NewServer()
	books.RegisterBooksServer(gs, &booksServer{failureRate: cfg.FailureRate, catalog: catalogBooks()})
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(books.Books_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(l) }()
	log.Info("serving", "addr", l.Addr().String())
	select {
	case err := <-errc:
		if errors.Is(err, grpc.ErrServerStopped) {
			return nil
		}
		return fmt.Errorf("serve grpc on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(shutdownTimeout):
		gs.Stop()
		<-stopped
	}
	return nil
}
