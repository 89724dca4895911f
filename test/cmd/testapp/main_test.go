package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// served is a `testapp serve` running in the test process.
type served struct {
	ready  ReadyEvent
	events chan map[string]any
}

// startServe runs `testapp serve` with every listener on a free loopback
// port plus args, and stops it at cleanup.
func startServe(t *testing.T, args ...string) *served {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, w := io.Pipe()
	cmd := newRootCmd()
	cmd.SetArgs(append([]string{"serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
		"--tcp-echo", "127.0.0.1:0", "--opaque", "127.0.0.1:0", "--name", "app-1"}, args...))
	cmd.SetOut(w)
	cmd.SetErr(io.Discard)
	done := make(chan error, 1)
	go func() { err := cmd.ExecuteContext(ctx); w.Close(); done <- err }()
	s := &served{events: make(chan map[string]any, 1000)}
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		cancel()
		t.Fatalf("serve printed nothing: %v", <-done)
	}
	if err := json.Unmarshal(sc.Bytes(), &s.ready); err != nil || s.ready.Event != "ready" {
		t.Fatalf("first line %q is not the ready event: %v", sc.Text(), err)
	}
	go func() {
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				s.events <- ev
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("serve did not stop within 10s of cancel")
		}
	})
	return s
}

// event waits for the server's next event of kind.
func (s *served) event(t *testing.T, kind string) map[string]any {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-s.events:
			if ev["event"] == kind {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event after 10s", kind)
		}
	}
}

// run runs a testapp client command and decodes its JSON lines into T.
func run[T any](t *testing.T, args ...string) []T {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cmd.ExecuteContext(ctx); err != nil {
		t.Fatalf("testapp %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
	}
	var res []T
	dec := json.NewDecoder(&out)
	for dec.More() {
		var v T
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("decode output of testapp %s: %v", strings.Join(args, " "), err)
		}
		res = append(res, v)
	}
	return res
}

func TestUsageErrors(t *testing.T) {
	cases := [][]string{
		{"serve"},
		{"serve", "--http", ":0", "--delay", "-1s"},
		{"http"},
		{"http", "--url", "http://x/", "--keepalive-requests", "0"},
		{"http", "--url", "http://x/", "-H", "no colon"},
		{"grpc"},
		{"grpc", "--addr", "x:1", "--call", "sideways"},
		{"ws"},
		{"tcp"},
		{"opaque"},
		{"gen", "--bytes", "-1"},
		{"nonsense"},
	}
	for _, args := range cases {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			cmd := newRootCmd()
			cmd.SetArgs(args)
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			if err := cmd.Execute(); err == nil {
				t.Errorf("testapp %v succeeded, want a usage error", args)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, sub := range []string{"serve", "http", "grpc", "ws", "tcp", "opaque", "gen"} {
		t.Run(sub, func(t *testing.T) {
			var out bytes.Buffer
			cmd := newRootCmd()
			cmd.SetArgs([]string{sub, "--help"})
			cmd.SetOut(&out)
			if err := cmd.Execute(); err != nil || !strings.Contains(out.String(), "Usage:") {
				t.Errorf("%s --help: %v\n%s", sub, err, out.String())
			}
		})
	}
}

func TestGen(t *testing.T) {
	var out bytes.Buffer
	cmd := newRootCmd()
	cmd.SetArgs([]string{"gen", "--bytes", "100000", "--seed", "9"})
	cmd.SetOut(&out)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), payload.Bytes(9, 100000)) {
		t.Error("gen wrote other bytes than payload.Bytes(9, 100000)")
	}
}
