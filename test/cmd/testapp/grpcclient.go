package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// grpcOptions are the flags of `testapp grpc`.
type grpcOptions struct {
	addr, authority string
	call            string
	count           int
	size            int
	deadline        time.Duration
	serverDelay     time.Duration
	status          int
	timeout         time.Duration
}

// GRPCResult is the line printed per gRPC call.
type GRPCResult struct {
	Call          string              `json:"call"`
	N             int                 `json:"n"`
	Code          string              `json:"code"`
	Message       string              `json:"message,omitempty"`
	Sent          int                 `json:"sent"`     // request messages
	Received      int                 `json:"received"` // response messages
	ReceivedBytes int                 `json:"received_bytes"`
	Aggregated    int32               `json:"aggregated,omitempty"` // client-stream: the server's sum
	Headers       map[string][]string `json:"headers,omitempty"`
	Trailers      map[string][]string `json:"trailers,omitempty"`
	Err           string              `json:"err,omitempty"` // a mismatch in what came back
}

func newCmdGRPC() *cobra.Command {
	o := &grpcOptions{}
	cmd := &cobra.Command{
		Use:   "grpc",
		Short: "Call grpc.testing.TestService and print each call's status, headers and trailers",
		Long: `grpc makes calls on one connection (h2c) and prints one JSON line per call.

--call unary          --count sequential UnaryCalls, each answered with --size bytes
--call server-stream  one StreamingOutputCall answered by --count messages of --size bytes
--call client-stream  one StreamingInputCall of --count messages of --size bytes
--call bidi           one FullDuplexCall, --count ping-pongs of --size bytes

--deadline sets the call's deadline (sent as grpc-timeout); --server-delay
asks the server to wait that long before answering (metadata x-delay);
--status asks the server to end the call with that code.`,
		Args: cobra.NoArgs,
		RunE: runE(o.validate, o.run),
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", "", "server address host:port (required)")
	f.StringVar(&o.authority, "authority", "", "the :authority of the calls (default --addr)")
	f.StringVar(&o.call, "call", "unary", "unary, server-stream, client-stream or bidi")
	f.IntVar(&o.count, "count", 1, "calls (unary) or messages (streams)")
	f.IntVar(&o.size, "size", 100, "payload bytes per message")
	f.DurationVar(&o.deadline, "deadline", 0, "deadline of each call (0: none)")
	f.DurationVar(&o.serverDelay, "server-delay", 0, "ask the server to delay its answer")
	f.IntVar(&o.status, "status", 0, "ask the server to end the call with this gRPC code")
	f.DurationVar(&o.timeout, "timeout", 60*time.Second, "give up (cancel, without a deadline) after this long")
	return cmd
}

func (o *grpcOptions) validate() error {
	switch {
	case o.addr == "":
		return errors.New("validate flags: --addr is required")
	case o.call != "unary" && o.call != "server-stream" && o.call != "client-stream" && o.call != "bidi":
		return fmt.Errorf("validate flags: unknown --call %q", o.call)
	case o.count < 1 || o.size < 0:
		return errors.New("validate flags: --count must be positive and --size not negative")
	case o.status < 0 || o.status > 16:
		return fmt.Errorf("validate flags: --status %d is not a gRPC code", o.status)
	}
	return nil
}

func (o *grpcOptions) run(ctx context.Context, out *jsonOut) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	guard := time.AfterFunc(o.timeout, cancel) // a hang guard, not a deadline on the wire
	defer guard.Stop()
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialer(10*time.Second).DialContext(ctx, "tcp", addr)
		}),
	}
	if o.authority != "" {
		opts = append(opts, grpc.WithAuthority(o.authority))
	}
	cc, err := grpc.NewClient("passthrough:///"+o.addr, opts...)
	if err != nil {
		return fmt.Errorf("grpc client: %w", err)
	}
	defer cc.Close()
	c := testpb.NewTestServiceClient(cc)
	calls := 1
	if o.call == "unary" {
		calls = o.count
	}
	for i := range calls {
		out.line(o.one(ctx, c, i))
	}
	return nil
}

// one makes one call and returns its result.
func (o *grpcOptions) one(ctx context.Context, c testpb.TestServiceClient, n int) GRPCResult {
	res := GRPCResult{Call: o.call, N: n}
	if o.deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.deadline)
		defer cancel()
	}
	if o.serverDelay > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, mdDelay, o.serverDelay.String())
	}
	var st *testpb.EchoStatus
	if o.status != 0 {
		st = &testpb.EchoStatus{Code: int32(o.status), Message: "requested by the client"}
	}
	var header, trailer metadata.MD
	var err error
	switch o.call {
	case "unary":
		err = o.unary(ctx, c, st, &res, &header, &trailer)
	case "server-stream":
		err = o.serverStream(ctx, c, st, &res, &header, &trailer)
	case "client-stream":
		err = o.clientStream(ctx, c, &res, &header, &trailer)
	case "bidi":
		err = o.bidi(ctx, c, st, &res, &header, &trailer)
	}
	s := status.Convert(err)
	res.Code, res.Message = s.Code().String(), s.Message()
	res.Headers, res.Trailers = header, trailer
	return res
}

func (o *grpcOptions) unary(ctx context.Context, c testpb.TestServiceClient, st *testpb.EchoStatus, res *GRPCResult, header, trailer *metadata.MD) error {
	res.Sent = 1
	resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: int32(o.size), ResponseStatus: st,
		Payload: &testpb.Payload{Body: payload.Bytes(uint64(o.size), o.size)}}, grpc.Header(header), grpc.Trailer(trailer))
	if err != nil {
		return err
	}
	res.Received = 1
	res.ReceivedBytes = len(resp.GetPayload().GetBody())
	if res.ReceivedBytes != o.size {
		res.Err = fmt.Sprintf("answer has %d bytes, want %d", res.ReceivedBytes, o.size)
	}
	return nil
}

func (o *grpcOptions) serverStream(ctx context.Context, c testpb.TestServiceClient, st *testpb.EchoStatus, res *GRPCResult, header, trailer *metadata.MD) error {
	params := make([]*testpb.ResponseParameters, o.count)
	for i := range params {
		params[i] = &testpb.ResponseParameters{Size: int32(o.size)}
	}
	res.Sent = 1
	s, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{ResponseParameters: params, ResponseStatus: st},
		grpc.Header(header), grpc.Trailer(trailer))
	if err != nil {
		return err
	}
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		res.Received++
		res.ReceivedBytes += len(m.GetPayload().GetBody())
	}
	if res.Received != o.count || res.ReceivedBytes != o.count*o.size {
		res.Err = fmt.Sprintf("got %d messages of %d bytes in all, want %d of %d each", res.Received, res.ReceivedBytes, o.count, o.size)
	}
	return nil
}

func (o *grpcOptions) clientStream(ctx context.Context, c testpb.TestServiceClient, res *GRPCResult, header, trailer *metadata.MD) error {
	s, err := c.StreamingInputCall(ctx, grpc.Header(header), grpc.Trailer(trailer))
	if err != nil {
		return err
	}
	msg := &testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: payload.Bytes(1, o.size)}}
	for range o.count {
		if err := s.Send(msg); err != nil {
			break // the status comes from CloseAndRecv
		}
		res.Sent++
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return err
	}
	res.Received = 1
	res.Aggregated = resp.GetAggregatedPayloadSize()
	if int(res.Aggregated) != o.count*o.size {
		res.Err = fmt.Sprintf("server counted %d bytes, want %d", res.Aggregated, o.count*o.size)
	}
	return nil
}

func (o *grpcOptions) bidi(ctx context.Context, c testpb.TestServiceClient, st *testpb.EchoStatus, res *GRPCResult, header, trailer *metadata.MD) error {
	s, err := c.FullDuplexCall(ctx, grpc.Header(header), grpc.Trailer(trailer))
	if err != nil {
		return err
	}
	for i := range o.count {
		req := &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: payload.Bytes(uint64(i), o.size)}}
		if i == o.count-1 {
			req.ResponseStatus = st
		}
		if err := s.Send(req); err != nil {
			break // the status comes from Recv
		}
		res.Sent++
		m, err := s.Recv()
		if err != nil {
			return err
		}
		res.Received++
		res.ReceivedBytes += len(m.GetPayload().GetBody())
		if string(m.GetPayload().GetBody()) != string(req.Payload.Body) {
			res.Err = fmt.Sprintf("message %d came back changed", i)
		}
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	_, err = s.Recv()
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil {
		return status.Error(codes.Internal, "testapp: unexpected extra message")
	}
	return err
}
