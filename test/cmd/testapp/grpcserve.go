package main

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// Metadata keys of the gRPC service.
const (
	mdDelay      = "x-delay"       // request: delay the answer by this duration
	mdAppName    = "x-app-name"    // response header: the app's --name
	mdTrailer    = "x-trailer"     // response trailer: the method's name
	mdDeadlineMS = "x-deadline-ms" // response trailer: the deadline left on arrival (ms), if any
)

// GRPCEvent is the line serve prints when a gRPC call ends.
type GRPCEvent struct {
	Event      string `json:"event"` // "grpc"
	Method     string `json:"method"`
	Remote     string `json:"remote"`
	Code       string `json:"code"`
	DeadlineMS int64  `json:"deadline_ms"` // deadline left on arrival, -1 without one
	Received   int    `json:"received"`    // request messages
	Sent       int    `json:"sent"`        // response messages
}

// grpcServer returns the app's gRPC server with the test service.
func (a *app) grpcServer() *grpc.Server {
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, &testService{app: a})
	return s
}

// testService implements grpc.testing.TestService.
type testService struct {
	testpb.UnimplementedTestServiceServer
	app *app
}

// call tracks one gRPC call for its event.
type call struct {
	ev  GRPCEvent
	app *app
}

// begin starts a call: answers the header, notes the deadline, and returns
// the delay the call must wait (--delay plus x-delay).
func (s *testService) begin(ctx context.Context, method string) (*call, time.Duration) {
	c := &call{app: s.app, ev: GRPCEvent{Event: "grpc", Method: method, DeadlineMS: -1}}
	if p, ok := peer.FromContext(ctx); ok {
		c.ev.Remote = p.Addr.String()
	}
	tr := metadata.Pairs(mdTrailer, method)
	if dl, ok := ctx.Deadline(); ok {
		c.ev.DeadlineMS = time.Until(dl).Milliseconds()
		tr.Set(mdDeadlineMS, strconv.FormatInt(c.ev.DeadlineMS, 10))
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(mdAppName, s.app.name))
	_ = grpc.SetTrailer(ctx, tr)
	delay := s.app.delay
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(mdDelay); len(v) > 0 {
			if d, err := time.ParseDuration(v[0]); err == nil {
				delay += d
			}
		}
	}
	return c, delay
}

// end prints the call's event and returns err as a status error.
func (c *call) end(err error) error {
	if err != nil {
		if _, ok := status.FromError(err); !ok {
			err = status.FromContextError(err).Err()
		}
	}
	c.ev.Code = status.Code(err).String()
	c.app.out.line(c.ev)
	return err
}

// requested is the status a request asks for, nil for OK.
func requested(st *testpb.EchoStatus) error {
	if st == nil || st.Code == 0 {
		return nil
	}
	return status.Error(codes.Code(st.Code), st.Message)
}

func body(size int32) *testpb.Payload {
	return &testpb.Payload{Body: payload.Bytes(uint64(size), int(max(size, 0)))}
}

// EmptyCall answers at once.
func (s *testService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	c, delay := s.begin(ctx, "EmptyCall")
	c.ev.Received = 1
	if err := sleep(ctx, delay); err != nil {
		return nil, c.end(err)
	}
	c.ev.Sent = 1
	return &testpb.Empty{}, c.end(nil)
}

// UnaryCall answers ResponseSize bytes, or the requested status.
func (s *testService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	c, delay := s.begin(ctx, "UnaryCall")
	c.ev.Received = 1
	if err := sleep(ctx, delay); err != nil {
		return nil, c.end(err)
	}
	if err := requested(req.GetResponseStatus()); err != nil {
		return nil, c.end(err)
	}
	c.ev.Sent = 1
	return &testpb.SimpleResponse{Payload: body(req.GetResponseSize()), ServerId: s.app.name, Hostname: s.app.name}, c.end(nil)
}

// StreamingOutputCall sends one answer per ResponseParameters.
func (s *testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, st grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	ctx := st.Context()
	c, delay := s.begin(ctx, "StreamingOutputCall")
	c.ev.Received = 1
	if err := sleep(ctx, delay); err != nil {
		return c.end(err)
	}
	if err := s.respond(ctx, c, req, st); err != nil {
		return c.end(err)
	}
	return c.end(requested(req.GetResponseStatus()))
}

// respond sends the answers req asks for, each after its interval.
func (s *testService) respond(ctx context.Context, c *call, req *testpb.StreamingOutputCallRequest, st grpc.ServerStream) error {
	for _, p := range req.GetResponseParameters() {
		if err := sleep(ctx, time.Duration(p.GetIntervalUs())*time.Microsecond); err != nil {
			return err
		}
		if err := st.SendMsg(&testpb.StreamingOutputCallResponse{Payload: body(p.GetSize())}); err != nil {
			return err
		}
		c.ev.Sent++
	}
	return nil
}

// StreamingInputCall sums the sizes of every request's payload.
func (s *testService) StreamingInputCall(st grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	ctx := st.Context()
	c, delay := s.begin(ctx, "StreamingInputCall")
	var sum int32
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return c.end(err)
		}
		c.ev.Received++
		sum += int32(len(req.GetPayload().GetBody()))
	}
	if err := sleep(ctx, delay); err != nil {
		return c.end(err)
	}
	c.ev.Sent = 1
	return c.end(st.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: sum}))
}

// FullDuplexCall answers each request as it arrives: the answers its
// ResponseParameters ask for, or its own payload back when it asks none.
// A request with ResponseStatus ends the call with that status.
func (s *testService) FullDuplexCall(st grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	ctx := st.Context()
	c, delay := s.begin(ctx, "FullDuplexCall")
	for {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return c.end(nil)
		}
		if err != nil {
			return c.end(err)
		}
		c.ev.Received++
		if err := sleep(ctx, delay); err != nil {
			return c.end(err)
		}
		if err := requested(req.GetResponseStatus()); err != nil {
			return c.end(err)
		}
		if len(req.GetResponseParameters()) == 0 {
			if err := st.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
				return c.end(err)
			}
			c.ev.Sent++
			continue
		}
		if err := s.respond(ctx, c, req, st); err != nil {
			return c.end(err)
		}
	}
}
