package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// listenerStats counts what one listener of the app served: the
// connections it accepted, and its requests (a sink's: connections) by
// where they came from. The benchmark tells a proxied request (from
// loopback, the proxy's connection) from a direct one by it.
type listenerStats struct {
	addr, proto     string
	loopback, other atomic.Int64
	conns           atomic.Int64
}

// ListenerCount is one listener's line of the app's stats.
type ListenerCount struct {
	Addr     string `json:"addr"`
	Proto    string `json:"proto"` // http, grpc or tcp (a sink)
	Loopback int64  `json:"loopback"`
	Other    int64  `json:"other"`
	// Connections accepted.
	Conns int64 `json:"conns"`
}

func (s *listenerStats) count(remote string) {
	if ap, err := netip.ParseAddrPort(remote); err == nil && ap.Addr().Unmap().IsLoopback() {
		s.loopback.Add(1)
		return
	}
	s.other.Add(1)
}

// countingListener counts the connections it accepts in st.
type countingListener struct {
	net.Listener
	st *listenerStats
}

// Accept waits for the next connection and counts it.
func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.st.conns.Add(1)
	}
	return c, err
}

// app is the upstream application: HTTP/1.1 and h2c servers answering every
// request with a fixed body, gRPC servers with the standard health service
// and TCP byte sinks, each listener counting what it served.
type app struct {
	body      []byte
	listeners []*listenerStats
	statsAddr string   // where the counts are served, if anywhere
	servers   []func() // close functions
}

// appConfig says where the app listens: comma-separated address lists per
// kind of listener, and the stats address (none if empty).
type appConfig struct {
	HTTP, GRPC, Sink string
	Stats            string
	Body             int // HTTP response body size in bytes
}

// listen opens a plain TCP listener (no MPTCP).
func listen(addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// track adds the stats of listener l serving proto and returns them with l
// wrapped to count its connections.
func (a *app) track(l net.Listener, proto string) (*listenerStats, net.Listener) {
	st := &listenerStats{addr: l.Addr().String(), proto: proto}
	a.listeners = append(a.listeners, st)
	return st, countingListener{Listener: l, st: st}
}

// serveHTTP serves HTTP/1.1 and h2c (prior knowledge) on l.
func (a *app) serveHTTP(l net.Listener) {
	st, l := a.track(l, "http")
	body := a.body
	size := fmt.Sprint(len(body))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st.count(r.RemoteAddr)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", size)
		_, _ = w.Write(body)
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	a.servers = append(a.servers, func() { srv.Close() })
	go func() { _ = srv.Serve(l) }()
}

// serveGRPC serves grpc.health.v1.Health on l.
func (a *app) serveGRPC(l net.Listener) {
	st, l := a.track(l, "grpc")
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if p, ok := peer.FromContext(ctx); ok {
			st.count(p.Addr.String())
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	a.servers = append(a.servers, srv.Stop)
	go func() { _ = srv.Serve(l) }()
}

// serveSink runs the byte sink of loadgen tcp on l, counting each
// connection as one request.
func (a *app) serveSink(l net.Listener) {
	st, l := a.track(l, "tcp")
	s := newSink(l, st)
	a.servers = append(a.servers, s.close)
	go s.serve()
}

// stats serves the listeners' counters as JSON.
func (a *app) stats(w http.ResponseWriter, _ *http.Request) {
	out := make([]ListenerCount, len(a.listeners))
	for i, s := range a.listeners {
		out[i] = ListenerCount{Addr: s.addr, Proto: s.proto, Loopback: s.loopback.Load(), Other: s.other.Load(), Conns: s.conns.Load()}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// close stops every server.
func (a *app) close() {
	for _, c := range a.servers {
		c()
	}
}

// startApp listens on every address of cfg and, if cfg.Stats is set, serves
// the counters there. It returns once every listener is up.
func startApp(cfg appConfig) (*app, error) {
	a := &app{body: []byte(strings.Repeat("x", cfg.Body))}
	for _, group := range []struct {
		addrs string
		serve func(net.Listener)
	}{{cfg.HTTP, a.serveHTTP}, {cfg.GRPC, a.serveGRPC}, {cfg.Sink, a.serveSink}} {
		for addr := range strings.SplitSeq(group.addrs, ",") {
			if addr = strings.TrimSpace(addr); addr == "" {
				continue
			}
			l, err := listen(addr)
			if err != nil {
				a.close()
				return nil, err
			}
			group.serve(l)
		}
	}
	if cfg.Stats != "" {
		l, err := listen(cfg.Stats)
		if err != nil {
			a.close()
			return nil, err
		}
		a.statsAddr = l.Addr().String()
		srv := &http.Server{Handler: http.HandlerFunc(a.stats)}
		a.servers = append(a.servers, func() { srv.Close() })
		go func() { _ = srv.Serve(l) }()
	}
	return a, nil
}
