package command

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/server"
	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

var (
	testStatus = api.Status{
		Version: "v0.1.0", Mode: api.ModeEBPF, PinRoot: "/sys/fs/bpf/sluice", CgroupV2: "/sys/fs/cgroup/unified",
		Kernel:   "6.18.44-fc-v669",
		Features: []api.Feature{{Name: "sk_lookup", MinKernel: "5.9", Required: true, OK: true}},
		Programs: []api.Program{{Name: "sluice_connect4", Type: "CGroupSockAddr", Attached: true}},
		Pins:     []string{"progs/sluice_connect4"},
		Maps:     []api.MapUsage{{Name: "pods", Entries: 2, MaxEntries: 1024}},
	}
	testFacts = nodefacts.Facts{Kernel: "6.18.44-fc-v669", BTF: true, Cgroup2Mount: "/sys/fs/cgroup/unified", BPFFSMounted: true}
)

func get(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestHTTPStatus checks that the HTTP port serves the admin API's status
// document, byte for byte, and nothing that changes state.
func TestHTTPStatus(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_agent_test_total", Help: "test"}))
	status := func() api.Status { return testStatus }
	h := httpHandler(reg, status, func() nodefacts.Facts { return testFacts })

	code, body := get(t, h, http.MethodGet, "/status")
	if code != http.StatusOK {
		t.Fatalf("GET /status: %d %s", code, body)
	}
	var got api.Status
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, testStatus) {
		t.Errorf("GET /status = %+v, want %+v", got, testStatus)
	}
	_, socketBody := get(t, server.Handler(nil, status, slog.New(slog.DiscardHandler)), http.MethodGet, "/v1/status")
	if socketBody != body {
		t.Errorf("GET /status differs from the admin API's GET /v1/status:\n%s\n%s", body, socketBody)
	}

	code, body = get(t, h, http.MethodGet, "/node-facts")
	var facts nodefacts.Facts
	if err := json.Unmarshal([]byte(body), &facts); code != http.StatusOK || err != nil || facts != testFacts {
		t.Errorf("GET /node-facts: %d %s (%v)", code, body, err)
	}

	for _, path := range []string{"/status", "/node-facts"} {
		if code, _ := get(t, h, http.MethodPost, path); code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d, want 405", path, code)
		}
	}
	for _, path := range []string{"/v1/enrollments", "/v1/status"} {
		if code, _ := get(t, h, http.MethodGet, path); code != http.StatusNotFound {
			t.Errorf("GET %s on the HTTP port: %d, want 404 (the admin API stays on the socket)", path, code)
		}
	}
	if code, body := get(t, h, http.MethodGet, "/metrics"); code != http.StatusOK || !strings.Contains(body, "sluice_agent_test_total 0") {
		t.Errorf("GET /metrics: %d %s", code, body)
	}
	for path, want := range map[string]string{"/live": "live\n", "/ready": "ready\n"} {
		if code, body := get(t, h, http.MethodGet, path); code != http.StatusOK || body != want {
			t.Errorf("GET %s: %d %q", path, code, body)
		}
	}
}
