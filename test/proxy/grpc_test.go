package proxy

import (
	"slices"
	"strconv"
	"testing"

	"github.com/sluice-mesh/sluice/test/proxytest"
)

// grpcResult is a line of `testapp grpc`.
type grpcResult struct {
	Code          string              `json:"code"`
	Message       string              `json:"message"`
	Sent          int                 `json:"sent"`
	Received      int                 `json:"received"`
	ReceivedBytes int                 `json:"received_bytes"`
	Headers       map[string][]string `json:"headers"`
	Trailers      map[string][]string `json:"trailers"`
	Err           string              `json:"err"`
}

// grpcEvent is the app's line for a finished call.
type grpcEvent struct {
	Method     string `json:"method"`
	Code       string `json:"code"`
	DeadlineMS int64  `json:"deadline_ms"`
	Received   int    `json:"received"`
	Remote     string `json:"remote"`
}

// gRPC with grpc-go through both proxies: unary and streaming calls with
// their trailers, a status other than OK, and a deadline the server
// overruns.
func TestGRPC(t *testing.T) {
	eachMode(t, proxytest.PodOptions{}, func(t *testing.T, e *env) {
		call := func(t *testing.T, args ...string) []grpcResult {
			t.Helper()
			return proxytest.Lines[grpcResult](t, e.client.Run(t, append([]string{"grpc", "--addr", e.serverAddr(grpcPort),
				"--authority", authority(grpcPort)}, args...)...))
		}
		out, in := e.outHTTP(grpcPort), e.inHTTP(grpcPort, authority(grpcPort))
		ok := func(l proxytest.Labels) proxytest.Labels {
			return with(l, "status_code", "200", "grpc_status", "0", "classification", "success")
		}
		cases := []struct {
			name     string
			args     []string
			calls    int
			received int // per call
			method   string
		}{
			{"unary", []string{"--call", "unary", "--count", "5", "--size", "2000"}, 5, 1, "UnaryCall"},
			{"server-stream", []string{"--call", "server-stream", "--count", "20", "--size", "3000"}, 1, 20, "StreamingOutputCall"},
			{"client-stream", []string{"--call", "client-stream", "--count", "20", "--size", "3000"}, 1, 1, "StreamingInputCall"},
			{"bidi", []string{"--call", "bidi", "--count", "100", "--size", "5000"}, 1, 100, "FullDuplexCall"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				s := e.snapshot(t)
				rs := call(t, tc.args...)
				if len(rs) != tc.calls {
					t.Fatalf("%d results, want %d", len(rs), tc.calls)
				}
				for i, r := range rs {
					if r.Code != "OK" || r.Err != "" || r.Received != tc.received {
						t.Errorf("call %d: %+v, want OK with %d messages", i, r, tc.received)
					}
					if got := r.Trailers["x-trailer"]; !slices.Equal(got, []string{tc.method}) {
						t.Errorf("call %d: trailer x-trailer %v, want %s (trailers %v)", i, got, tc.method, r.Trailers)
					}
					if got := r.Headers["x-app-name"]; !slices.Equal(got, []string{"web-1"}) {
						t.Errorf("call %d: header x-app-name %v, want web-1", i, got)
					}
				}
				n := float64(tc.calls)
				s.expect(t, e.client,
					eq("request_total", out, n),
					eq("response_total", ok(out), n),
					eq("response_latency_ms_bucket", with(out, "status_code", "200", "le", "+Inf"), n),
				)
				s.expect(t, e.server,
					eq("request_total", in, n),
					eq("response_total", ok(in), n),
				)
			})
		}

		t.Run("status", func(t *testing.T) {
			s := e.snapshot(t)
			r := call(t, "--call", "unary", "--status", "5")[0]
			if r.Code != "NotFound" || r.Message != "requested by the client" || !slices.Equal(r.Trailers["x-trailer"], []string{"UnaryCall"}) {
				t.Errorf("got %+v, want NotFound with its message and trailers", r)
			}
			s.expect(t, e.client, eq("response_total", with(out, "status_code", "200", "grpc_status", "5", "classification", "failure"), 1))
			s.expect(t, e.server, eq("response_total", with(in, "status_code", "200", "grpc_status", "5", "classification", "failure"), 1))
		})

		// The deadline travels as grpc-timeout through both proxies: the
		// server sees it, gives up when it passes, and the client gets
		// DEADLINE_EXCEEDED.
		t.Run("deadline", func(t *testing.T) {
			s := e.snapshot(t)
			e.app.Drain()
			r := call(t, "--call", "unary", "--deadline", "500ms", "--server-delay", "2m")[0]
			if r.Code != "DeadlineExceeded" {
				t.Errorf("got %+v, want DeadlineExceeded", r)
			}
			var ev grpcEvent // no event: the server's call did not end with the deadline
			e.app.Next(t, "grpc", &ev)
			if ev.DeadlineMS <= 0 || ev.DeadlineMS > 500 || (ev.Code != "DeadlineExceeded" && ev.Code != "Canceled") {
				t.Errorf("the server saw %+v; want a deadline of at most 500ms that ended the call", ev)
			}
			s.expect(t, e.client,
				eq("request_total", out, 1),
				eq("response_total", with(out, "classification", "success"), 0),
				eq("response_total", with(out, "classification", "failure"), 1),
			)
		})

		t.Run("deadline-met", func(t *testing.T) {
			r := call(t, "--call", "unary", "--deadline", "20s")[0]
			d, err := strconv.Atoi(first(r.Trailers, "x-deadline-ms"))
			if r.Code != "OK" || err != nil || d <= 0 || d > 20000 {
				t.Errorf("got %+v; want OK and the server's x-deadline-ms trailer within 20s", r)
			}
		})
	})
}
