// Package server serves the agent's admin API (see agent/api) on a unix
// socket.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/enroll"
)

// Enroller is what the API drives; *enroll.Manager implements it.
type Enroller interface {
	Enroll(ctx context.Context, req api.EnrollRequest) (api.Enrollment, error)
	Unenroll(ctx context.Context, cookie uint64) error
	List() []api.Enrollment
}

var _ Enroller = (*enroll.Manager)(nil)

// Handler returns the API's HTTP handler. status is called per request.
func Handler(e Enroller, status func() api.Status, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/enrollments", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, e.List())
	})
	mux.HandleFunc("POST /v1/enrollments", func(w http.ResponseWriter, r *http.Request) {
		var req api.EnrollRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("decode enrollment request: %w", err))
			return
		}
		en, err := e.Enroll(r.Context(), req)
		if err != nil {
			log.Warn("enroll failed", "netns", req.NetNS, "pid", req.PID, "err", err)
			writeErr(w, code(err), err)
			return
		}
		writeJSON(w, http.StatusCreated, en)
	})
	mux.HandleFunc("DELETE /v1/enrollments/{cookie}", func(w http.ResponseWriter, r *http.Request) {
		c, err := strconv.ParseUint(r.PathValue("cookie"), 10, 64)
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("netns cookie %q is not a number", r.PathValue("cookie")))
			return
		}
		if err := e.Unenroll(r.Context(), c); err != nil {
			writeErr(w, code(err), err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.Handle("GET /v1/status", JSONHandler(status))
	return mux
}

// JSONHandler answers every request it gets with get's result as JSON. The
// admin API serves the agent's status with it, and so does the agent's
// read-only HTTP port (see sluice-agent run).
func JSONHandler[T any](get func() T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, get())
	})
}

func code(err error) int {
	switch {
	case errors.Is(err, enroll.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, enroll.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, enroll.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, enroll.ErrFull):
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, api.Error{Error: err.Error()})
}

// Listen opens the unix socket at path (mode 0600), replacing a stale one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen on %s: another agent is serving there", path)
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}
