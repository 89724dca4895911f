package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki/pkitest"
	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/proxy/httpproxy"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
	"github.com/sluice-mesh/sluice/test/destinationtest"
	"github.com/sluice-mesh/sluice/test/proxytest/identitytest"
)

var (
	webID   = meshmeta.IdentityName("web", "shop", meshmeta.DefaultTrustDomain)
	dbID    = meshmeta.IdentityName("db", "shop", meshmeta.DefaultTrustDomain)
	otherID = meshmeta.IdentityName("other", "shop", meshmeta.DefaultTrustDomain)
)

// Addresses of the two-proxy mesh on one in-memory network: the client pod
// "web" (10.0.0.1) and the server pod "db" (10.0.0.2).
var (
	webPod     = netip.MustParseAddr("10.0.0.1")
	dbPod      = netip.MustParseAddr("10.0.0.2")
	dbInbound  = netip.AddrPortFrom(dbPod, 4143)
	dbHTTP     = netip.AddrPortFrom(dbPod, 8080)
	dbOpaque   = netip.AddrPortFrom(dbPod, 9000)
	dbAppTLS   = netip.AddrPortFrom(dbPod, 8443)
	clusterIP  = netip.MustParseAddrPort("10.96.0.10:8080")
	webOutbond = netip.MustParseAddrPort("127.0.0.1:4140")
)

// steered is the web proxy's network: its connections to the db pod are
// steered into db's inbound listener, with their original destination, as
// the node agent steers them.
type steered struct{ *netx.Mem }

func (s steered) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	if addr.Addr() == dbPod {
		return s.DialAs(ctx, netip.AddrPortFrom(webPod, 0), dbInbound, addr)
	}
	return s.Mem.Dial(ctx, addr)
}

// mesh is two proxies with identities, a destination server and an
// identity server.
type mesh struct {
	mem     *netx.Mem
	ids     *identitytest.Server
	dest    *destinationtest.Server
	web, db *Server
}

// newMesh starts the identity and destination servers, db's app (HTTP on
// 127.0.0.1:8080, TCP echo on 127.0.0.1:9000) and both proxies; dbName is
// the identity db's proxy has (discovery always says dbID).
func newMesh(t *testing.T, dbName string) *mesh {
	t.Helper()
	m := &mesh{mem: netx.NewMem(), ids: identitytest.Start(t, identitytest.Options{}), dest: destinationtest.Start(t)}
	serveHTTP(t, m.mem, netip.MustParseAddrPort("127.0.0.1:8080"), func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "db app: %s %s", r.Proto, r.Header.Get(httpproxy.OrigProtoHeader))
	})
	echo := netxtest.Listen(t, m.mem, netip.MustParseAddrPort("127.0.0.1:9000"))
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	labels := map[string]string{"namespace": "shop", "service": "db", "pod": "db-0"}
	m.dest.Set("db.shop.svc.cluster.local:8080", discovery.Endpoint{Addr: dbHTTP, Identity: dbID, H2: true, Labels: labels})
	m.dest.Set(dbOpaque.String(), discovery.Endpoint{Addr: dbOpaque, Identity: dbID, Opaque: true, Labels: labels})
	m.web = runOn(t, steered{m.mem}, m.proxyEnv(t, webID, "web", map[string]string{
		"OUTBOUND_LISTEN_ADDRS": webOutbond.String(),
		"INBOUND_LISTEN_ADDRS":  netip.AddrPortFrom(webPod, 4143).String(),
		"ADMIN_LISTEN_ADDR":     netip.AddrPortFrom(webPod, 4191).String(),
		"TAP_LISTEN_ADDR":       netip.AddrPortFrom(webPod, 4190).String(),
	}))
	sa, _, _ := meshmeta.ParseIdentityName(dbName, meshmeta.DefaultTrustDomain)
	m.db = run(t, m.mem, m.proxyEnv(t, dbName, sa, map[string]string{
		"OUTBOUND_LISTEN_ADDRS": "127.0.0.2:4140",
		"INBOUND_LISTEN_ADDRS":  dbInbound.String(),
		"ADMIN_LISTEN_ADDR":     netip.AddrPortFrom(dbPod, 4191).String(),
		"TAP_LISTEN_ADDR":       netip.AddrPortFrom(dbPod, 4190).String(),
		"OPAQUE_PORTS":          "9000",
	}))
	return m
}

// proxyEnv is a proxy's environment with identity name for service
// account sa of namespace shop.
func (m *mesh) proxyEnv(t *testing.T, name, sa string, more map[string]string) map[string]string {
	env := m.ids.Env(name, identitytest.WriteToken(t, m.ids.Token("shop", sa)))
	env["REQUIRE_STEERING"] = "false"
	env["DESTINATION_ADDR"] = m.dest.Addr().String()
	env["POD_NAMESPACE"] = "shop"
	for k, v := range more {
		env[k] = v
	}
	return env
}

// waitReady waits until s has its certificate (and so is ready).
func waitReady(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), netxtest.HangGuard)
	defer cancel()
	if err := s.id.WaitReady(ctx); err != nil {
		t.Fatalf("no certificate: %v", err)
	}
	if !s.Ready() {
		t.Fatal("not ready with a certificate")
	}
}

// tap opens a tap (of one request) on the tap server at addr and returns
// its events.
func (m *mesh) tap(t *testing.T, addr netip.AddrPort) <-chan *tappb.TapEvent {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///tap", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return m.mem.Dial(ctx, addr) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := tappb.NewTapClient(cc).Observe(ctx, &tappb.ObserveRequest{Limit: 1, MaxRps: 100})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *tappb.TapEvent, 3)
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				close(ch)
				return
			}
			ch <- ev
		}
	}()
	return ch
}

// Two proxies with identities: HTTP and opaque TCP between them are mutual
// TLS, labelled with both identities in metrics and tap; the proxies are
// ready only with a certificate.
func TestMutualTLSBetweenProxies(t *testing.T) {
	m := newMesh(t, dbID)
	waitReady(t, m.web)
	waitReady(t, m.db)
	webTap, dbTap := m.tap(t, netip.AddrPortFrom(webPod, 4190)), m.tap(t, netip.AddrPortFrom(dbPod, 4190))
	for m.web.hub.Taps() == 0 || m.db.hub.Taps() == 0 {
		time.Sleep(time.Millisecond)
	}

	c := client(m.mem, netip.AddrPortFrom(webPod, 40000), webOutbond, clusterIP)
	for i := range 3 {
		resp, err := c.Get("http://db:8080/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// HTTP/1 rides HTTP/2 between the proxies, inside TLS.
		if resp.StatusCode != 200 || string(b) != "db app: HTTP/1.1 " {
			t.Fatalf("request %d: %d %s %q", i, resp.StatusCode, resp.Header.Get(httpproxy.ErrorHeader), b)
		}
	}
	ev := netxtest.Await(t, webTap, "outbound tap event")
	if l := ev.GetDestinationMeta().GetLabels(); l["tls"] != "true" || l["server_id"] != dbID {
		t.Errorf("outbound tap destination labels %v, want tls=true and server_id=%s", l, dbID)
	}
	ev = netxtest.Await(t, dbTap, "inbound tap event")
	if l := ev.GetSourceMeta().GetLabels(); l["tls"] != "true" || l["client_id"] != webID {
		t.Errorf("inbound tap source labels %v, want tls=true and client_id=%s", l, webID)
	}

	// Opaque TCP: the client's bytes come back through both proxies.
	conn, err := m.mem.DialAs(context.Background(), netip.AddrPortFrom(webPod, 40001), webOutbond, dbOpaque)
	if err != nil {
		t.Fatal(err)
	}
	netxtest.Write(t, conn, "\x00opaque bytes")
	netxtest.CloseWrite(t, conn)
	if got := netxtest.Await(t, netxtest.ReadAll(conn), "echo"); string(got.Data) != "\x00opaque bytes" || got.Err != nil {
		t.Errorf("echo %q, %v", got.Data, got.Err)
	}
	conn.Close()

	web, db := scrape(t, m.web), scrape(t, m.db)
	for _, want := range []string{
		`request_total{authority="db:8080",direction="outbound",dst_namespace="shop",dst_pod="db-0",dst_service="db",server_id="` + dbID + `",target_addr="10.0.0.2:8080",target_ip="10.0.0.2",target_port="8080",tls="true"} 3`,
		`tcp_open_total{direction="outbound",dst_namespace="shop",dst_pod="db-0",dst_service="db",peer="dst",server_id="` + dbID + `",target_addr="10.0.0.2:9000",target_ip="10.0.0.2",target_port="9000",tls="true"} 1`,
		`tls_handshakes_total{direction="outbound"} 2`,
		`identity_cert_refresh_total{result="success"} 1`,
		`identity_cert_expiration_timestamp_seconds `,
	} {
		if !strings.Contains(web, want) {
			t.Errorf("client proxy's metrics lack %s", want)
		}
	}
	for _, want := range []string{
		`request_total{authority="db:8080",client_id="` + webID + `",direction="inbound",target_addr="10.0.0.2:8080",target_ip="10.0.0.2",target_port="8080",tls="true"} 3`,
		`tcp_open_total{client_id="` + webID + `",direction="inbound",peer="src",target_addr="10.0.0.2:9000",target_ip="10.0.0.2",target_port="9000",tls="true"} 1`,
		`tls_handshakes_total{direction="inbound"} 2`,
	} {
		if !strings.Contains(db, want) {
			t.Errorf("server proxy's metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Logf("client proxy:\n%s\nserver proxy:\n%s", grepMetrics(web, "tls"), grepMetrics(db, "tls"))
	}
}

func grepMetrics(m, s string) string {
	var out []string
	for _, l := range strings.Split(m, "\n") {
		if strings.Contains(l, s) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A server proxy whose certificate is for another identity than discovery
// names: HTTP gets a 502 that names the mismatch, opaque TCP a reset, and
// the client proxy counts the reason.
func TestIdentityMismatch(t *testing.T) {
	m := newMesh(t, otherID)
	waitReady(t, m.web)
	waitReady(t, m.db)
	c := client(m.mem, netip.AddrPortFrom(webPod, 40000), webOutbond, clusterIP)
	resp, err := c.Get("http://db:8080/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := "tls: server identity mismatch: want " + dbID + ", got " + otherID
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(resp.Header.Get(httpproxy.ErrorHeader), want) {
		t.Errorf("got %d with %s %q; want 502 with %q", resp.StatusCode, httpproxy.ErrorHeader, resp.Header.Get(httpproxy.ErrorHeader), want)
	}

	conn, err := m.mem.DialAs(context.Background(), netip.AddrPortFrom(webPod, 40001), webOutbond, dbOpaque)
	if err != nil {
		t.Fatal(err)
	}
	netxtest.Write(t, conn, "\x00opaque bytes")
	if got := netxtest.Await(t, netxtest.ReadAll(conn), "reset"); !errors.Is(got.Err, syscall.ECONNRESET) {
		t.Errorf("opaque read %q, %v; want a reset", got.Data, got.Err)
	}
	conn.Close()
	web := scrape(t, m.web)
	for _, want := range []string{
		`tls_handshake_errors_total{direction="outbound",reason="identity_mismatch"} 2`,
		`error="tls_identity_mismatch"`,
	} {
		if !strings.Contains(web, want) {
			t.Errorf("client proxy's metrics lack %s:\n%s", want, grepMetrics(web, "tls"))
		}
	}
}

// Plaintext from an unmeshed client still reaches the app, labelled as
// such; the application's own TLS (a hello for another name) passes through
// the server proxy untouched.
func TestUnmeshedClientsAndApplicationTLS(t *testing.T) {
	m := newMesh(t, dbID)
	waitReady(t, m.db)
	c := client(m.mem, netip.MustParseAddrPort("10.0.0.9:50000"), dbInbound, dbHTTP)
	if resp, body := get(t, c, "http://db:8080/"); resp.StatusCode != 200 || !strings.HasPrefix(body, "db app") {
		t.Fatalf("plaintext: %d %q", resp.StatusCode, body)
	}
	want := `request_total{authority="db:8080",direction="inbound",no_tls_reason="no_tls_from_remote",target_addr="10.0.0.2:8080",target_ip="10.0.0.2",target_port="8080",tls="no_identity"} 1`
	if db := scrape(t, m.db); !strings.Contains(db, want) {
		t.Errorf("metrics lack %s:\n%s", want, grepMetrics(db, "inbound"))
	}

	// The application terminates its own TLS on 8443.
	appCA := pkitest.New(t)
	appCert := appCA.Valid(t, "db.example.com")
	l := netxtest.Listen(t, m.mem, netip.MustParseAddrPort("127.0.0.1:8443"))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "app TLS") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{*appCert}}}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: appCA.Roots, ServerName: "db.example.com"},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return m.mem.DialAs(ctx, netip.MustParseAddrPort("10.0.0.9:50001"), dbInbound, dbAppTLS)
		},
	}}
	if resp, body := get(t, hc, "https://db.example.com/"); resp.StatusCode != 200 || body != "app TLS" {
		t.Errorf("application TLS through the proxy: %d %q", resp.StatusCode, body)
	}
}

// The proxy is not ready until its first certificate.
func TestNotReadyWithoutCertificate(t *testing.T) {
	m := &mesh{mem: netx.NewMem(), ids: identitytest.Start(t, identitytest.Options{}), dest: destinationtest.Start(t)}
	m.ids.Stop()
	s := run(t, m.mem, m.proxyEnv(t, webID, "web", map[string]string{"IDENTITY_BACKOFF_MIN": "10ms", "IDENTITY_BACKOFF_MAX": "50ms"}))
	for range 3 { // a few failed requests later, still not ready
		before := s.id.Certificate()
		time.Sleep(60 * time.Millisecond)
		if s.Ready() || before != nil {
			t.Fatal("ready without a certificate")
		}
	}
	if err := m.ids.Restart(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, s)
}
