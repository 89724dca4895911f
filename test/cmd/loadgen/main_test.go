package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

func startTestApp(t *testing.T) *app {
	t.Helper()
	a, err := startApp(appConfig{HTTP: "127.0.0.1:0", GRPC: "127.0.0.1:0", Sink: "127.0.0.1:0", Body: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	return a
}

func runJSON(t *testing.T, args ...string) (Result, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	var res Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("loadgen %v: exit %d, output %q, stderr %q: %v", args, code, out.String(), errb.String(), err)
	}
	return res, code
}

// Each load mode drives the app: the requests counted by the load
// generator are the requests the app served, with no errors, and they came
// over the connections the mode promises: one per keep-alive worker, one
// gRPC connection, or one per request with --new-conn.
func TestLoadAgainstApp(t *testing.T) {
	a := startTestApp(t)
	httpAddr, grpcAddr := a.listeners[0].addr, a.listeners[1].addr
	const perRequest = -1
	tests := []struct {
		name  string
		args  []string
		count *listenerStats
		conns int64 // connections the app accepted for the run; perRequest: one per request served
	}{
		{"http fixed rate", []string{"http", "--to", httpAddr, "--rate", "500", "--warmup", "100ms", "--duration", "400ms", "--conns", "4"}, a.listeners[0], 4},
		{"http max", []string{"http", "--to", httpAddr, "--max", "--warmup", "100ms", "--duration", "300ms", "--conns", "4"}, a.listeners[0], 4},
		{"http new-conn fixed rate", []string{"http", "--to", httpAddr, "--new-conn", "--rate", "500", "--warmup", "100ms", "--duration", "400ms", "--conns", "4"}, a.listeners[0], perRequest},
		{"http new-conn max", []string{"http", "--to", httpAddr, "--new-conn", "--max", "--warmup", "100ms", "--duration", "300ms", "--conns", "4"}, a.listeners[0], perRequest},
		{"grpc fixed rate", []string{"grpc", "--to", grpcAddr, "--rate", "500", "--warmup", "100ms", "--duration", "400ms"}, a.listeners[1], 1},
		{"grpc max", []string{"grpc", "--to", grpcAddr, "--max", "--warmup", "100ms", "--duration", "300ms"}, a.listeners[1], 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, conns0 := tt.count.loopback.Load(), tt.count.conns.Load()
			res, code := runJSON(t, tt.args...)
			if code != 0 || res.Errors != 0 || res.FirstError != "" {
				t.Fatalf("exit %d, %d errors: %s", code, res.Errors, res.FirstError)
			}
			served, conns := tt.count.loopback.Load()-before, tt.count.conns.Load()-conns0
			if res.Requests <= 0 || res.Requests > served {
				t.Errorf("%d requests measured, the app served %d", res.Requests, served)
			}
			if res.Load == "fixed-rate" {
				if res.Requests != 200 {
					t.Errorf("%d requests measured, want 500/s × 400 ms = 200", res.Requests)
				}
				if served != 250 {
					t.Errorf("the app served %d requests, want 500/s × (100 ms warm-up + 400 ms) = 250", served)
				}
			}
			wantConns := tt.conns
			if wantConns == perRequest {
				wantConns = served
			}
			if conns != wantConns {
				t.Errorf("the app accepted %d connections for %d requests, want %d", conns, served, wantConns)
			}
			if res.Reconnects != 0 {
				t.Errorf("%d reconnects, want none", res.Reconnects)
			}
			if !(0 < res.P50Ns && res.P50Ns <= res.P90Ns && res.P90Ns <= res.P99Ns && res.P99Ns <= res.P999Ns && res.P999Ns <= res.MaxNs) {
				t.Errorf("percentiles out of order: %+v", res)
			}
			if res.RPS <= 0 {
				t.Errorf("rate %v", res.RPS)
			}
			if res.Bytes != 0 || res.MBps != 0 {
				t.Errorf("bytes %d, %v MB/s in a %s run", res.Bytes, res.MBps, res.Mode)
			}
		})
	}
	if a.listeners[0].other.Load() != 0 {
		t.Errorf("the app counted %d requests from outside loopback", a.listeners[0].other.Load())
	}
}

// A server that closes every connection after its response costs
// reconnects, not errors; a server that fails is reported with its status
// and the proxy error header.
func TestHTTPServerBehaviours(t *testing.T) {
	closing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = w.Write([]byte(strings.Repeat("x", 64)))
	}))
	defer closing.Close()
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("sluice-proxy-error", "connection refused")
		w.WriteHeader(http.StatusBadGateway)
	}))
	defer failing.Close()
	args := func(url string) []string {
		return []string{"http", "--to", strings.TrimPrefix(url, "http://"), "--rate", "200", "--warmup", "0", "--duration", "100ms", "--conns", "2"}
	}

	res, code := runJSON(t, args(closing.URL)...)
	if code != 0 || res.Errors != 0 || res.Requests != 20 || res.Reconnects < 20 {
		t.Errorf("closing server: exit %d, %d requests, %d errors (%s), %d reconnects; want 20 requests, no errors, ≥ 20 reconnects",
			code, res.Requests, res.Errors, res.FirstError, res.Reconnects)
	}

	res, _ = runJSON(t, args(failing.URL)...)
	if res.Errors != 20 || res.Requests != 0 || !strings.Contains(res.FirstError, "502") || !strings.Contains(res.FirstError, "connection refused") {
		t.Errorf("failing server: %d requests, %d errors, first %q; want 20 errors naming 502 and the proxy error", res.Requests, res.Errors, res.FirstError)
	}
}

// The app's stats page counts per listener: requests and connections, a
// sink's connection being its request.
func TestAppStats(t *testing.T) {
	a, err := startApp(appConfig{HTTP: "127.0.0.1:0", Sink: "127.0.0.1:0", Stats: "127.0.0.1:0", Body: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	hc := newHTTPConn(a.listeners[0].addr, "app", "/", 8, false)
	for range 3 {
		if err := hc.do(); err != nil {
			t.Fatal(err)
		}
	}
	hc.close()
	if res, code := runJSON(t, "tcp", "--to", a.listeners[1].addr, "--bytes", "1000"); code != 0 {
		t.Fatalf("tcp to the sink: exit %d: %s", code, res.FirstError)
	}
	resp, err := http.Get("http://" + a.statsAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var counts []ListenerCount
	if err := json.NewDecoder(resp.Body).Decode(&counts); err != nil {
		t.Fatal(err)
	}
	want := []ListenerCount{
		{Addr: a.listeners[0].addr, Proto: "http", Loopback: 3, Conns: 1},
		{Addr: a.listeners[1].addr, Proto: "tcp", Loopback: 1, Conns: 1},
	}
	if !slices.Equal(counts, want) {
		t.Errorf("stats %+v, want %+v", counts, want)
	}
}

// grpc reaches the server with the :authority given, or the target address
// by default.
func TestGRPCAuthority(t *testing.T) {
	l, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		seen[strings.Join(md.Get(":authority"), ",")]++
		mu.Unlock()
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	addr := l.Addr().String()
	tests := []struct {
		name, authority string // authority: the --authority flag, if any
		want            string
	}{
		{"default", "", addr},
		{"service name", "web.emojivoto.svc.cluster.local:8080", "web.emojivoto.svc.cluster.local:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"grpc", "--to", addr, "--rate", "200", "--warmup", "0", "--duration", "50ms", "--conns", "2"}
			if tt.authority != "" {
				args = append(args, "--authority", tt.authority)
			}
			mu.Lock()
			clear(seen)
			mu.Unlock()
			res, code := runJSON(t, args...)
			if code != 0 || res.Errors != 0 || res.Requests != 10 {
				t.Fatalf("exit %d, %d requests, %d errors (%s); want 10 requests", code, res.Requests, res.Errors, res.FirstError)
			}
			mu.Lock()
			defer mu.Unlock()
			if want := map[string]int{tt.want: 10}; !maps.Equal(seen, want) {
				t.Errorf("calls by :authority %v, want %v", seen, want)
			}
		})
	}
}

// Bad flags exit 2 with a message on stderr and nothing on stdout; --help
// exits 0; serve exits 1 without READY when a listener cannot be opened.
func TestFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
		want string // in stderr
	}{
		{"no mode", nil, 2, "usage:"},
		{"unknown mode", []string{"udp"}, 2, `unknown mode "udp"`},
		{"http without --to", []string{"http"}, 2, "need --to"},
		{"zero rate", []string{"http", "--to", "127.0.0.1:1", "--rate", "0"}, 2, "--rate (at most 1e9)"},
		{"infinite rate", []string{"http", "--to", "127.0.0.1:1", "--rate", "+Inf"}, 2, "--rate (at most 1e9)"},
		{"stray argument", []string{"http", "--to", "127.0.0.1:1", "now"}, 2, `unexpected argument "now"`},
		{"new-conn on grpc", []string{"grpc", "--to", "127.0.0.1:1", "--new-conn"}, 2, "flag provided but not defined: -new-conn"},
		{"authority on http", []string{"http", "--to", "127.0.0.1:1", "--authority", "web"}, 2, "flag provided but not defined: -authority"},
		{"tcp without --to", []string{"tcp"}, 2, "need --to"},
		{"tcp zero bytes", []string{"tcp", "--to", "127.0.0.1:1", "--bytes", "0"}, 2, "positive --conns and --bytes"},
		{"tcp zero conns", []string{"tcp", "--to", "127.0.0.1:1", "--conns", "0"}, 2, "positive --conns and --bytes"},
		{"tcp bad size", []string{"tcp", "--to", "127.0.0.1:1", "--bytes", "12XB"}, 2, `parse size "12XB"`},
		{"tcp zero chunk", []string{"tcp", "--to", "127.0.0.1:1", "--chunk", "0"}, 2, "--chunk between 1 and 1GiB"},
		{"tcp duration warm-up", []string{"tcp", "--to", "127.0.0.1:1", "--warmup", "1s"}, 2, `parse size "1s"`},
		{"tcp rate", []string{"tcp", "--to", "127.0.0.1:1", "--rate", "10"}, 2, "flag provided but not defined: -rate"},
		{"serve unknown flag", []string{"serve", "--udp", ":1"}, 2, "flag provided but not defined: -udp"},
		{"serve negative body", []string{"serve", "--body", "-1"}, 2, "--body must not be negative"},
		{"serve sink that cannot listen", []string{"serve", "--http", "127.0.0.1:0", "--sink", "256.0.0.1:1"}, 1, "listen on 256.0.0.1:1"},
		{"tcp help", []string{"tcp", "--help"}, 0, "usage: loadgen tcp --to ADDR"},
		{"http help", []string{"http", "-h"}, 0, "-new-conn"},
		{"grpc help", []string{"grpc", "-h"}, 0, "-authority"},
		{"serve help", []string{"serve", "--help"}, 0, "-sink"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, &out, &errb)
			if code != tt.code || !strings.Contains(errb.String(), tt.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errb.String(), tt.code, tt.want)
			}
			if out.Len() != 0 {
				t.Errorf("stdout %q, want nothing (no result, no READY)", out.String())
			}
		})
	}
	var out, errb bytes.Buffer
	if code := run([]string{"help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "loadgen tcp   --to ADDR") {
		t.Errorf("help: exit %d, stdout %q; want 0 and every mode's synopsis", code, out.String())
	}
}
