package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/net/http2"

	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/netx"
)

// staticRouter sends every request to one address.
type staticRouter struct {
	reg       *metrics.Registry
	to        netip.AddrPort
	proto     Proto
	origProto bool
	err       error
	outcomes  chan bool
}

func (r *staticRouter) Route(req *http.Request, ci *ConnInfo) (*Target, error) {
	if r.err != nil {
		return nil, r.err
	}
	proto := r.proto
	if req.ProtoMajor == 2 {
		proto = H2
	}
	t := &Target{Addr: r.to, Proto: proto, OrigProto: r.origProto && req.ProtoMajor == 1, Series: r.Series(req, ci)}
	if r.outcomes != nil {
		t.Done = func(failed bool) { r.outcomes <- failed }
	}
	return t, nil
}

func (r *staticRouter) Series(req *http.Request, ci *ConnInfo) *metrics.HTTPSeries {
	return r.reg.HTTP(metrics.Target{Direction: ci.Direction, Authority: req.Host, Addr: r.to})
}

// upstream serves h on 127.0.0.1 with HTTP/1.1 and h2c.
func upstream(t testing.TB, h http.Handler) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}

// start runs a Proxy of direction dir behind a loopback listener and
// returns the listener's address.
func start(t testing.TB, dir string, r Router, reg *metrics.Registry) netip.AddrPort {
	t.Helper()
	p := New(Options{Direction: dir, Router: r, Network: netx.Kernel{}, ConnectTimeout: time.Second, Metrics: reg})
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.ServeConn(c, &ConnInfo{Direction: dir, Client: netx.AddrPortOf(c.RemoteAddr())})
		}
	}()
	t.Cleanup(func() {
		l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return netip.MustParseAddrPort(l.Addr().String())
}

func h1Client() *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p, DisableCompression: true}, Timeout: 30 * time.Second}
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p, DisableCompression: true}, Timeout: 30 * time.Second}
}

func gather(t *testing.T, reg *metrics.Registry) string {
	t.Helper()
	r := prometheus.NewRegistry()
	r.MustRegister(reg)
	mfs, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func TestHTTP1KeepAliveHopByHopAndHost(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	var conns = map[string]bool{}
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conns[r.RemoteAddr] = true
		if r.Header.Get("X-Hop") != "" || r.Header.Get("Connection") != "" {
			t.Errorf("hop-by-hop header reached the upstream: %v", r.Header)
		}
		fmt.Fprintf(w, "host=%s path=%s e2e=%s", r.Host, r.URL.RequestURI(), r.Header.Get("X-End"))
	}))
	addr := start(t, "outbound", &staticRouter{reg: reg, to: up}, reg)
	c := h1Client()
	for i := 0; i < 5; i++ {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/p?q=%d", addr, i), nil)
		req.Host = "web.default:8080"
		req.Header.Set("Connection", "X-Hop")
		req.Header.Set("X-Hop", "1")
		req.Header.Set("X-End", "kept")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("host=web.default:8080 path=/p?q=%d e2e=kept", i)
		if string(body) != want {
			t.Fatalf("body %q, want %q", body, want)
		}
	}
	if len(conns) != 1 {
		t.Errorf("upstream saw %d connections for 5 keep-alive requests, want 1", len(conns))
	}
	m := gather(t, reg)
	for _, want := range []string{
		`request_total{authority="web.default:8080",direction="outbound"`,
		`response_total{authority="web.default:8080",classification="success",direction="outbound"`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s:\n%s", want, m)
		}
	}
}

// sha returns the hex SHA-256 of n deterministic bytes.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func hexsum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestChunkedBothWaysAndContinue(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	data := pattern(8 << 20)
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("X-Sum", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set("X-Len", fmt.Sprint(n))
		w.Header().Set("X-TE", strings.Join(r.TransferEncoding, ","))
		// A chunked download: no Content-Length, flushed writes.
		for off := 0; off < len(data); off += 1 << 20 {
			w.Write(data[off : off+1<<20])
			w.(http.Flusher).Flush()
		}
	}))
	addr := start(t, "outbound", &staticRouter{reg: reg, to: up}, reg)

	// A raw HTTP/1.1 client, to control chunking and 100-continue exactly.
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	fmt.Fprintf(c, "POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
	status, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 100") {
		t.Fatalf("want 100 Continue first, got %q %v", status, err)
	}
	if line, _ := br.ReadString('\n'); line != "\r\n" {
		t.Fatalf("100 Continue has headers: %q", line)
	}
	for off := 0; off < len(data); off += 100000 {
		end := min(off+100000, len(data))
		fmt.Fprintf(c, "%x\r\n", end-off)
		c.Write(data[off:end])
		io.WriteString(c, "\r\n")
	}
	io.WriteString(c, "0\r\n\r\n")
	req, _ := http.NewRequest("POST", "/up", nil)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	for resp.StatusCode == http.StatusContinue { // a second 100 from the upstream is allowed
		if resp, err = http.ReadResponse(br, req); err != nil {
			t.Fatal(err)
		}
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("X-Sum") != hexsum(data) || resp.Header.Get("X-Len") != fmt.Sprint(len(data)) || resp.Header.Get("X-TE") != "chunked" {
		t.Errorf("upload arrived as %s/%s (te %q), want %s/%d chunked", resp.Header.Get("X-Sum"), resp.Header.Get("X-Len"), resp.Header.Get("X-TE"), hexsum(data), len(data))
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("download transfer-encoding %v, want chunked", resp.TransferEncoding)
	}
	if hexsum(got) != hexsum(data) {
		t.Errorf("download corrupted: %d bytes", len(got))
	}
}

func TestH2StreamingAndTrailers(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			t.Errorf("upstream got %s, want HTTP/2", r.Proto)
		}
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		// Echo each chunk as it comes: a bidirectional stream.
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				break
			}
		}
		w.Header().Set("Grpc-Status", "7")
	}))
	addr := start(t, "outbound", &staticRouter{reg: reg, to: up}, reg)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr.String()+"/svc/Method", pr)
	req.Header.Set("Content-Type", "application/grpc")
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// Ping-pong: each message must come back before the next is sent, so
	// nothing is buffered along the way.
	for i := 0; i < 10; i++ {
		msg := fmt.Sprintf("msg-%02d", i)
		pw.Write([]byte(msg))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != msg {
			t.Fatalf("echo %d: %q %v", i, got, err)
		}
	}
	pw.Close()
	if rest, _ := io.ReadAll(resp.Body); len(rest) != 0 {
		t.Errorf("extra bytes %q", rest)
	}
	if resp.Trailer.Get("Grpc-Status") != "7" {
		t.Errorf("trailer grpc-status = %q, want 7", resp.Trailer.Get("Grpc-Status"))
	}
	m := gather(t, reg)
	if !strings.Contains(m, `classification="failure"`) || !strings.Contains(m, `grpc_status="7"`) {
		t.Errorf("grpc status 7 not classified as failure:\n%s", m)
	}
}

func TestHTTP1OverH2RestoredInbound(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	app := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s orig=%q", r.Proto, r.Host, r.Header.Get(OrigProtoHeader))
	}))
	// The inbound proxy restores HTTP/1.1 when the header says so.
	in := start(t, "inbound", &inboundLike{reg: reg, app: app}, reg)
	// The outbound proxy carries HTTP/1 on h2 to the inbound proxy.
	out := start(t, "outbound", &staticRouter{reg: reg, to: in, proto: H2, origProto: true}, reg)
	resp, err := h1Client().Get("http://" + out.String() + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf(`HTTP/1.1 %s orig=""`, out); string(body) != want {
		t.Errorf("app saw %q, want %q", body, want)
	}
}

// inboundLike routes as proxy/inbound does: HTTP/1.1 to the app when the
// request carries the original-protocol header.
type inboundLike struct {
	reg *metrics.Registry
	app netip.AddrPort
}

func (r *inboundLike) Route(req *http.Request, ci *ConnInfo) (*Target, error) {
	t := &Target{Addr: r.app, Series: r.Series(req, ci)}
	if req.ProtoMajor == 2 && req.Header.Get(OrigProtoHeader) == "" {
		t.Proto = H2
	}
	return t, nil
}

func (r *inboundLike) Series(req *http.Request, ci *ConnInfo) *metrics.HTTPSeries {
	return r.reg.HTTP(metrics.Target{Direction: ci.Direction, Authority: req.Host, Addr: r.app})
}

func TestWebSocketUpgrade(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			c.WriteMessage(mt, append([]byte("echo:"), msg...))
		}
	}))
	// Even towards an h2 endpoint, an Upgrade goes over HTTP/1.1.
	addr := start(t, "outbound", &staticRouter{reg: reg, to: up, proto: H2, origProto: true}, reg)
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr.String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for i := 0; i < 3; i++ {
		ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint(i)))
		_, msg, err := ws.ReadMessage()
		if err != nil || string(msg) != fmt.Sprintf("echo:%d", i) {
			t.Fatalf("message %d: %q %v", i, msg, err)
		}
	}
	if m := gather(t, reg); !strings.Contains(m, `status_code="101"`) {
		t.Errorf("101 not counted:\n%s", m)
	}
}

func TestErrors(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	l, _ := net.Listen("tcp4", "127.0.0.1:0")
	closed := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	outcomes := make(chan bool, 4)
	refused := start(t, "outbound", &staticRouter{reg: reg, to: closed, outcomes: outcomes}, reg)
	unavailable := start(t, "outbound", &staticRouter{reg: reg, err: &Error{Status: 503, Reason: "no endpoints for web", Label: "no_endpoints"}}, reg)

	resp, err := h1Client().Get("http://" + refused.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(resp.Header.Get(ErrorHeader), "connection refused") {
		t.Errorf("refused: %d %q", resp.StatusCode, resp.Header.Get(ErrorHeader))
	}
	if failed := <-outcomes; !failed {
		t.Error("a refused connection was reported to the balancer as a success")
	}
	resp, err = h1Client().Get("http://" + unavailable.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get(ErrorHeader) != "no endpoints for web" {
		t.Errorf("unavailable: %d %q", resp.StatusCode, resp.Header.Get(ErrorHeader))
	}
	// A gRPC client gets a gRPC status, not an HTTP error.
	req, _ := http.NewRequest("POST", "http://"+refused.String()+"/svc/M", strings.NewReader(""))
	req.Header.Set("Content-Type", "application/grpc")
	resp, err = h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "14" {
		t.Errorf("grpc: %d grpc-status %q", resp.StatusCode, resp.Header.Get("Grpc-Status"))
	}
	m := gather(t, reg)
	for _, want := range []string{`error="connect_refused"`, `error="no_endpoints"`, `status_code="503"`, `status_code="502"`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestMalformedAndHugeHeaders(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	addr := start(t, "inbound", &staticRouter{reg: reg, to: up}, reg)
	cases := []struct {
		name, req, status string
	}{
		{"garbage header", "GET / HTTP/1.1\r\nHost: a\r\nthis is not a header\r\n\r\n", "400"},
		{"bad version", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", "400"},
		{"1 MiB header", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 1<<20) + "\r\n\r\n", "431"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go io.WriteString(c, tc.req)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "HTTP/1.1 "+tc.status) {
				t.Fatalf("got %q %v, want %s", line, err, tc.status)
			}
		})
	}
	// The proxy still serves well-formed requests.
	resp, err := h1Client().Get("http://" + addr.String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("after bad clients: %q", b)
	}
	m := gather(t, reg)
	if !strings.Contains(m, `inbound_http_errors_total{error="malformed_request"} 2`) ||
		!strings.Contains(m, `inbound_http_errors_total{error="request_header_fields_too_large"} 1`) {
		t.Errorf("client errors not counted:\n%s", m)
	}
}

func TestUpstreamResetMidStream(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // resets the stream
	}))
	addr := start(t, "outbound", &staticRouter{reg: reg, to: up, proto: H2}, reg)
	req, _ := http.NewRequest("GET", "http://"+addr.String()+"/", nil)
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	var se http2.StreamError
	if err == nil || (!errors.As(err, &se) && !strings.Contains(err.Error(), "stream error")) {
		t.Errorf("client read %v, want a stream reset", err)
	}
	if m := gather(t, reg); !strings.Contains(m, `error="`) {
		t.Errorf("reset not counted:\n%s", m)
	}
}
