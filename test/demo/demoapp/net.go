package demoapp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"
)

const (
	// shutdownTimeout bounds a graceful shutdown: after SIGTERM, requests in
	// flight get this long to finish before their connections are closed.
	shutdownTimeout = 10 * time.Second
	// defaultTimeout bounds one call to an upstream service when the
	// configuration leaves it zero.
	defaultTimeout = 5 * time.Second
	// writeTimeout bounds one WebSocket write.
	writeTimeout = 10 * time.Second
)

// listen opens a plain TCP listener (never MPTCP) on addr; ":8080" accepts
// IPv4 and IPv6.
func listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// newDialer returns a dialer of plain TCP connections (never MPTCP).
func newDialer() *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	d.SetMultipathTCP(false)
	return d
}

// newHTTPClient returns an HTTP/1.1 client over plain TCP whose requests
// time out after timeout.
func newHTTPClient(timeout time.Duration, idlePerHost int) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:         newDialer().DialContext,
			MaxIdleConnsPerHost: idlePerHost,
			IdleConnTimeout:     90 * time.Second,
		},
	}
}

// serveHTTP serves h on l until ctx ends, then shuts down gracefully: it
// stops accepting, lets requests in flight finish (for at most
// shutdownTimeout) and returns nil. It returns an error if serving fails.
// Hijacked (WebSocket) connections are the handler's to end when ctx ends.
func serveHTTP(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	log.Info("serving", "addr", l.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("serve http on %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("shut down http server: %w", err)
	}
	return nil
}

// healthz answers readiness probes.
func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

// writeJSON writes v as a JSON answer with status 200.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// orDiscard returns log, or a logger that discards everything if log is nil.
func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// sleep waits for d or until ctx ends, and reports whether it waited all of d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
