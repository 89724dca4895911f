// Package httpproxy forwards HTTP/1.1 and HTTP/2 requests for one of the
// proxy's directions. It serves connections that protocol detection found
// to be HTTP with net/http (HTTP/1.1 and h2c prior knowledge on one server),
// asks a Router where each request goes, forwards it with
// httputil.ReverseProxy over pooled HTTP/1.1 or h2c connections, and
// records Linkerd's metrics and tap events on the way.
//
// Behaviour that users rely on and where it comes from:
//   - hop-by-hop headers (RFC 9110 section 7.6.1: Connection and the fields it
//     names, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Upgrade)
//     are removed by ReverseProxy; Upgrade requests (WebSocket and any other
//     protocol) become a raw bidirectional stream after 101;
//   - trailers, streaming bodies in both directions and flow control are
//     net/http's and x/net/http2's; streamed responses (no Content-Length) are flushed as they arrive;
//   - a client that resets an HTTP/2 stream cancels the upstream request
//     (RST_STREAM CANCEL); an upstream reset mid-response resets the
//     client's stream; Shutdown sends GOAWAY;
//   - errors become 502, 503 or 504 with a sluice-proxy-error header (gRPC
//     requests get grpc-status instead, as gRPC clients expect);
//   - to a target whose TLS labels say "true", the connection is mutual
//     TLS (Options.TLS) to the target's server identity, pooled apart from
//     the plaintext ones; a refused handshake is a 502 whose
//     sluice-proxy-error names the certificate problem.
package httpproxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"time"

	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/tap"
)

// OrigProtoHeader carries an HTTP/1 request's original protocol while two
// Sluice proxies carry it over HTTP/2; the receiving proxy removes it and
// talks HTTP/1.1 to the application.
const OrigProtoHeader = "sluice-orig-proto"

// ExpectHeader carries Expect: 100-continue between two Sluice proxies
// over HTTP/2, whose server would otherwise consume it.
const ExpectHeader = "sluice-expect"

// ErrorHeader names the cause of a response that the proxy made itself.
const ErrorHeader = "sluice-proxy-error"

// Proto is the protocol the proxy speaks to an upstream.
type Proto uint8

// Upstream protocols.
const (
	HTTP1 Proto = iota // HTTP/1.1
	H2                 // HTTP/2 with prior knowledge (h2c)
)

// ConnInfo describes an accepted connection.
type ConnInfo struct {
	Direction string         // "inbound" or "outbound"
	Client    netip.AddrPort // the peer (outbound: the application, by the pod's address when known)
	OrigDst   netip.AddrPort // where the client was going
	TLS       metrics.TLS    // labels of the connection's TLS state (inbound: client_id)
}

// Target is where one request goes.
type Target struct {
	Addr      netip.AddrPort      // the endpoint or application to connect to
	Proto     Proto               // the protocol to speak to it
	OrigProto bool                // set OrigProtoHeader: an HTTP/1 request carried on h2
	Series    *metrics.HTTPSeries // where the request and response are counted
	DstLabels map[string]string   // destination labels, for tap
	// TLS labels the connection to Addr. Status "true" asks for mutual TLS
	// to TLS.ServerID; the zero value means plaintext, labelled with the
	// accepted connection's TLS (as inbound connections to the application
	// are).
	TLS metrics.TLS
	// Done, when not nil, is called once with the request's outcome (a
	// failure is an error or a 5xx), for balancing and failure accrual.
	Done func(failed bool)
}

// ServerID returns the identity the connection to the target must be
// mutual TLS with, or "" for plaintext.
func (t *Target) ServerID() string {
	if t.TLS.Status == "true" {
		return t.TLS.ServerID
	}
	return ""
}

// Router chooses where requests go.
type Router interface {
	// Route returns the request's target, or an *Error to answer with.
	Route(r *http.Request, ci *ConnInfo) (*Target, error)
	// Series returns the series that counts a request Route refused.
	Series(r *http.Request, ci *ConnInfo) *metrics.HTTPSeries
}

// Options configure a Proxy. Zero durations mean "none" except where said.
type Options struct {
	Direction             string
	Router                Router
	Network               netx.Network // nil: netx.Kernel
	ConnectTimeout        time.Duration
	ResponseHeaderTimeout time.Duration // 0: wait as long as the client does
	IdleTimeout           time.Duration // pooled connections; 0: 60s
	ReadHeaderTimeout     time.Duration // slow clients; 0: 10s
	MaxHeaderBytes        int           // request header limit, answered with 431; 0: 64 KiB
	MaxConcurrentStreams  uint32        // per HTTP/2 connection; 0: 1000
	Metrics               *metrics.Registry
	Tap                   *tap.Hub // nil: no tap
	// TLS originates mutual TLS to targets that ask for it; nil: such
	// targets fail with 502 (a proxy without identity never routes to one).
	TLS    Originator
	Logger *slog.Logger
}

// Proxy serves HTTP connections of one direction.
type Proxy struct {
	o     Options
	log   *slog.Logger
	srv   *http.Server
	ln    *connQueue
	rp    *httputil.ReverseProxy
	plain *transports // plaintext connections
	// secured holds, per server identity, the transports of mutual-TLS
	// connections to it (string → *transports).
	secured sync.Map
	serve   sync.Once
	done    chan struct{}
}

// New returns a Proxy; ServeConn hands it connections.
func New(o Options) *Proxy {
	if o.Network == nil {
		o.Network = netx.Kernel{DialTimeout: o.ConnectTimeout}
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 60 * time.Second
	}
	if o.ReadHeaderTimeout == 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.MaxHeaderBytes == 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = 1000
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		o:    o,
		log:  o.Logger.With("component", "http", "direction", o.Direction),
		ln:   newConnQueue(),
		done: make(chan struct{}),
	}
	p.plain = p.newTransports("")
	p.rp = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: roundTripper{p},
		// 0: a response with a Content-Length goes out in one write when
		// it fits the buffer; ReverseProxy still flushes every write at once
		// for streams (no Content-Length, as gRPC) and event streams. (-1
		// would also arm a timer that flushes the headers alone.)
		FlushInterval:  0,
		ErrorHandler:   p.errorHandler,
		ModifyResponse: p.modifyResponse,
		BufferPool:     newBufferPool(),
		ErrorLog:       slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP),
		Protocols:         &protos,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: int(o.MaxConcurrentStreams)},
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	return p
}

// ServeConn serves HTTP on c, which protocol detection has read from (c
// replays what it read). It returns at once; the connection is served until
// it closes or the proxy shuts down.
func (p *Proxy) ServeConn(c net.Conn, ci *ConnInfo) {
	p.serve.Do(func() {
		go func() {
			defer close(p.done)
			_ = p.srv.Serve(p.ln)
		}()
	})
	p.ln.push(&serverConn{Conn: c, ci: ci, reg: p.o.Metrics})
}

// Shutdown stops serving: idle connections close at once, HTTP/2 clients
// get GOAWAY, and in-flight requests may finish until ctx ends, when every
// connection is closed.
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		p.srv.Close()
	}
	p.closeIdle()
	return err
}

// connKey is the context key of a request's *ConnInfo.
type connKey struct{}

func connContext(ctx context.Context, c net.Conn) context.Context {
	if sc, ok := c.(*serverConn); ok {
		return context.WithValue(ctx, connKey{}, sc.ci)
	}
	return ctx
}

// ConnInfoFrom returns the ConnInfo of the connection a request arrived on.
func ConnInfoFrom(ctx context.Context) *ConnInfo {
	ci, _ := ctx.Value(connKey{}).(*ConnInfo)
	return ci
}
