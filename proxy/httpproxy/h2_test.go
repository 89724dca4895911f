package httpproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/sluice-mesh/sluice/proxy/metrics"
	"github.com/sluice-mesh/sluice/proxy/netx"
)

// TestClientResetCancelsUpstream: a client that resets its HTTP/2 stream
// cancels the request the proxy sent upstream.
func TestClientResetCancelsUpstream(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	canceled := make(chan struct{})
	arrived := make(chan struct{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		close(arrived)
		<-r.Context().Done()
		close(canceled)
	}))
	addr := start(t, "outbound", &staticRouter{reg: reg, to: up, proto: H2}, reg)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr.String()+"/", nil)
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-arrived
	cancel() // RST_STREAM(CANCEL) to the proxy
	resp.Body.Close()
	select {
	case <-canceled:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was not canceled")
	}
}

// h2Frames opens a prior-knowledge HTTP/2 connection to addr and returns
// its framer after the preface and an empty SETTINGS.
func h2Frames(t *testing.T, addr string) (net.Conn, *http2.Framer) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c, fr
}

func TestMaxConcurrentStreamsAdvertisedAndGoAwayOnShutdown(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	up := upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	p := New(Options{Direction: "inbound", Router: &staticRouter{reg: reg, to: up}, Network: netx.Kernel{}, Metrics: reg, MaxConcurrentStreams: 7})
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			p.ServeConn(c, &ConnInfo{Direction: "inbound"})
		}
	}()
	_, fr := h2Frames(t, l.Addr().String())
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first frame %T, want SETTINGS", f)
	}
	if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); !ok || v != 7 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (%v), want 7", v, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go p.Shutdown(ctx)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without GOAWAY: %v", err)
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			return
		}
	}
}

// TestUpstreamGoAway: an upstream that shuts down gracefully finishes the
// stream in flight, and the next request goes over a new connection.
func TestUpstreamGoAway(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	})}
	go srv.Serve(l)
	to := netx.AddrPortOf(l.Addr())
	addr := start(t, "outbound", &staticRouter{reg: reg, to: to, proto: H2}, reg)
	c := h2cClient()
	res := make(chan string, 1)
	go func() {
		resp, err := c.Get("http://" + addr.String() + "/slow")
		if err != nil {
			res <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- string(b)
	}()
	<-started
	shut := make(chan struct{})
	go func() { srv.Shutdown(context.Background()); close(shut) }() // GOAWAY, then waits for /slow
	time.Sleep(50 * time.Millisecond)                               // let the GOAWAY reach the proxy
	close(release)
	if got := <-res; got != "done /slow" {
		t.Fatalf("in-flight stream across GOAWAY: %q", got)
	}
	<-shut
	// A new server on the same address: the proxy must use a new connection.
	l2, err := net.Listen("tcp4", to.String())
	if err != nil {
		t.Fatalf("listen again on %s: %v", to, err)
	}
	srv2 := &http.Server{Protocols: &protos, Handler: srv.Handler}
	go srv2.Serve(l2)
	defer srv2.Close()
	resp, err := c.Get("http://" + addr.String() + "/next")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "done /next" {
		t.Errorf("after GOAWAY: %d %q", resp.StatusCode, b)
	}
}
