package demoapp

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sluice-mesh/sluice/test/demo/api/books"
)

// startBooks runs the books role with the failure rate and returns its
// address.
func startBooks(t *testing.T, rate float64) string {
	t.Helper()
	addr, _ := serve(t, "books", func(ctx context.Context, l net.Listener) error {
		return RunBooks(ctx, l, BooksConfig{FailureRate: rate})
	})
	return addr
}

// dialBooks returns a client connection to addr, closed when the test ends.
func dialBooks(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func TestBooks(t *testing.T) {
	conn := dialBooks(t, startBooks(t, 0))
	c := books.NewBooksClient(conn)
	ctx := t.Context()

	list, err := c.ListBooks(ctx, &books.ListBooksRequest{})
	if err != nil {
		t.Fatalf("ListBooks: %v", err)
	}
	want := catalogBooks()
	if len(list.GetBooks()) != len(want) {
		t.Fatalf("ListBooks returned %d books, want %d", len(list.GetBooks()), len(want))
	}
	for i, b := range list.GetBooks() {
		if !proto.Equal(b, want[i]) {
			t.Errorf("ListBooks book %d = %v, want %v", i, b, want[i])
		}
	}

	b, err := c.GetBook(ctx, &books.GetBookRequest{Id: "3"})
	if err != nil || !proto.Equal(b, want[2]) {
		t.Errorf("GetBook(3) = %v, %v; want %v", b, err, want[2])
	}
	if _, err := c.GetBook(ctx, &books.GetBookRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetBook(nope): %v, want NotFound", err)
	}

	h := healthpb.NewHealthClient(conn)
	for _, svc := range []string{"", books.Books_ServiceDesc.ServiceName} {
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health check of %q = %v, %v; want SERVING", svc, resp, err)
		}
	}
}

func TestBooksFailureRate(t *testing.T) {
	c := books.NewBooksClient(dialBooks(t, startBooks(t, 1)))
	if _, err := c.ListBooks(t.Context(), &books.ListBooksRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("ListBooks with failure rate 1: %v, want Unavailable", err)
	}
	if _, err := c.GetBook(t.Context(), &books.GetBookRequest{Id: "1"}); status.Code(err) != codes.Unavailable {
		t.Errorf("GetBook with failure rate 1: %v, want Unavailable", err)
	}
}
