package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// TestMain runs main instead of the tests when the test binary is started
// by TestSIGTERM as the echo program.
func TestMain(m *testing.M) {
	if os.Getenv("ECHO_TEST_RUN_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func testServer(t *testing.T, readyFile, serveDir string) (*httptest.Server, *testenv.Buffer) {
	t.Helper()
	var access testenv.Buffer
	s := newServer("pod-a", "v7", readyFile, serveDir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ts := httptest.NewServer(s.handler(&access))
	t.Cleanup(ts.Close)
	return ts, &access
}

func do(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestRoot(t *testing.T) {
	ts, access := testServer(t, "", "")
	tests := []struct {
		path       string
		wantStatus int
		wantPath   string
	}{
		{"/", 200, "/"},
		{"/some/where?x=1", 200, "/some/where"},
		{"/?delay=1ms", 200, "/"},
		{"/?delay=forever", 400, ""},
		{"/?delay=1h", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			status, body := do(t, "GET", ts.URL+tt.path)
			if status != tt.wantStatus {
				t.Fatalf("GET %s: status %d (%s), want %d", tt.path, status, body, tt.wantStatus)
			}
			if status != 200 {
				return
			}
			var a Answer
			if err := json.Unmarshal([]byte(body), &a); err != nil {
				t.Fatalf("decode %q: %v", body, err)
			}
			if a.Pod != "pod-a" || a.Version != "v7" || a.Path != tt.wantPath || !strings.HasPrefix(a.Remote, "127.0.0.1:") {
				t.Errorf("GET %s answered %+v, want pod-a, v7, path %s, a 127.0.0.1 remote", tt.path, a, tt.wantPath)
			}
		})
	}
	if got := access.String(); !strings.Contains(got, "GET /some/where?x=1 from 127.0.0.1:") || !strings.Contains(got, ": 400\n") {
		t.Errorf("access log lacks the requests and their statuses:\n%s", got)
	}
}

func TestProbes(t *testing.T) {
	readyFile := filepath.Join(t.TempDir(), "ready")
	ts, _ := testServer(t, readyFile, "")
	type step struct {
		method, path string
		create       bool // create the ready file before the request
		remove       bool // remove it before the request
		wantStatus   int
	}
	steps := []step{
		{method: "GET", path: "/healthz", wantStatus: 200},
		{method: "GET", path: "/ready", wantStatus: 503}, // no ready file yet
		{method: "GET", path: "/ready", create: true, wantStatus: 200},
		{method: "POST", path: "/ready?fail=1", wantStatus: 200},
		{method: "GET", path: "/ready", wantStatus: 503},
		{method: "GET", path: "/healthz", wantStatus: 200}, // readiness does not touch liveness
		{method: "POST", path: "/ready?fail=0", wantStatus: 200},
		{method: "GET", path: "/ready", wantStatus: 200},
		{method: "GET", path: "/ready", remove: true, wantStatus: 503},
		{method: "POST", path: "/healthz?fail=1", wantStatus: 200},
		{method: "GET", path: "/healthz", wantStatus: 503},
		{method: "POST", path: "/healthz?fail=no-way", wantStatus: 400},
		{method: "POST", path: "/healthz?fail=false", wantStatus: 200},
		{method: "GET", path: "/healthz", wantStatus: 200},
	}
	for i, s := range steps {
		if s.create {
			if err := os.WriteFile(readyFile, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if s.remove {
			if err := os.Remove(readyFile); err != nil {
				t.Fatal(err)
			}
		}
		if status, body := do(t, s.method, ts.URL+s.path); status != s.wantStatus {
			t.Errorf("step %d: %s %s: status %d (%s), want %d", i, s.method, s.path, status, body, s.wantStatus)
		}
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte("secret-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A projected volume's files are symbolic links through ..data.
	if err := os.Symlink("token", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, serveDir, path string
		wantStatus           int
		wantBody             string
	}{
		{"file", dir, "/files/token", 200, "secret-token"},
		{"symlink", dir, "/files/link", 200, "secret-token"},
		{"missing", dir, "/files/nothing", 404, ""},
		{"no serve dir", "", "/files/token", 200, `"path":"/files/token"`}, // answered like /
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, _ := testServer(t, "", tt.serveDir)
			status, body := do(t, "GET", ts.URL+tt.path)
			if status != tt.wantStatus || !strings.Contains(body, tt.wantBody) {
				t.Errorf("GET %s: %d %q, want %d with %q", tt.path, status, body, tt.wantStatus, tt.wantBody)
			}
		})
	}
}

// backends starts n echo servers named pod-0 .. pod-<n-1> and returns their
// URLs and a URL that spreads connections over them round robin, as a
// Service does (per connection, not per request).
func backends(t *testing.T, n int) (urls []string, balanced string) {
	t.Helper()
	for i := range n {
		s := newServer(fmt.Sprintf("pod-%d", i), "v1", "", "", slog.New(slog.NewTextHandler(io.Discard, nil)))
		ts := httptest.NewServer(s.handler(io.Discard))
		t.Cleanup(ts.Close)
		urls = append(urls, ts.URL)
	}
	var mu sync.Mutex
	next := 0
	lb := httptest.NewUnstartedServer(nil)
	lb.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// One backend per connection: the server closes after each
		// answer when the client disabled keep-alives, so a new
		// connection is a new request here.
		mu.Lock()
		u := urls[next%n]
		next++
		mu.Unlock()
		resp, err := http.Get(u + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})
	lb.Start()
	t.Cleanup(lb.Close)
	return urls, lb.URL
}

func TestGet(t *testing.T) {
	urls, balanced := backends(t, 3)
	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantPods   []string // lines of stdout
		wantStderr string
	}{
		{"one call", []string{"get", urls[1]}, 0, []string{"pod-1"}, ""},
		{"spread", []string{"get", "-n", "6", balanced + "/x"}, 0, []string{"pod-0", "pod-1", "pod-2", "pod-0", "pod-1", "pod-2"}, ""},
		{"refused", []string{"get", "-n", "2", "http://127.0.0.1:1/"}, 1, nil, "2 of 2 calls to http://127.0.0.1:1/ failed"},
		{"not echo", []string{"get", urls[0] + "/healthz"}, 1, nil, "decode answer"},
		{"no url", []string{"get"}, 2, nil, "usage: echo get"},
		{"bad flag", []string{"get", "--nope", urls[0]}, 2, nil, "flag provided but not defined"},
		{"unknown command", []string{"fly"}, 2, nil, `unknown command "fly"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			status := run(context.Background(), tt.args, &stdout, &stderr)
			if status != tt.wantStatus {
				t.Errorf("exit status %d, want %d; stderr:\n%s", status, tt.wantStatus, stderr.String())
			}
			if got := strings.Fields(stdout.String()); strings.Join(got, ",") != strings.Join(tt.wantPods, ",") {
				t.Errorf("printed pods %q, want %q", got, tt.wantPods)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q does not say %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}

func TestFetch(t *testing.T) {
	_, balanced := backends(t, 2)
	ts, _ := testServer(t, "", "")
	tests := []struct {
		name       string
		query      string
		wantStatus int
		wantPods   []string
		wantErrors int
	}{
		{"spread", "?n=4&url=" + balanced, 200, []string{"pod-0", "pod-1", "pod-0", "pod-1"}, 0},
		{"refused", "?n=2&url=http://127.0.0.1:1/", 200, nil, 2},
		{"no n", "?url=" + balanced, 400, nil, 0},
		{"no url", "?n=1", 400, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := do(t, "GET", ts.URL+"/fetch"+tt.query)
			if status != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", status, body, tt.wantStatus)
			}
			if status != 200 {
				return
			}
			var res FetchResult
			if err := json.Unmarshal([]byte(body), &res); err != nil {
				t.Fatalf("decode %q: %v", body, err)
			}
			var pods []string
			for _, a := range res.Answers {
				pods = append(pods, a.Pod)
			}
			if strings.Join(pods, ",") != strings.Join(tt.wantPods, ",") || len(res.Errors) != tt.wantErrors {
				t.Errorf("answers from %q and %d errors (%q), want %q and %d", pods, len(res.Errors), res.Errors, tt.wantPods, tt.wantErrors)
			}
		})
	}
}

func TestServeFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantStderr string
	}{
		{"required file missing", []string{"serve", "--listen", "127.0.0.1:0", "--require-file", filepath.Join(dir, "sidecar-started")}, 1, "check required file"},
		{"stray argument", []string{"serve", "extra"}, 2, "unexpected arguments"},
		{"bad address", []string{"--listen", "nowhere:-1"}, 1, "listen on nowhere:-1"},
		{"help", []string{"serve", "-h"}, 0, "-ready-file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if status := run(context.Background(), tt.args, &stdout, &stderr); status != tt.wantStatus {
				t.Errorf("exit status %d, want %d; stderr:\n%s", status, tt.wantStatus, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q does not say %q", stderr.String(), tt.wantStderr)
			}
		})
	}
}

// TestSIGTERM runs the program, checks the files it writes and its
// start-up line, sends SIGTERM while a request is in flight, and checks
// that the request completes and the program exits 0 and cleans up.
func TestSIGTERM(t *testing.T) {
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	required := filepath.Join(dir, "required")
	if err := os.WriteFile(required, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "serve", "--listen", "127.0.0.1:0", "--started-file", started, "--require-file", required)
	cmd.Env = append(os.Environ(), "ECHO_TEST_RUN_MAIN=1", "POD_NAME=term-pod", "VERSION=v9")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr testenv.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("no start-up line; stderr:\n%s", stderr.String())
	}
	first := lines.Text()
	const prefix = "echo term-pod (version v9) listening on "
	addr, ok := strings.CutPrefix(first, prefix)
	if !ok {
		t.Fatalf("start-up line %q, want %q + address", first, prefix)
	}
	if b, err := os.ReadFile(started); err != nil || !strings.HasPrefix(string(b), "term-pod ") {
		t.Errorf("started file: %q, %v; want it to name the pod", b, err)
	}
	go io.Copy(io.Discard, stdout) // access log lines

	resp, err := http.Get("http://" + addr + "/slow?delay=300ms")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The headers are in: the request is in flight.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var a Answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil || a.Path != "/slow" || a.Pod != "term-pod" {
		t.Errorf("request in flight at SIGTERM: %+v, %v; want its answer", a, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v, want status 0; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute): // hang guard
		t.Fatalf("still running a minute after SIGTERM; stderr:\n%s", stderr.String())
	}
	if _, err := os.Stat(started); !os.IsNotExist(err) {
		t.Errorf("started file left behind after exit: %v", err)
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("log does not say it stopped:\n%s", stderr.String())
	}
}
