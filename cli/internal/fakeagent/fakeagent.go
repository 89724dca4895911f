// Package fakeagent serves a canned node-agent status on a unix socket, for
// tests of the checks that talk to the agent.
package fakeagent

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
)

// Serve answers GET /v1/status with st on a new unix socket until the test
// ends, and returns the socket's path.
func Serve(t testing.TB, st api.Status) string {
	t.Helper()
	// t.TempDir's long paths can exceed the 108 bytes a socket path may have.
	dir, err := os.MkdirTemp("", "fakeagent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return socket
}
