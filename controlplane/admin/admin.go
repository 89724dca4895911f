// Package admin is the admin HTTP handler every control-plane service
// serves on its admin port: /metrics (Prometheus), /live and /ready. It
// starts no listener; the caller serves the handler.
package admin

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options of the admin handler.
type Options struct {
	// Gatherer is served on /metrics. nil: an empty registry.
	Gatherer prometheus.Gatherer
	// Ready backs /ready: 200 "ready\n" when it returns nil, otherwise 503
	// with the error's text. nil: always ready.
	Ready func() error
}

// Handler returns the admin handler: /metrics, /live (always 200 "live\n")
// and /ready. Other paths get 404.
func Handler(o Options) http.Handler {
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/live", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("live\n"))
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if o.Ready != nil {
			if err := o.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte("not ready: " + err.Error() + "\n"))
				return
			}
		}
		w.Write([]byte("ready\n"))
	})
	return mux
}
