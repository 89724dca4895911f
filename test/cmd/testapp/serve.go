package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
)

// serveOptions are the flags of `testapp serve`.
type serveOptions struct {
	http, grpc, tcpEcho, opaque string
	delay                       time.Duration
	name                        string
}

// ReadyEvent is the line serve prints once every listener is open: the
// addresses actually bound (useful with port 0).
type ReadyEvent struct {
	Event   string `json:"event"` // "ready"
	Name    string `json:"name"`
	HTTP    string `json:"http,omitempty"`
	GRPC    string `json:"grpc,omitempty"`
	TCPEcho string `json:"tcp_echo,omitempty"`
	Opaque  string `json:"opaque,omitempty"`
}

func newCmdServe() *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve HTTP/1.1+h2c, gRPC, TCP echo and an opaque binary protocol",
		Long: `serve runs the test application until SIGTERM or SIGINT.

--http serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port:
  /echo              echoes the request body (full duplex)
  /sha256            reads the whole body, answers {"bytes","sha256",...}
  /bytes?n=N&seed=S  streams N deterministic bytes, trailer x-sha256
  /status/CODE       answers CODE without reading the body
  /delay?d=50ms      answers after the delay
  /headers           answers the received request as JSON
  /ws                WebSocket echo
Every answer carries x-app-name: NAME.
--grpc serves grpc.testing.TestService (unary, server-, client- and bidi
  streaming); request metadata x-delay delays the answer, ResponseStatus sets
  the status; every call answers header x-app-name and trailer x-trailer.
--tcp-echo echoes bytes until EOF, then half-closes (CloseWrite).
--opaque speaks a server-first binary protocol (see "testapp opaque --help").
--delay delays every HTTP and gRPC answer.

serve prints {"event":"ready",...} once listening, then one line per TCP,
opaque and gRPC exchange.`,
		Args: cobra.NoArgs,
		RunE: runE(o.validate, o.run),
	}
	f := cmd.Flags()
	f.StringVar(&o.http, "http", "", "HTTP/1.1 and h2c listen address")
	f.StringVar(&o.grpc, "grpc", "", "gRPC listen address")
	f.StringVar(&o.tcpEcho, "tcp-echo", "", "TCP echo listen address")
	f.StringVar(&o.opaque, "opaque", "", "opaque protocol listen address")
	f.DurationVar(&o.delay, "delay", 0, "fixed delay added to every HTTP and gRPC answer")
	f.StringVar(&o.name, "name", "testapp", "name answered in x-app-name")
	return cmd
}

func (o *serveOptions) validate() error {
	if o.http == "" && o.grpc == "" && o.tcpEcho == "" && o.opaque == "" {
		return errors.New("validate flags: give at least one of --http, --grpc, --tcp-echo, --opaque")
	}
	if o.delay < 0 {
		return fmt.Errorf("validate flags: negative --delay %s", o.delay)
	}
	return nil
}

// app is the running server side.
type app struct {
	name  string
	delay time.Duration
	out   *jsonOut
}

// run opens every listener, prints the ready line and serves until ctx ends.
func (o *serveOptions) run(ctx context.Context, out *jsonOut) error {
	a := &app{name: o.name, delay: o.delay, out: out}
	ready := ReadyEvent{Event: "ready", Name: o.name}
	var (
		listeners []net.Listener
		serves    []func(net.Listener) error
		stops     []func()
	)
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	add := func(addr string, bound *string, serve func(net.Listener) error, stop func()) error {
		if addr == "" {
			return nil
		}
		l, err := listen(ctx, addr)
		if err != nil {
			return err
		}
		*bound = l.Addr().String()
		listeners = append(listeners, l)
		serves = append(serves, serve)
		stops = append(stops, stop)
		return nil
	}
	hs := a.httpServer()
	gs := a.grpcServer()
	var conns sync.WaitGroup
	connCtx, cancelConns := context.WithCancel(ctx)
	defer cancelConns()
	if err := errors.Join(
		add(o.http, &ready.HTTP, hs.Serve, func() { _ = hs.Close() }),
		add(o.grpc, &ready.GRPC, gs.Serve, gs.Stop),
		add(o.tcpEcho, &ready.TCPEcho, func(l net.Listener) error { return a.acceptLoop(connCtx, l, &conns, a.echoConn) }, nil),
		add(o.opaque, &ready.Opaque, func(l net.Listener) error { return a.acceptLoop(connCtx, l, &conns, a.opaqueConn) }, nil),
	); err != nil {
		closeAll()
		return fmt.Errorf("serve: %w", err)
	}
	errc := make(chan error, len(serves))
	for i, serve := range serves {
		go func() { errc <- serve(listeners[i]) }()
	}
	out.line(ready)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	closeAll()
	for _, stop := range stops {
		if stop != nil {
			stop()
		}
	}
	cancelConns()
	conns.Wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// acceptLoop accepts connections on l and handles each in its own goroutine
// until l is closed; handlers' connections are closed when ctx ends.
func (a *app) acceptLoop(ctx context.Context, l net.Listener, wg *sync.WaitGroup, handle func(*net.TCPConn)) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		tc := c.(*net.TCPConn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { tc.Close() })
			defer stop()
			defer tc.Close()
			handle(tc)
		}()
	}
}

// sleep waits d or until ctx ends, whichever is first, and returns ctx's
// error in the second case.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
