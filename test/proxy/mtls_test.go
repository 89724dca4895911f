package proxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/pki"
	"github.com/sluice-mesh/sluice/test/capture"
	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest"
	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// The server pod's service account (its identity is web's) and the
// client's.
const (
	serverSA = "web"
	clientSA = "client"
)

// eachModeMTLS runs fn as subtests "ebpf" and "iptables", each on a mesh
// with an identity service, whose server pod runs as the service account
// serverSA (or as po.ServiceAccount) and client pod as clientSA. Discovery
// names the server's proxy's identity, as the destination service does.
func eachModeMTLS(t *testing.T, po proxytest.PodOptions, fn func(t *testing.T, e *env)) {
	for _, mode := range []api.Mode{api.ModeEBPF, api.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) {
			serverPO, clientPO := po, po
			clientPO.ForeignCA = false // a foreign authority is the server's alone
			if serverPO.ServiceAccount == "" {
				serverPO.ServiceAccount = serverSA
			}
			clientPO.ServiceAccount = clientSA
			fn(t, newEnvWith(t, proxytest.Options{Mode: mode, Identity: &proxytest.IdentityOptions{}}, serverPO, clientPO))
		})
	}
}

// secured adds the labels of mutual TLS to l: tls="true" and, outbound,
// server_id, inbound, client_id.
func secured(l proxytest.Labels) proxytest.Labels {
	l = with(l, "tls", "true", "no_tls_reason", proxytest.Absent)
	if l["direction"] == "outbound" {
		return with(l, "server_id", proxytest.IdentityName(serverSA), "client_id", proxytest.Absent)
	}
	return with(l, "client_id", proxytest.IdentityName(clientSA), "server_id", proxytest.Absent)
}

// Two meshed pods with identities: HTTP/1, h2, WebSocket, gRPC and opaque
// TCP (client first, and server first on an opaque port) between them are
// mutual TLS, encrypted on the wire,
// and both proxies' metrics say so with the peer's identity; an unmeshed
// client still reaches the server in plaintext, labelled as such.
func TestMutualTLS(t *testing.T) {
	netns.RequireCommand(t, "h2load")
	po := proxytest.PodOptions{OpaquePorts: strconv.Itoa(opaquePort), Env: map[string]string{"SLUICE_PROXY_DETECT_TIMEOUT": "10m"}}
	eachModeMTLS(t, po, func(t *testing.T, e *env) {
		for _, p := range []*proxytest.MeshedPod{e.client, e.server} {
			// The proxy writes its certificate, for debugging, where
			// SLUICE_PROXY_IDENTITY_DIR says.
			b, err := os.ReadFile(filepath.Join(p.IdentityDir, "certificate.crt"))
			if err != nil {
				t.Fatalf("%s: %v", p.Name(), err)
			}
			if certs, err := pki.ParseCertificates(b); err != nil || certs[0].DNSNames[0] != p.Identity {
				t.Errorf("%s's certificate.crt: %v, %v; want a chain for %s", p.Name(), certs, err, p.Identity)
			}
		}
		handshakes := func(p *proxytest.MeshedPod, dir string) float64 {
			return p.Metrics(t).Sum("tls_handshakes_total", proxytest.Labels{"direction": dir})
		}
		out0, in0 := handshakes(e.client, "outbound"), handshakes(e.server, "inbound")

		t.Run("http1", func(t *testing.T) {
			s := e.snapshot(t)
			rs := e.http(t, "--url", e.server.URL(httpPort, "/sha256"), "--host", authority(httpPort), "--body", "secret", "--keepalive-requests", "3")
			for i, r := range rs {
				if r.Status != 200 || first(r.Headers, "X-App-Name") != "web-1" {
					t.Errorf("request %d: %d %q %v", i, r.Status, r.Body, r.Headers)
				}
			}
			out, in := secured(e.outHTTP(httpPort)), secured(e.inHTTP(httpPort, authority(httpPort)))
			s.expect(t, e.client,
				eq("request_total", out, 3),
				eq("response_total", with(out, "status_code", "200", "classification", "success"), 3),
			)
			s.expect(t, e.server,
				eq("request_total", in, 3),
				eq("response_total", with(in, "status_code", "200", "classification", "success"), 3),
				eq("request_total", with(e.inHTTP(httpPort, authority(httpPort)), "tls", "no_identity"), 0),
			)
			// The connection between the proxies is labelled with both
			// identities on both sides.
			if m := e.client.Metrics(t); m.Sum("tcp_open_total", secured(merge(e.tcpLabels("outbound", "dst", httpPort), e.dstLabels()))) < 1 {
				t.Errorf("no outbound TCP series with the server's identity:\n%s", m.Format("tcp_open_total", proxytest.Labels{"direction": "outbound"}))
			}
			if m := e.server.Metrics(t); m.Sum("tcp_open_total", secured(e.tcpLabels("inbound", "src", httpPort))) < 1 {
				t.Errorf("no inbound TCP series with the client's identity:\n%s", m.Format("tcp_open_total", proxytest.Labels{"direction": "inbound"}))
			}
		})

		t.Run("wire", func(t *testing.T) {
			// A capture on the host's side of the pods' links sees a request
			// body sent between the meshed pods only encrypted, and in clear
			// from an unmeshed client (the capture works).
			netns.RequireCommand(t, "tcpdump")
			secret, clear := randomText(t), randomText(t)
			capt, err := capture.Start(e.mesh.Node.Bridge(), "tcp", t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			e.http(t, "--url", e.server.URL(httpPort, "/sha256"), "--host", authority(httpPort), "--body", secret)
			plain := e.mesh.AddPlainPod(t, "plain-wire")
			plain.Run(t, "http", "--url", e.server.URL(httpPort, "/sha256"), "--host", authority(httpPort), "--body", clear)
			ps, err := capt.Stop()
			if err != nil {
				t.Fatal(err)
			}
			sawClear, tlsFlows := false, 0
			opened := capture.Opened(ps)
			for f, stream := range capture.Streams(ps) {
				sawClear = sawClear || bytes.Contains(stream, []byte(clear))
				if bytes.Contains(stream, []byte(secret)) {
					t.Errorf("%s carries the request body between the meshed pods in clear", f)
				}
				if f.Src.Addr() == e.client.IPv4() || f.Dst.Addr() == e.client.IPv4() {
					if _, err := capture.TLSRecords(stream, opened[f]); err != nil {
						t.Errorf("%s between the meshed pods is not TLS: %v", f, err)
					}
					tlsFlows++
				}
			}
			if !sawClear || tlsFlows == 0 {
				t.Errorf("the capture on %s (%d packets) holds the unmeshed client's body: %v, flows between the meshed pods: %d; want both",
					e.mesh.Node.Bridge(), len(ps), sawClear, tlsFlows)
			}
		})

		t.Run("h2", func(t *testing.T) {
			const requests = 500
			s := e.snapshot(t)
			out := string(e.client.Exec(t, "h2load", "-n", strconv.Itoa(requests), "-c", "2", "-m", "10",
				"-H", ":authority: "+authority(httpPort), e.server.URL(httpPort, "/echo")))
			m := h2loadRequests.FindStringSubmatch(out)
			if m == nil || m[4] != strconv.Itoa(requests) {
				t.Fatalf("h2load: want %d succeeded:\n%s", requests, out)
			}
			s.expect(t, e.client, eq("request_total", secured(e.outHTTP(httpPort)), requests))
			s.expect(t, e.server, eq("request_total", secured(e.inHTTP(httpPort, authority(httpPort))), requests))
		})

		t.Run("websocket", func(t *testing.T) {
			// An upgrade needs HTTP/1.1 end to end: TLS with ALPN http/1.1.
			const messages, size = 20, 10000
			s := e.snapshot(t)
			r := proxytest.Line[wsResult](t, e.client.Run(t, "ws", "--url", "ws://"+e.serverAddr(httpPort)+"/ws",
				"--host", authority(httpPort), "--messages", strconv.Itoa(messages), "--size", strconv.Itoa(size)))
			if r.Err != "" || r.Status != 101 || r.Messages != messages || r.Bytes != messages*size || r.CloseCode != 1000 {
				t.Errorf("got %+v; want 101 and %d messages echoed", r, messages)
			}
			s.expect(t, e.client, eq("response_total", with(secured(e.outHTTP(httpPort)), "status_code", "101", "classification", "success"), 1))
			s.expect(t, e.server, eq("response_total", with(secured(e.inHTTP(httpPort, authority(httpPort))), "status_code", "101", "classification", "success"), 1))
		})

		t.Run("grpc", func(t *testing.T) {
			s := e.snapshot(t)
			rs := proxytest.Lines[grpcResult](t, e.client.Run(t, "grpc", "--addr", e.serverAddr(grpcPort), "--authority", authority(grpcPort),
				"--call", "bidi", "--count", "50", "--size", "1000"))
			if len(rs) != 1 || rs[0].Code != "OK" || rs[0].Received != 50 {
				t.Fatalf("grpc: %+v", rs)
			}
			ok := func(l proxytest.Labels) proxytest.Labels {
				return with(l, "status_code", "200", "grpc_status", "0", "classification", "success")
			}
			s.expect(t, e.client, eq("response_total", ok(secured(e.outHTTP(grpcPort))), 1))
			s.expect(t, e.server, eq("response_total", ok(secured(e.inHTTP(grpcPort, authority(grpcPort)))), 1))
		})

		t.Run("opaque", func(t *testing.T) {
			const n = 4 << 20
			s := e.snapshot(t)
			r := proxytest.Line[tcpResult](t, e.client.Run(t, "tcp", "--addr", e.serverAddr(echoPort), "--bytes", strconv.Itoa(n), "--seed", "41"))
			if r.Err != "" || !r.EOF || r.Received != n || r.ReceivedSHA256 != payload.SHA256(41, n) {
				t.Fatalf("got %+v; want all %d bytes echoed, then EOF", r, n)
			}
			s.expect(t, e.client,
				eq("tcp_open_total", secured(merge(e.tcpLabels("outbound", "dst", echoPort), e.dstLabels())), 1),
				ge("tcp_write_bytes_total", secured(merge(e.tcpLabels("outbound", "dst", echoPort), e.dstLabels())), n),
			)
			s.expect(t, e.server,
				eq("tcp_open_total", secured(e.tcpLabels("inbound", "src", echoPort)), 1),
				ge("tcp_read_bytes_total", secured(e.tcpLabels("inbound", "src", echoPort)), n),
			)
		})

		t.Run("server-first-opaque-port", func(t *testing.T) {
			// The detection timeout (10m) is far longer than the client
			// waits for the greeting: the server's proxy must take the
			// client proxy's TLS at once and relay the server's greeting.
			s := e.snapshot(t)
			r := proxytest.Line[opaqueResult](t, e.client.Run(t, "opaque", "--addr", e.serverAddr(opaquePort),
				"--frames", "10", "--size", "1000", "--timeout", "60s"))
			if r.Err != "" || r.Greeting != "sluice-opaque/1 web-1" || r.Frames != 10 {
				t.Fatalf("got %+v; want the greeting and 10 frames", r)
			}
			s.expect(t, e.server, eq("tcp_open_total", secured(e.tcpLabels("inbound", "src", opaquePort)), 1))
		})

		t.Run("unmeshed-client", func(t *testing.T) {
			plain := e.mesh.AddPlainPod(t, "plain")
			s := e.snapshot(t)
			rs := proxytest.Lines[httpResult](t, plain.Run(t, "http", "--url", e.server.URL(httpPort, "/sha256"), "--host", authority(httpPort), "--body", "hi"))
			if len(rs) != 1 || rs[0].Status != 200 || rs[0].Err != "" {
				t.Fatalf("unmeshed client: %+v", rs)
			}
			s.expect(t, e.server, eq("request_total",
				with(e.inHTTP(httpPort, authority(httpPort)), "tls", "no_identity", "no_tls_reason", "no_tls_from_remote", "client_id", proxytest.Absent), 1))
		})

		if out, in := handshakes(e.client, "outbound")-out0, handshakes(e.server, "inbound")-in0; out < 4 || in < 4 {
			t.Errorf("tls_handshakes_total moved by %v outbound (client) and %v inbound (server); want at least 4 each", out, in)
		}
	})
}

// A server whose proxy has another identity than discovery names, or a
// certificate from another mesh's authority: HTTP gets a 502 whose
// sluice-proxy-error says which, opaque TCP a reset, and the client's
// proxy logs and counts each with its own reason.
func TestServerCertificateRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		po     proxytest.PodOptions
		reason string
		want   string
	}{
		{"identity mismatch", proxytest.PodOptions{ServiceAccount: "impostor"}, "identity_mismatch",
			"tls: server identity mismatch: want " + proxytest.IdentityName(serverSA) + ", got " + proxytest.IdentityName("impostor")},
		{"unknown authority", proxytest.PodOptions{ForeignCA: true}, "unknown_authority",
			"tls: server certificate for " + proxytest.IdentityName(serverSA) + " is from an unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachModeMTLS(t, tc.po, func(t *testing.T, e *env) {
				// Discovery says the endpoints are web's.
				for _, port := range []int{httpPort, echoPort} {
					ep := e.server.Endpoint(uint16(port), "web")
					ep.Identity = proxytest.IdentityName(serverSA)
					path := proxytest.ServicePath("web", uint16(port))
					if port == echoPort {
						ep.H2, ep.Opaque, path = false, true, e.serverAddr(port)
					}
					e.mesh.Dest.Set(path, ep)
				}
				rs := proxytest.Lines[httpResult](t, e.client.Run(t, "http", "--url", e.server.URL(httpPort, "/echo"), "--host", authority(httpPort)))
				if len(rs) != 1 || rs[0].Status != 502 || !strings.Contains(first(rs[0].Headers, "Sluice-Proxy-Error"), tc.want) {
					t.Errorf("got %+v; want 502 with sluice-proxy-error %q", rs, tc.want)
				}
				r := proxytest.Line[tcpResult](t, e.client.Run(t, "tcp", "--addr", e.serverAddr(echoPort), "--bytes", "1000"))
				if !strings.Contains(r.Err, "connection reset by peer") || r.Received != 0 {
					t.Errorf("opaque: %+v; want a reset and nothing received", r)
				}
				e.client.Eventually(t, func(m proxytest.Metrics) error {
					if n := m.Sum("tls_handshake_errors_total", proxytest.Labels{"direction": "outbound", "reason": tc.reason}); n < 2 {
						return fmt.Errorf("tls_handshake_errors_total{reason=%s} = %v, want >= 2", tc.reason, n)
					}
					return nil
				})
				if log := e.client.ProxyLog(); !strings.Contains(log, "mTLS: outbound handshake failed") || !strings.Contains(log, tc.want) || !strings.Contains(log, "reason="+tc.reason) {
					t.Errorf("the client proxy's log does not name the failure")
				}
			})
		})
	}
}

// randomText returns a string that appears nowhere by chance.
func randomText(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "sluice-wire-" + hex.EncodeToString(b)
}
