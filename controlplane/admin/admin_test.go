package admin

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(3)
	var notReady error = errors.New("informers not synced")
	h := Handler(Options{Gatherer: reg, Ready: func() error { return notReady }})

	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	for _, tc := range []struct {
		path     string
		code     int
		contains string
	}{
		{"/live", 200, "live\n"},
		{"/ready", 503, "not ready: informers not synced"},
		{"/metrics", 200, "test_things_total 3"},
		{"/nope", 404, ""},
	} {
		code, body := get(tc.path)
		if code != tc.code || !strings.Contains(body, tc.contains) {
			t.Errorf("GET %s = %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.contains)
		}
	}
	notReady = nil
	if code, body := get("/ready"); code != 200 || body != "ready\n" {
		t.Errorf("GET /ready when ready = %d %q", code, body)
	}
}
