package main

import (
	"slices"
	"strings"
	"testing"
)

func TestGRPC(t *testing.T) {
	s := startServe(t)
	cases := []struct {
		name        string
		args        []string
		results     int
		code        string
		received    int
		method      string // of the server's event
		serverCode  string // codes separated by |
		wantTrailer bool
	}{
		{"unary", []string{"--call", "unary", "--count", "3", "--size", "1000"}, 3, "OK", 1, "UnaryCall", "OK", true},
		{"server stream", []string{"--call", "server-stream", "--count", "5", "--size", "100"}, 1, "OK", 5, "StreamingOutputCall", "OK", true},
		{"client stream", []string{"--call", "client-stream", "--count", "5", "--size", "100"}, 1, "OK", 1, "StreamingInputCall", "OK", true},
		{"bidi", []string{"--call", "bidi", "--count", "7", "--size", "100"}, 1, "OK", 7, "FullDuplexCall", "OK", true},
		{"requested status", []string{"--call", "unary", "--status", "5"}, 1, "NotFound", 0, "UnaryCall", "NotFound", true},
		{"bidi requested status", []string{"--call", "bidi", "--count", "2", "--status", "9"}, 1, "FailedPrecondition", 1, "FullDuplexCall", "FailedPrecondition", true},
		{"deadline exceeded", []string{"--call", "unary", "--deadline", "100ms", "--server-delay", "5s"}, 1, "DeadlineExceeded", 0, "UnaryCall", "DeadlineExceeded|Canceled", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := run[GRPCResult](t, append([]string{"grpc", "--addr", s.ready.GRPC, "--authority", "web:9090"}, tc.args...)...)
			if len(rs) != tc.results {
				t.Fatalf("%d results, want %d: %+v", len(rs), tc.results, rs)
			}
			for _, r := range rs {
				if r.Code != tc.code || r.Received != tc.received || r.Err != "" {
					t.Errorf("got %+v, want code %s and %d messages", r, tc.code, tc.received)
				}
				if tc.wantTrailer && (len(r.Trailers["x-trailer"]) != 1 || r.Trailers["x-trailer"][0] != tc.method) {
					t.Errorf("trailers %v, want x-trailer: %s", r.Trailers, tc.method)
				}
				if tc.wantTrailer && (len(r.Headers["x-app-name"]) != 1 || r.Headers["x-app-name"][0] != "app-1") {
					t.Errorf("headers %v, want x-app-name: app-1", r.Headers)
				}
			}
			for range tc.results {
				ev := s.event(t, "grpc")
				// A call past its deadline ends on the server by its own
				// timer or by the client's RST_STREAM, whichever is first.
				if code, _ := ev["code"].(string); ev["method"] != tc.method || !slices.Contains(strings.Split(tc.serverCode, "|"), code) {
					t.Errorf("server event %v, want %s ending %s", ev, tc.method, tc.serverCode)
				}
			}
		})
	}
}

// The server sees the client's deadline (grpc-timeout) and says so in a
// trailer.
func TestGRPCDeadlineSeen(t *testing.T) {
	s := startServe(t)
	rs := run[GRPCResult](t, "grpc", "--addr", s.ready.GRPC, "--deadline", "30s")
	if len(rs) != 1 || rs[0].Code != "OK" {
		t.Fatalf("got %+v", rs)
	}
	if d := rs[0].Trailers["x-deadline-ms"]; len(d) != 1 || d[0] == "" || d[0][0] == '-' {
		t.Errorf("x-deadline-ms trailer %v, want the deadline left", d)
	}
	if ev := s.event(t, "grpc"); ev["deadline_ms"].(float64) <= 0 || ev["deadline_ms"].(float64) > 30000 {
		t.Errorf("server event %v, want a deadline of at most 30s", ev)
	}
}
