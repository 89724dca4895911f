package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/tap"
)

// exchange is one request in flight: its target and what has been seen of
// its response. Only the request's handler goroutine touches it.
type exchange struct {
	p      *Proxy
	ci     *ConnInfo
	t      *Target
	start  time.Time
	tap    *tap.Request
	status int
	ttfb   time.Duration
	bytes  uint64
	ended  bool
	// refused is the alert with which a peer refused a mutual-TLS
	// connection that this request opened, seen by the connection's first
	// read (the h2 transport reports only that the connection failed).
	refused atomic.Pointer[net.OpError]
}

type exchangeKey struct{}

func exchangeFrom(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

// serveHTTP is the server's handler: route, forward, record.
func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ci := ConnInfoFrom(r.Context())
	if ci == nil {
		ci = &ConnInfo{Direction: p.o.Direction}
	}
	t, err := p.o.Router.Route(r, ci)
	if err != nil {
		e := asError(err)
		s := p.o.Router.Series(r, ci)
		s.Request()
		status, grpcStatus := writeError(w, r, e)
		s.Response(status, grpcStatus, e.Label, time.Since(start))
		p.log.Debug("request refused", "authority", r.Host, "path", r.URL.Path, "status", status, "error", e.Reason)
		return
	}
	if t.Proto == H2 && r.ProtoMajor == 1 && r.Header.Get("Upgrade") != "" {
		// An upgrade (WebSocket and the like) needs HTTP/1.1 end to end.
		t.Proto, t.OrigProto = HTTP1, false
	}
	if r.ProtoMajor == 1 {
		// Let the response flow while the request body still arrives, as
		// HTTP/2 always does (full-duplex streaming over HTTP/1.1).
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	t.Series.Request()
	x := &exchange{p: p, ci: ci, t: t, start: start}
	if p.o.Tap != nil && p.o.Tap.Active() {
		x.tap = p.o.Tap.Start(x.tapInfo(r))
	}
	defer func() {
		if v := recover(); v != nil {
			// ReverseProxy aborts (http.ErrAbortHandler) when the upstream
			// fails mid-response; the client's stream is reset.
			x.end(-1, "stream_reset", nil)
			panic(v)
		}
		if !x.ended {
			x.end(-1, "", nil)
		}
	}()
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), exchangeKey{}, x)))
}

func (x *exchange) tapInfo(r *http.Request) *tap.RequestInfo {
	dir, dst := tappb.TapEvent_OUTBOUND, x.t.Addr
	if x.ci.Direction == "inbound" {
		// The destination is the pod's own address, not the loopback
		// address the application is reached on.
		dir, dst = tappb.TapEvent_INBOUND, x.ci.OrigDst
	}
	// Each end's metadata says whether the hop is secured, and the peer's
	// identity on the side that knows it: the client's (inbound, from its
	// certificate) or the server's (outbound, from discovery, checked in
	// the handshake).
	up := x.upstreamTLS()
	labels := make(map[string]string, len(x.t.DstLabels)+2)
	for k, v := range x.t.DstLabels {
		labels[k] = v
	}
	labels["tls"] = up.Status
	if up.Status == "true" && up.ServerID != "" {
		labels["server_id"] = up.ServerID
	}
	var src map[string]string
	if x.ci.Direction == "inbound" {
		src = map[string]string{"tls": x.ci.TLS.Status}
		if x.ci.TLS.Status == "true" && x.ci.TLS.ClientID != "" {
			src["client_id"] = x.ci.TLS.ClientID
		}
	}
	return &tap.RequestInfo{
		Direction:         dir,
		Source:            x.ci.Client,
		SourceLabels:      src,
		Destination:       dst,
		DestinationLabels: labels,
		Method:            r.Method,
		Scheme:            "http",
		Authority:         r.Host,
		Path:              r.URL.Path,
		Header:            r.Header,
	}
}

// upstreamTLS labels the connection to the target: the target's TLS when
// set (outbound), else the accepted connection's (inbound, to the
// application).
func (x *exchange) upstreamTLS() metrics.TLS {
	if x.t.TLS.Status != "" {
		return x.t.TLS
	}
	return x.ci.TLS
}

// rewrite turns the incoming request into the outgoing one: same method,
// path, authority and end-to-end headers, sent to the target address.
// ReverseProxy has already removed the hop-by-hop headers.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	x := exchangeFrom(pr.In.Context())
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = x.t.Addr.String()
	pr.Out.Host = pr.In.Host
	if x.t.OrigProto {
		pr.Out.Header.Set(OrigProtoHeader, "HTTP/1.1")
	} else {
		pr.Out.Header.Del(OrigProtoHeader)
	}
	// Go's HTTP/2 server answers Expect: 100-continue itself and hides the
	// header from handlers, so a proxy carrying such a request over HTTP/2
	// names it in ExpectHeader and the next proxy restores it: the 100
	// then comes from the application, or not at all when it refuses.
	if pr.Out.Header.Get(ExpectHeader) != "" {
		pr.Out.Header.Del(ExpectHeader)
		pr.Out.Header.Set("Expect", "100-continue")
	}
	if x.t.Proto == H2 && strings.EqualFold(pr.Out.Header.Get("Expect"), "100-continue") {
		pr.Out.Header.Set(ExpectHeader, "100-continue")
	}
}

// modifyResponse records the response's head and wraps its body to see
// its end.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	x := exchangeFrom(resp.Request.Context())
	if x == nil {
		return nil
	}
	x.status = resp.StatusCode
	x.ttfb = time.Since(x.start)
	x.tap.ResponseInit(resp.StatusCode, resp.Header)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection becomes a raw stream (ReverseProxy needs the
		// body as it is); the exchange ends here.
		x.end(-1, "", nil)
		return nil
	}
	resp.Body = &responseBody{ReadCloser: resp.Body, x: x, resp: resp}
	return nil
}

// responseBody sees the bytes and the end of an upstream response.
type responseBody struct {
	io.ReadCloser
	x    *exchange
	resp *http.Response
}

func (b *responseBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	b.x.bytes += uint64(n)
	complete := b.resp.ContentLength >= 0 && b.x.bytes >= uint64(b.resp.ContentLength)
	switch {
	case b.x.ended:
	case err == io.EOF, complete:
		// The whole response has arrived (a client that got all of a
		// Content-Length body may close before the upstream's end of
		// stream reaches the proxy).
		b.x.end(grpcStatus(b.resp), "", b.resp.Trailer)
	case err != nil && b.resp.Request.Context().Err() != nil:
		b.x.end(-1, "canceled", nil)
	case err != nil:
		b.x.p.log.Warn("response body failed", "authority", b.resp.Request.Host, "endpoint", b.x.t.Addr, "bytes", b.x.bytes, "error", err)
		b.x.end(-1, "upstream_reset", nil)
	}
	return n, err
}

func (b *responseBody) Close() error {
	if !b.x.ended {
		// Closed before its end: the client went away, or the copy failed.
		b.x.end(-1, "canceled", nil)
	}
	return b.ReadCloser.Close()
}

// grpcStatus returns the response's grpc-status (trailers, or headers of a
// trailers-only response), or -1.
func grpcStatus(resp *http.Response) int {
	v := resp.Trailer.Get("grpc-status")
	if v == "" {
		v = resp.Header.Get("grpc-status")
	}
	if v == "" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// end records the exchange once: metrics, tap, and the balancer's outcome.
func (x *exchange) end(grpc int, errLabel string, trailers http.Header) {
	if x.ended {
		return
	}
	x.ended = true
	status := x.status
	if x.ttfb == 0 {
		x.ttfb = time.Since(x.start)
	}
	x.t.Series.Response(status, grpc, errLabel, x.ttfb)
	if x.t.Done != nil {
		x.t.Done(status >= 500 || (errLabel != "" && errLabel != "canceled"))
	}
	if x.tap != nil {
		var eos tap.Eos
		if grpc >= 0 {
			g := uint32(grpc)
			eos.GRPCStatus = &g
		} else if errLabel != "" {
			rc := uint32(2) // INTERNAL_ERROR
			if errLabel == "canceled" {
				rc = 8 // CANCEL
			}
			eos.ResetCode = &rc
		}
		x.tap.ResponseEnd(x.bytes, eos, trailers)
	}
}

// errorHandler answers a request whose upstream failed before a response.
func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	x := exchangeFrom(r.Context())
	if x != nil {
		if alert := x.refused.Load(); alert != nil {
			err = fmt.Errorf("%w (%w)", alert, err)
		}
	}
	e := upstreamError(r.Context(), err, x)
	status, grpc := writeError(w, r, e)
	if x != nil && !x.ended {
		x.status = status
		x.end(grpc, e.Label, nil)
	}
	p.log.Debug("upstream failed", "authority", r.Host, "path", r.URL.Path, "status", status, "error", err)
}

// isGRPC reports whether r is a gRPC request, which gets errors as
// grpc-status rather than as an HTTP status.
func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// writeError answers with e and returns the HTTP status and gRPC status
// (-1 for none) written.
func writeError(w http.ResponseWriter, r *http.Request, e *Error) (status, grpc int) {
	if errors.Is(r.Context().Err(), context.Canceled) {
		return 0, -1 // the client is gone; nobody reads an answer
	}
	h := w.Header()
	h.Set(ErrorHeader, e.Reason)
	if isGRPC(r) {
		code := e.GRPCCode()
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(code))
		h.Set("Grpc-Message", e.Reason)
		w.WriteHeader(http.StatusOK)
		return http.StatusOK, code
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_, _ = io.WriteString(w, e.Reason+"\n")
	return e.Status, -1
}
