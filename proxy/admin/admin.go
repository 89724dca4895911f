// Package admin is the proxy's admin HTTP handler, served on :4191 as
// Linkerd's proxy serves it: /metrics (Prometheus), /live, /ready,
// /proxy-log-level (GET and PUT) and /shutdown (POST, loopback only). It
// starts no listener; the caller serves the handler.
package admin

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxLevelBody bounds the body of PUT /proxy-log-level.
const maxLevelBody = 1 << 10

// Options of the admin handler.
type Options struct {
	// Gatherer is served on /metrics; the caller includes the Go and
	// process collectors in it. nil: an empty registry.
	Gatherer prometheus.Gatherer
	// Ready backs /ready: 200 "ready\n" when it returns true, 503 "not
	// ready\n" otherwise. nil: always ready.
	Ready func() bool
	// LogLevel backs /proxy-log-level: GET prints the level ("info\n"); PUT
	// sets it from the body (debug, info, warn or error, case-insensitive;
	// anything else is refused with 400 and changes nothing). nil: a fixed
	// info level that PUT cannot change (it answers 501).
	LogLevel *slog.LevelVar
	// Shutdown is called, at most once, by POST /shutdown from a loopback
	// address, which is answered 202. Other methods get 405, other
	// addresses 403. nil: /shutdown answers 501.
	Shutdown func()
	// Logger receives the handler's own messages (level changes, shutdown
	// requests, metrics errors); nil discards them.
	Logger *slog.Logger
}

// Handler returns the admin HTTP handler: /metrics, /live (always 200
// "live\n"), /ready, /proxy-log-level and /shutdown. Unknown paths get 404.
func Handler(o Options) http.Handler {
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	a := &admin{o: o, log: o.Logger.With("component", "admin")}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{
		ErrorLog:      errorLog{a.log},
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("/live", func(w http.ResponseWriter, _ *http.Request) { text(w, http.StatusOK, "live\n") })
	mux.HandleFunc("/ready", a.ready)
	mux.HandleFunc("/proxy-log-level", a.logLevel)
	mux.HandleFunc("/shutdown", a.shutdown)
	return mux
}

type admin struct {
	o    Options
	log  *slog.Logger
	once sync.Once
}

func (a *admin) ready(w http.ResponseWriter, _ *http.Request) {
	if a.o.Ready == nil || a.o.Ready() {
		text(w, http.StatusOK, "ready\n")
		return
	}
	text(w, http.StatusServiceUnavailable, "not ready\n")
}

func (a *admin) logLevel(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		l := slog.LevelInfo
		if a.o.LogLevel != nil {
			l = a.o.LogLevel.Level()
		}
		text(w, http.StatusOK, strings.ToLower(l.String())+"\n")
	case http.MethodPut:
		if a.o.LogLevel == nil {
			text(w, http.StatusNotImplemented, "log level is fixed\n")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxLevelBody))
		if err != nil {
			text(w, http.StatusBadRequest, fmt.Sprintf("read body: %v\n", err))
			return
		}
		l, err := parseLevel(string(body))
		if err != nil {
			text(w, http.StatusBadRequest, err.Error()+"\n")
			return
		}
		a.o.LogLevel.Set(l)
		a.log.Info("log level changed", "level", l)
		text(w, http.StatusOK, strings.ToLower(l.String())+"\n")
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		text(w, http.StatusMethodNotAllowed, "method not allowed\n")
	}
}

// parseLevel reads one of debug, info, warn or error, ignoring case and
// surrounding space.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("parse level %q: want debug, info, warn or error", strings.TrimSpace(s))
}

func (a *admin) shutdown(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		text(w, http.StatusMethodNotAllowed, "method not allowed\n")
		return
	}
	if !loopback(r.RemoteAddr) {
		a.log.Warn("shutdown refused", "remote", r.RemoteAddr)
		text(w, http.StatusForbidden, "shutdown is only allowed from localhost\n")
		return
	}
	if a.o.Shutdown == nil {
		text(w, http.StatusNotImplemented, "shutdown is not available\n")
		return
	}
	a.log.Info("shutdown requested", "remote", r.RemoteAddr)
	a.once.Do(a.o.Shutdown)
	text(w, http.StatusAccepted, "shutdown\n")
}

// loopback reports whether remote (an http.Request's RemoteAddr) is a
// loopback address, IPv4-mapped ones included.
func loopback(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	io.WriteString(w, body)
}

// errorLog passes promhttp's error messages to slog.
type errorLog struct{ log *slog.Logger }

// Println implements promhttp.Logger.
func (l errorLog) Println(v ...any) { l.log.Error("serve metrics", "error", fmt.Sprint(v...)) }
