package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/config"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
)

var (
	podIP   = netip.MustParseAddr("10.0.0.1")
	appSrc  = netip.MustParseAddrPort("10.0.0.1:40000")
	remote  = netip.MustParseAddrPort("10.0.0.9:80")
	peerSrc = netip.MustParseAddrPort("10.0.0.7:50000")
)

// run starts a Server on an in-memory network with env overrides and
// waits until it listens.
func run(t *testing.T, mem *netx.Mem, env map[string]string) *Server {
	t.Helper()
	return runOn(t, mem, env)
}

// runOn is run on any Network.
func runOn(t *testing.T, nw netx.Network, env map[string]string) *Server {
	t.Helper()
	cfg, err := config.FromEnv(func(k string) (string, bool) {
		v, ok := env[strings.TrimPrefix(k, config.Prefix)]
		return v, ok
	})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, Options{Network: nw})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	t.Cleanup(func() {
		s.Shutdown()
		netxtest.Await(t, done, "server to stop")
	})
	for i := 0; !s.listening.Load(); i++ {
		if i > 1000 {
			t.Fatal("server never listened")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return s
}

// serveHTTP runs an HTTP server (HTTP/1.1 and h2c) on mem at addr.
func serveHTTP(t *testing.T, mem *netx.Mem, addr netip.AddrPort, h http.HandlerFunc) {
	t.Helper()
	l := netxtest.Listen(t, mem, addr)
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// client makes HTTP requests as a steered connection: every dial goes to
// the listener at via, with orig as its original destination.
func client(mem *netx.Mem, src, via, orig netip.AddrPort) *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Protocols: &p,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return mem.DialAs(ctx, src, via, orig)
		},
	}}
}

func get(t *testing.T, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestOutboundToOriginalDestinationWithoutDiscovery(t *testing.T) {
	mem := netx.NewMem()
	serveHTTP(t, mem, remote, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "remote saw host %s from %s", r.Host, r.RemoteAddr)
	})
	run(t, mem, map[string]string{"REQUIRE_STEERING": "false"})
	c := client(mem, appSrc, netip.MustParseAddrPort("127.0.0.1:4140"), remote)
	resp, body := get(t, c, "http://web.example/")
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "remote saw host web.example") {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func TestInboundToAppOnLoopback(t *testing.T) {
	mem := netx.NewMem()
	serveHTTP(t, mem, netip.MustParseAddrPort("127.0.0.1:8080"), func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "app")
	})
	run(t, mem, map[string]string{"REQUIRE_STEERING": "false"})
	c := client(mem, peerSrc, netip.AddrPortFrom(podIP, 4143), netip.AddrPortFrom(podIP, 8080))
	if resp, body := get(t, c, "http://web:8080/"); resp.StatusCode != 200 || body != "app" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	// Opaque bytes to another port go to the app's TCP listener unchanged.
	l := netxtest.Listen(t, mem, netip.MustParseAddrPort("127.0.0.1:9000"))
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	conn, err := mem.DialAs(context.Background(), peerSrc, netip.AddrPortFrom(podIP, 4143), netip.AddrPortFrom(podIP, 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "\x00\x01binary, not http")
	netxtest.CloseWrite(t, conn)
	got := netxtest.Await(t, netxtest.ReadAll(conn), "echo")
	if string(got.Data) != "\x00\x01binary, not http" || got.Err != nil {
		t.Errorf("echo %q %v", got.Data, got.Err)
	}
}

func TestSteeringProbeMakesReady(t *testing.T) {
	mem := netx.NewMem()
	s := run(t, mem, nil)
	if s.Ready() {
		t.Fatal("ready before steering was confirmed")
	}
	admin := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return mem.DialAs(ctx, netip.MustParseAddrPort("127.0.0.1:1234"), netip.MustParseAddrPort("127.0.0.1:4191"), netip.AddrPort{})
	}}}
	if resp, _ := get(t, admin, "http://proxy/ready"); resp.StatusCode != 503 {
		t.Errorf("/ready before the probe: %d", resp.StatusCode)
	}
	c, err := mem.DialAs(context.Background(), netip.MustParseAddrPort("10.0.0.254:1"), netip.AddrPortFrom(podIP, 4143), netip.AddrPortFrom(podIP, 4144))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, ProbeRequest)
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if line != ProbeReply {
		t.Fatalf("probe answered %q %v", line, err)
	}
	if resp, _ := get(t, admin, "http://proxy/ready"); resp.StatusCode != 200 || !s.Ready() {
		t.Errorf("/ready after the probe: %d", resp.StatusCode)
	}
}

func TestLoopsRefused(t *testing.T) {
	mem := netx.NewMem()
	run(t, mem, map[string]string{"REQUIRE_STEERING": "false"})
	for name, orig := range map[string]netip.AddrPort{
		"outbound to itself": netip.MustParseAddrPort("127.0.0.1:4140"),
		"inbound port":       netip.AddrPortFrom(podIP, 4143),
	} {
		via := netip.MustParseAddrPort("127.0.0.1:4140")
		if name == "inbound port" {
			via = netip.AddrPortFrom(podIP, 4143)
		}
		c, err := mem.DialAs(context.Background(), appSrc, via, orig)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		got := netxtest.Await(t, netxtest.ReadAll(c), name)
		c.Close()
		if len(got.Data) != 0 {
			t.Errorf("%s: answered %q, want the connection closed", name, got.Data)
		}
	}
}

func TestShutdownDrainsInFlight(t *testing.T) {
	mem := netx.NewMem()
	started := make(chan struct{})
	release := make(chan struct{})
	serveHTTP(t, mem, remote, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "finished")
	})
	s := run(t, mem, map[string]string{"REQUIRE_STEERING": "false", "SHUTDOWN_GRACE_PERIOD": "30s"})
	c := client(mem, appSrc, netip.MustParseAddrPort("127.0.0.1:4140"), remote)
	type result struct {
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := c.Get("http://slow/")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{string(b), err}
	}()
	netxtest.Await(t, started, "request to reach the upstream")
	s.Shutdown()
	for !s.draining.Load() {
		time.Sleep(time.Millisecond)
	}
	if s.Ready() {
		t.Error("ready while draining")
	}
	// New connections are refused once draining.
	for i := 0; ; i++ {
		_, err := mem.DialAs(context.Background(), appSrc, netip.MustParseAddrPort("127.0.0.1:4140"), remote)
		if err != nil {
			break
		}
		if i > 1000 {
			t.Fatal("still accepting while draining")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	r := netxtest.Await(t, res, "in-flight request")
	if r.err != nil || r.body != "finished" {
		t.Errorf("in-flight request: %q %v", r.body, r.err)
	}
}
