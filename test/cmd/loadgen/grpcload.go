package main

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// newGRPCClient opens one grpc-go ClientConn (one HTTP/2 connection,
// plaintext with prior knowledge) to addr and connects it. Its calls carry
// :authority authority, or addr if authority is empty.
func newGRPCClient(addr, authority string) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return dialer().DialContext(ctx, "tcp", a)
		}),
	}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("create gRPC client for %s: %w", addr, err)
	}
	cc.Connect()
	return cc, nil
}

// grpcOp returns an op that makes one unary call, grpc.health.v1.Health/Check,
// on cc.
func grpcOp(cc *grpc.ClientConn) op {
	c := healthpb.NewHealthClient(cc)
	req := &healthpb.HealthCheckRequest{}
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		resp, err := c.Check(ctx, req)
		if err != nil {
			return fmt.Errorf("call Health/Check: %w", err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("call Health/Check: status %v", resp.GetStatus())
		}
		return nil
	}
}
