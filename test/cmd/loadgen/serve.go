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

// listenerStats counts the requests one listener of the app served, by
// where they came from: the benchmark tells a proxied request (from
// loopback, the proxy's connection) from a direct one by it.
type listenerStats struct {
	addr, proto     string
	loopback, other atomic.Int64
}

// ListenerCount is one listener's line of the app's stats.
type ListenerCount struct {
	Addr     string `json:"addr"`
	Proto    string `json:"proto"`
	Loopback int64  `json:"loopback"`
	Other    int64  `json:"other"`
}

func (s *listenerStats) count(remote string) {
	if ap, err := netip.ParseAddrPort(remote); err == nil && ap.Addr().Unmap().IsLoopback() {
		s.loopback.Add(1)
		return
	}
	s.other.Add(1)
}

// app is the upstream application: HTTP/1.1 and h2c servers answering every
// request with a fixed body, and gRPC servers with the standard health
// service, each listener counting what it served.
type app struct {
	body      []byte
	listeners []*listenerStats
	statsAddr string   // where the counts are served, if anywhere
	servers   []func() // close functions
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

// serveHTTP serves HTTP/1.1 and h2c (prior knowledge) on l.
func (a *app) serveHTTP(l net.Listener) {
	st := &listenerStats{addr: l.Addr().String(), proto: "http"}
	a.listeners = append(a.listeners, st)
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
	st := &listenerStats{addr: l.Addr().String(), proto: "grpc"}
	a.listeners = append(a.listeners, st)
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

// stats serves the listeners' counters as JSON.
func (a *app) stats(w http.ResponseWriter, _ *http.Request) {
	out := make([]ListenerCount, len(a.listeners))
	for i, s := range a.listeners {
		out[i] = ListenerCount{Addr: s.addr, Proto: s.proto, Loopback: s.loopback.Load(), Other: s.other.Load()}
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

// startApp listens on every address of the comma-separated lists httpAddrs
// and grpcAddrs and, if statsAddr is set, serves the counters there.
func startApp(httpAddrs, grpcAddrs, statsAddr string, bodySize int) (*app, error) {
	a := &app{body: []byte(strings.Repeat("x", bodySize))}
	for _, group := range []struct {
		addrs string
		serve func(net.Listener)
	}{{httpAddrs, a.serveHTTP}, {grpcAddrs, a.serveGRPC}} {
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
	if statsAddr != "" {
		l, err := listen(statsAddr)
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
