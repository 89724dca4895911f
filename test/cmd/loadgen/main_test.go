package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func startTestApp(t *testing.T) *app {
	t.Helper()
	a, err := startApp("127.0.0.1:0", "127.0.0.1:0", "", 64)
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
// generator are the requests the app served, with no errors.
func TestLoadAgainstApp(t *testing.T) {
	a := startTestApp(t)
	httpAddr, grpcAddr := a.listeners[0].addr, a.listeners[1].addr
	tests := []struct {
		name  string
		args  []string
		count *listenerStats
	}{
		{"http fixed rate", []string{"http", "--to", httpAddr, "--rate", "500", "--warmup", "100ms", "--duration", "400ms", "--conns", "4"}, a.listeners[0]},
		{"http max", []string{"http", "--to", httpAddr, "--max", "--warmup", "100ms", "--duration", "300ms", "--conns", "4"}, a.listeners[0]},
		{"grpc fixed rate", []string{"grpc", "--to", grpcAddr, "--rate", "500", "--warmup", "100ms", "--duration", "400ms"}, a.listeners[1]},
		{"grpc max", []string{"grpc", "--to", grpcAddr, "--max", "--warmup", "100ms", "--duration", "300ms"}, a.listeners[1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.count.loopback.Load()
			res, code := runJSON(t, tt.args...)
			if code != 0 || res.Errors != 0 || res.FirstError != "" {
				t.Fatalf("exit %d, %d errors: %s", code, res.Errors, res.FirstError)
			}
			served := tt.count.loopback.Load() - before
			if res.Requests <= 0 || res.Requests > served {
				t.Errorf("%d requests measured, the app served %d", res.Requests, served)
			}
			if res.Load == "fixed-rate" && res.Requests != 200 {
				t.Errorf("%d requests measured, want 500/s × 400 ms = 200", res.Requests)
			}
			if !(0 < res.P50Ns && res.P50Ns <= res.P90Ns && res.P90Ns <= res.P99Ns && res.P99Ns <= res.P999Ns && res.P999Ns <= res.MaxNs) {
				t.Errorf("percentiles out of order: %+v", res)
			}
			if res.RPS <= 0 {
				t.Errorf("rate %v", res.RPS)
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

// The app's stats page counts per listener.
func TestAppStats(t *testing.T) {
	a, err := startApp("127.0.0.1:0", "", "127.0.0.1:0", 8)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	hc := newHTTPConn(a.listeners[0].addr, "app", "/", 8)
	for range 3 {
		if err := hc.do(); err != nil {
			t.Fatal(err)
		}
	}
	hc.close()
	resp, err := http.Get("http://" + a.statsAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var counts []ListenerCount
	if err := json.NewDecoder(resp.Body).Decode(&counts); err != nil {
		t.Fatal(err)
	}
	want := []ListenerCount{{Addr: a.listeners[0].addr, Proto: "http", Loopback: 3}}
	if len(counts) != 1 || counts[0] != want[0] {
		t.Errorf("stats %+v, want %+v", counts, want)
	}
}
