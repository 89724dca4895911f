package command

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/sluice-mesh/sluice/controlplane/admin"
)

// commonOptions are the flags every service has.
type commonOptions struct {
	kubeconfig   string
	adminAddr    string
	logLevel     string
	logFormat    string
	drainTimeout time.Duration
}

func newCommonOptions(adminPort int) *commonOptions {
	return &commonOptions{
		adminAddr:    fmt.Sprintf(":%d", adminPort),
		logLevel:     "info",
		logFormat:    "json",
		drainTimeout: 10 * time.Second,
	}
}

func (o *commonOptions) bind(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else the pod's service account)")
	f.StringVar(&o.adminAddr, "admin-addr", o.adminAddr, "address of the admin server (/metrics, /ready, /live)")
	f.StringVar(&o.logLevel, "log-level", o.logLevel, "log level: debug, info, warn or error")
	f.StringVar(&o.logFormat, "log-format", o.logFormat, "log format: json or text")
	f.DurationVar(&o.drainTimeout, "drain-timeout", o.drainTimeout, "how long SIGTERM waits for open requests and streams before closing them")
}

func (o *commonOptions) validate() error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %q is not debug, info, warn or error", o.logLevel)
	}
	if o.logFormat != "json" && o.logFormat != "text" {
		return fmt.Errorf("--log-format: %q is not json or text", o.logFormat)
	}
	if _, _, err := net.SplitHostPort(o.adminAddr); err != nil {
		return fmt.Errorf("--admin-addr: %w", err)
	}
	if o.drainTimeout < 0 {
		return fmt.Errorf("--drain-timeout must not be negative")
	}
	return nil
}

// logger returns the service's logger, writing to w.
func (o *commonOptions) logger(service string) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(o.logLevel))
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, opts)
	if o.logFormat == "text" {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	return slog.New(h).With("service", service)
}

// newRegistry returns a registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// server is one listener a service runs until the context ends.
type server struct {
	name string
	lis  net.Listener
	// serve blocks serving lis until stop or shutdown is called.
	serve func(net.Listener) error
	// shutdown stops gracefully, giving up when ctx ends.
	shutdown func(ctx context.Context) error
	// stop stops at once.
	stop func()
}

// httpServer wraps an http.Server as a server; tls says whether to serve
// TLS (the http.Server's TLSConfig then holds the certificates).
func httpServer(name string, lis net.Listener, s *http.Server, tls bool) server {
	return server{
		name: name,
		lis:  lis,
		serve: func(l net.Listener) error {
			if tls {
				return s.ServeTLS(l, "", "")
			}
			return s.Serve(l)
		},
		shutdown: s.Shutdown,
		stop:     func() { s.Close() },
	}
}

// grpcServer wraps a gRPC server as a server. Its graceful stop calls
// first (when not nil) and then waits for open calls, stopping them at
// once when the drain time is up: first ends long-lived streams that
// would otherwise last as long as their clients.
func grpcServer(name string, lis net.Listener, gs *grpc.Server, first func()) server {
	return server{
		name:  name,
		lis:   lis,
		serve: gs.Serve,
		shutdown: func(ctx context.Context) error {
			if first != nil {
				first()
			}
			done := make(chan struct{})
			go func() { gs.GracefulStop(); close(done) }()
			select {
			case <-done:
				return nil
			case <-ctx.Done():
				gs.Stop()
				return ctx.Err()
			}
		},
		stop: gs.Stop,
	}
}

// adminServer returns the admin server on o.adminAddr.
func (o *commonOptions) adminServer(reg prometheus.Gatherer, ready func() error) (server, error) {
	lis, err := listen(o.adminAddr)
	if err != nil {
		return server{}, err
	}
	return httpServer("admin", lis, &http.Server{
		Handler:           admin.Handler(admin.Options{Gatherer: reg, Ready: ready}),
		ReadHeaderTimeout: 10 * time.Second,
	}, false), nil
}

// listen listens on a TCP address without MPTCP.
func listen(addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	lis, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return lis, nil
}

// run serves every server until ctx ends or one fails, then shuts them all
// down, giving open requests up to o.drainTimeout. background, when not
// nil, runs beside them (informers, file watchers) and ends with them.
func (o *commonOptions) run(ctx context.Context, log *slog.Logger, servers []server, background func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(servers)+1)
	for _, s := range servers {
		log.Info("serving", "server", s.name, "addr", s.lis.Addr().String())
		go func() {
			err := s.serve(s.lis)
			if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				errc <- fmt.Errorf("serve %s on %s: %w", s.name, s.lis.Addr(), err)
				return
			}
			errc <- nil
		}()
	}
	// bgDone stays nil (never ready) without a background function.
	var bgDone chan error
	if background != nil {
		bgDone = make(chan error, 1)
		go func() { bgDone <- background(ctx) }()
	}
	var first error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "drain_timeout", o.drainTimeout.String())
	case first = <-errc:
		if first == nil {
			first = errors.New("a server stopped")
		}
	case err := <-bgDone:
		if err != nil && ctx.Err() == nil {
			first = err
		}
		bgDone <- nil // for the wait below
	}
	cancel()
	drain, cancelDrain := context.WithTimeout(context.Background(), o.drainTimeout)
	defer cancelDrain()
	done := make(chan struct{})
	go func() {
		for _, s := range servers {
			if err := s.shutdown(drain); err != nil {
				s.stop()
			}
		}
		close(done)
	}()
	select {
	case <-done:
	case <-drain.Done():
		for _, s := range servers {
			s.stop()
		}
	}
	if background != nil {
		<-bgDone
	}
	if first != nil {
		log.Error("stopped", "error", first.Error())
		return first
	}
	log.Info("stopped")
	return nil
}
