package demoapp

import (
	"context"
	"log/slog"
	"net"
	"net/http"
)

// AuthorsConfig configures the authors role.
type AuthorsConfig struct {
	// FailureRate is the fraction, in [0, 1], of GET /authors/<id> requests
	// answered with 500 Internal Server Error, chosen at random.
	FailureRate float64
	// Log receives the server's logs; nil discards them.
	Log *slog.Logger
}

// AuthorsHandler returns the authors service's HTTP handler:
//
//	GET /authors/<id>  the author as JSON (Author); 404 for an unknown id;
//	                   500 for a random FailureRate of requests
//	GET /healthz       "ok" (never fails)
func AuthorsHandler(cfg AuthorsConfig) http.Handler {
	authors := catalogAuthors()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /authors/{id}", func(w http.ResponseWriter, r *http.Request) {
		if injectFailure(cfg.FailureRate) {
			http.Error(w, "authors: injected failure (--failure-rate)", http.StatusInternalServerError)
			return
		}
		a, ok := authors[r.PathValue("id")]
		if !ok {
			http.Error(w, "authors: no author "+r.PathValue("id"), http.StatusNotFound)
			return
		}
		writeJSON(w, a)
	})
	return mux
}

// RunAuthors serves the authors service (AuthorsHandler) over HTTP/1.1 on
// l until ctx ends, then shuts down gracefully and returns nil.
func RunAuthors(ctx context.Context, l net.Listener, cfg AuthorsConfig) error {
	return serveHTTP(ctx, l, AuthorsHandler(cfg), orDiscard(cfg.Log))
}
