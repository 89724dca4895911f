package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

func TestHTTP(t *testing.T) {
	s := startServe(t)
	base := "http://" + s.ready.HTTP
	const upload = 3<<20 + 17
	for _, proto := range []string{"http1", "h2c"} {
		t.Run(proto, func(t *testing.T) {
			flags := []string{}
			wantProto := "HTTP/1.1"
			if proto == "h2c" {
				flags, wantProto = []string{"--h2c"}, "HTTP/2.0"
			}
			cases := []struct {
				name  string
				args  []string
				check func(t *testing.T, rs []HTTPResult)
			}{
				{"echo", []string{"--url", base + "/echo", "--body", "hello"}, func(t *testing.T, rs []HTTPResult) {
					if rs[0].Body != "hello" || rs[0].Headers["X-App-Name"][0] != "app-1" {
						t.Errorf("echo answered %q, x-app-name %v", rs[0].Body, rs[0].Headers["X-App-Name"])
					}
				}},
				{"full-duplex echo", []string{"--url", base + "/echo", "--upload-bytes", "10485760", "--seed", "15"}, func(t *testing.T, rs []HTTPResult) {
					if want := payload.SHA256(15, 10<<20); rs[0].Bytes != 10<<20 || rs[0].SHA256 != want || rs[0].SentSHA256 != want {
						t.Errorf("echo of 10 MiB: %d bytes with sha256 %s, want %s", rs[0].Bytes, rs[0].SHA256, want)
					}
				}},
				{"chunked upload with 100-continue", []string{"--url", base + "/sha256", "--upload-bytes", fmt.Sprint(upload), "--seed", "3", "--expect-continue"}, func(t *testing.T, rs []HTTPResult) {
					var a SHA256Answer
					if err := json.Unmarshal([]byte(rs[0].Body), &a); err != nil {
						t.Fatalf("answer %q: %v", rs[0].Body, err)
					}
					want := payload.SHA256(3, upload)
					if a.Bytes != upload || a.SHA256 != want || rs[0].SentSHA256 != want {
						t.Errorf("server got %d bytes %s, client sent %s, want %d %s", a.Bytes, a.SHA256, rs[0].SentSHA256, upload, want)
					}
					if !rs[0].Got100Continue {
						t.Error("no 100 Continue")
					}
					if proto == "http1" && (a.ContentLength != -1 || len(a.TransferEncoding) != 1 || a.TransferEncoding[0] != "chunked") {
						t.Errorf("upload arrived with length %d, transfer-encoding %v; want chunked", a.ContentLength, a.TransferEncoding)
					}
				}},
				{"download with trailer", []string{"--url", base + "/bytes?n=5000000&seed=4"}, func(t *testing.T, rs []HTTPResult) {
					want := payload.SHA256(4, 5000000)
					if rs[0].Bytes != 5000000 || rs[0].SHA256 != want {
						t.Errorf("got %d bytes %s, want 5000000 %s", rs[0].Bytes, rs[0].SHA256, want)
					}
					if got := rs[0].Trailers["X-Sha256"]; len(got) != 1 || got[0] != want {
						t.Errorf("trailer x-sha256 %v, want %s", got, want)
					}
				}},
				{"status", []string{"--url", base + "/status/503"}, func(t *testing.T, rs []HTTPResult) {
					if rs[0].Status != 503 {
						t.Errorf("status %d", rs[0].Status)
					}
				}},
				{"100-continue refused", []string{"--url", base + "/status/413", "--upload-bytes", "1000000", "--expect-continue"}, func(t *testing.T, rs []HTTPResult) {
					if rs[0].Status != 413 || rs[0].Got100Continue {
						t.Errorf("status %d, 100 Continue %v; want 413 without 100", rs[0].Status, rs[0].Got100Continue)
					}
				}},
				{"delay", []string{"--url", base + "/delay?d=10ms"}, func(t *testing.T, rs []HTTPResult) {
					if rs[0].Status != 200 || !strings.Contains(rs[0].Body, "delayed 10ms") {
						t.Errorf("answer %d %q", rs[0].Status, rs[0].Body)
					}
				}},
				{"headers and host", []string{"--url", base + "/headers", "--host", "web:8080", "-H", "X-Test: 1"}, func(t *testing.T, rs []HTTPResult) {
					var a HeadersAnswer
					if err := json.Unmarshal([]byte(rs[0].Body), &a); err != nil {
						t.Fatal(err)
					}
					if a.Host != "web:8080" || a.Headers.Get("X-Test") != "1" || a.Proto != wantProto {
						t.Errorf("server saw %+v", a)
					}
				}},
				{"keep-alive", []string{"--url", base + "/echo", "--body", "x", "--keepalive-requests", "4"}, func(t *testing.T, rs []HTTPResult) {
					if len(rs) != 4 {
						t.Fatalf("%d results", len(rs))
					}
					for i, r := range rs {
						if r.Conns != 1 || r.Reused != (i > 0) {
							t.Errorf("request %d: conns %d reused %v; want one connection for all", i, r.Conns, r.Reused)
						}
					}
				}},
			}
			for _, tc := range cases {
				t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
					rs := run[HTTPResult](t, append(append([]string{"http"}, flags...), tc.args...)...)
					for _, r := range rs {
						if r.Err != "" || r.Proto != wantProto {
							t.Fatalf("request: %+v, want %s without error", r, wantProto)
						}
					}
					tc.check(t, rs)
				})
			}
		})
	}
}

// A request to an address where nothing listens is a result with an error,
// not a failed command.
func TestHTTPConnectError(t *testing.T) {
	rs := run[HTTPResult](t, "http", "--url", "http://127.0.0.1:1/")
	if len(rs) != 1 || rs[0].Err == "" || rs[0].Status != 0 {
		t.Errorf("got %+v, want one result with an error", rs)
	}
}
