// Package server assembles the proxy: it opens the outbound, inbound, tap
// and admin listeners, reads each connection's original destination,
// detects its protocol and hands it to the HTTP proxy or the opaque relay
// of its direction, answers the node agent's steering probe, and shuts down
// gracefully. With an identity configured it keeps the proxy's certificate
// fresh (proxy/identity), originates mutual TLS to meshed endpoints and
// terminates it from meshed clients (proxy/mtls).
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/proxy/admin"
	"github.com/sluice-mesh/sluice/proxy/balance"
	"github.com/sluice-mesh/sluice/proxy/config"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/proxy/httpproxy"
	"github.com/sluice-mesh/sluice/proxy/identity"
	"github.com/sluice-mesh/sluice/proxy/inbound"
	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/mtls"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/outbound"
	"github.com/sluice-mesh/sluice/proxy/tap"
)

// Options are what a Server needs beyond its configuration.
type Options struct {
	Network  netx.Network   // nil: netx.Kernel
	Logger   *slog.Logger   // nil: discard
	LogLevel *slog.LevelVar // changed by PUT /proxy-log-level; nil: a fixed info level
}

// Server is one running proxy.
type Server struct {
	cfg     config.Config
	net     netx.Network
	log     *slog.Logger
	level   *slog.LevelVar
	reg     *prometheus.Registry
	metrics *metrics.Registry
	hub     *tap.Hub
	disc    *discovery.Client
	grpcCC  *grpc.ClientConn
	out     *outbound.Router
	in      *inbound.Router
	outHTTP *httpproxy.Proxy
	inHTTP  *httpproxy.Proxy
	id      *identity.Client // nil: identity disabled
	tls     *mtls.TLS        // nil: identity disabled

	listening atomic.Bool
	steered   atomic.Bool
	draining  atomic.Bool
	shutdown  chan struct{}
	once      sync.Once
	relays    sync.WaitGroup
	relayCtx  context.Context
	relayStop context.CancelFunc
	own       map[netip.AddrPort]bool // the proxy's own listen addresses
}

// New builds a Server from cfg; Run starts it.
func New(cfg config.Config, o Options) (*Server, error) {
	if o.Network == nil {
		o.Network = netx.Kernel{DialTimeout: cfg.ConnectTimeout}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.LogLevel == nil {
		o.LogLevel = new(slog.LevelVar)
	}
	s := &Server{
		cfg:      cfg,
		net:      o.Network,
		log:      o.Logger.With("component", "server"),
		level:    o.LogLevel,
		reg:      prometheus.NewRegistry(),
		metrics:  metrics.New(metrics.Options{IdleTimeout: cfg.MetricsRetainIdle}),
		hub:      tap.NewHub(tap.HubOptions{Logger: o.Logger}),
		shutdown: make(chan struct{}),
		own:      map[netip.AddrPort]bool{},
	}
	s.relayCtx, s.relayStop = context.WithCancel(context.Background())
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), s.metrics)
	if cfg.DestinationAddr != "" {
		do := discovery.Options{ContextToken: cfg.DestinationCtx, Logger: o.Logger}
		dialOpts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, discovery.DialOptions(do)...)
		cc, err := grpc.NewClient(cfg.DestinationAddr, dialOpts...)
		if err != nil {
			return nil, fmt.Errorf("connect to destination %s: %w", cfg.DestinationAddr, err)
		}
		s.grpcCC = cc
		s.disc = discovery.NewClient(cc, do)
	}
	if idc := cfg.Identity; idc.Enabled() {
		id, err := identity.New(identity.Config{
			Name:            idc.LocalName,
			Addr:            idc.SvcAddr,
			ServerName:      idc.SvcName,
			TrustAnchorsPEM: idc.TrustAnchorsPEM,
			TokenFile:       idc.TokenFile,
			Dir:             idc.Dir,
			BackoffMin:      idc.BackoffMin,
			BackoffMax:      idc.BackoffMax,
			Logger:          o.Logger,
			Registerer:      s.reg,
		})
		if err != nil {
			return nil, err
		}
		s.id = id
		s.tls, err = mtls.New(mtls.Options{Local: id, Roots: id.Roots(), TrustDomain: idc.TrustDomain, Logger: o.Logger, Registerer: s.reg})
		if err != nil {
			return nil, err
		}
	}
	s.out = outbound.New(outbound.Options{
		Discovery: s.disc,
		Names:     discovery.Names{Namespace: cfg.Namespace, ClusterDomain: cfg.ClusterDomain},
		Balance: balance.Options{
			DefaultRTT:   cfg.EWMADefaultRTT,
			Decay:        cfg.EWMADecay,
			FailureLimit: cfg.FailureLimit,
			BackoffMin:   cfg.BackoffMin,
			BackoffMax:   cfg.BackoffMax,
		},
		Metrics:       s.metrics,
		LocalIdentity: s.tls != nil,
		Logger:        o.Logger,
	})
	s.in = inbound.New(s.metrics)
	httpOpts := func(dir string, r httpproxy.Router) httpproxy.Options {
		var orig httpproxy.Originator // a nil *mtls.TLS must stay a nil interface
		if s.tls != nil {
			orig = s.tls
		}
		return httpproxy.Options{
			TLS:                   orig,
			Direction:             dir,
			Router:                r,
			Network:               s.net,
			ConnectTimeout:        cfg.ConnectTimeout,
			ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
			IdleTimeout:           cfg.IdleTimeout,
			MaxConcurrentStreams:  cfg.MaxConcurrentStreams,
			Metrics:               s.metrics,
			Tap:                   s.hub,
			Logger:                o.Logger,
		}
	}
	s.outHTTP = httpproxy.New(httpOpts("outbound", s.out))
	s.inHTTP = httpproxy.New(httpOpts("inbound", s.in))
	return s, nil
}

// Ready reports whether the proxy should receive traffic: every listener is
// up, steering is confirmed (unless not required), the first certificate
// has arrived (with an identity), and it is not draining.
func (s *Server) Ready() bool {
	return s.listening.Load() && !s.draining.Load() && (s.steered.Load() || !s.cfg.RequireSteering) &&
		(s.id == nil || s.id.Ready())
}

// Shutdown asks Run to drain and return, as SIGTERM does.
func (s *Server) Shutdown() { s.once.Do(func() { close(s.shutdown) }) }

// Run listens and serves until ctx ends or Shutdown is called, then drains
// for at most the grace period. It returns an error if a listener cannot
// be opened.
func (s *Server) Run(ctx context.Context) error {
	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	open := func(addr netip.AddrPort) (net.Listener, error) {
		l, err := s.net.Listen(ctx, addr)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		listeners = append(listeners, l)
		s.own[addr] = true
		return l, nil
	}
	var accept []func()
	for _, a := range s.cfg.OutboundAddrs {
		l, err := open(a)
		if err != nil {
			return err
		}
		accept = append(accept, func() { s.acceptLoop(l, s.handleOutbound) })
	}
	for _, a := range s.cfg.InboundAddrs {
		l, err := open(a)
		if err != nil {
			return err
		}
		accept = append(accept, func() { s.acceptLoop(l, s.handleInbound) })
	}
	adminL, err := open(s.cfg.AdminAddr)
	if err != nil {
		return err
	}
	adminSrv := &http.Server{
		Handler: admin.Handler(admin.Options{
			Gatherer: s.reg,
			Ready:    s.Ready,
			LogLevel: s.level,
			Shutdown: s.Shutdown,
			Logger:   s.log,
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go adminSrv.Serve(adminL)
	var tapSrv *grpc.Server
	if s.cfg.TapAddr.IsValid() {
		tapL, err := open(s.cfg.TapAddr)
		if err != nil {
			adminSrv.Close()
			return err
		}
		tapSrv = grpc.NewServer()
		tappb.RegisterTapServer(tapSrv, tap.NewServer(s.hub))
		go tapSrv.Serve(tapL)
	}
	idDone := make(chan struct{})
	idCtx, idStop := context.WithCancel(context.Background())
	defer idStop()
	if s.id != nil {
		go func() { defer close(idDone); s.id.Run(idCtx) }()
	} else {
		close(idDone)
	}
	for _, f := range accept {
		go f()
	}
	s.listening.Store(true)
	identityName := "(disabled: plaintext between proxies)"
	if s.id != nil {
		identityName = s.id.Name()
	}
	s.log.Info("proxy listening",
		"outbound", s.cfg.OutboundAddrs, "inbound", s.cfg.InboundAddrs,
		"admin", s.cfg.AdminAddr, "tap", s.cfg.TapAddr, "destination", s.cfg.DestinationAddr,
		"require_steering", s.cfg.RequireSteering, "identity", identityName)

	select {
	case <-ctx.Done():
	case <-s.shutdown:
	}
	s.draining.Store(true)
	s.log.Info("shutting down", "grace_period", s.cfg.ShutdownGracePeriod)
	// Stop accepting; the admin listener stays until the end so probes see
	// the proxy draining.
	for _, l := range listeners {
		if l != adminL {
			l.Close()
		}
	}
	grace, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGracePeriod)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range []*httpproxy.Proxy{s.outHTTP, s.inHTTP} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = p.Shutdown(grace) }()
	}
	relaysDone := make(chan struct{})
	go func() { s.relays.Wait(); close(relaysDone) }()
	select {
	case <-relaysDone:
	case <-grace.Done():
		s.relayStop()
		<-relaysDone
	}
	wg.Wait()
	if tapSrv != nil {
		tapSrv.Stop()
	}
	s.out.Close()
	if s.disc != nil {
		s.disc.Close()
		s.grpcCC.Close()
	}
	s.relayStop()
	idStop()
	<-idDone
	adminSrv.Close()
	s.log.Info("proxy stopped")
	return nil
}

// acceptLoop accepts until the listener closes.
func (s *Server) acceptLoop(l net.Listener, handle func(net.Conn)) {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "listener", l.Addr().String(), "error", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		go handle(c)
	}
}
