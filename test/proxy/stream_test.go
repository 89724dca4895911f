package proxy

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/sluice-mesh/sluice/test/proxytest"
	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// wsResult is the line of `testapp ws`.
type wsResult struct {
	Status      int    `json:"status"`
	Subprotocol string `json:"subprotocol"`
	Messages    int    `json:"messages"`
	Bytes       int64  `json:"bytes"`
	CloseCode   int    `json:"close_code"`
	Err         string `json:"err"`
}

// A WebSocket upgrade through both proxies, then messages both ways and a
// clean close: after the 101 the connection is a raw stream.
func TestWebSocket(t *testing.T) {
	eachMode(t, proxytest.PodOptions{}, func(t *testing.T, e *env) {
		const messages, size = 50, 20000
		s := e.snapshot(t)
		r := proxytest.Line[wsResult](t, e.client.Run(t, "ws", "--url", "ws://"+e.serverAddr(httpPort)+"/ws",
			"--host", authority(httpPort), "--messages", strconv.Itoa(messages), "--size", strconv.Itoa(size)))
		if r.Err != "" || r.Status != 101 || r.Subprotocol != "echo" || r.Messages != messages || r.Bytes != messages*size || r.CloseCode != 1000 {
			t.Errorf("got %+v; want 101, subprotocol echo, %d messages of %d bytes echoed and a 1000 close", r, messages, size)
		}
		out, in := e.outHTTP(httpPort), e.inHTTP(httpPort, authority(httpPort))
		s.expect(t, e.client,
			eq("request_total", out, 1),
			eq("response_total", with(out, "status_code", "101", "classification", "success"), 1),
			eq("tcp_open_total", e.tcpLabels("outbound", "src", httpPort), 1),
			ge("tcp_read_bytes_total", e.tcpLabels("outbound", "src", httpPort), messages*size),
			ge("tcp_write_bytes_total", e.tcpLabels("outbound", "src", httpPort), messages*size),
			eq("tcp_close_total", e.tcpLabels("outbound", "src", httpPort), 1),
		)
		s.expect(t, e.server,
			eq("request_total", in, 1),
			eq("response_total", with(in, "status_code", "101", "classification", "success"), 1),
			ge("tcp_read_bytes_total", e.tcpLabels("inbound", "src", httpPort), messages*size),
		)
	})
}

// tcpResult is the line of `testapp tcp`.
type tcpResult struct {
	Sent           int64  `json:"sent"`
	SentSHA256     string `json:"sent_sha256"`
	Received       int64  `json:"received"`
	ReceivedSHA256 string `json:"received_sha256"`
	EOF            bool   `json:"eof"`
	Err            string `json:"err"`
}

// tcpEvent is the app's line for a finished echo connection.
type tcpEvent struct {
	Remote   string `json:"remote"`
	Received int64  `json:"received"`
	EOF      bool   `json:"eof"`
}

// Raw TCP (detected as not HTTP) through both proxies with half-close: the
// client sends, shuts down its sending side, and still receives the whole
// echo, which the server sends until it sees the client's EOF.
func TestTCPHalfClose(t *testing.T) {
	eachMode(t, proxytest.PodOptions{}, func(t *testing.T, e *env) {
		// 0 bytes: the client half-closes at once; the connection must
		// still reach the server, whose EOF (and nothing else) comes back.
		for _, n := range []int64{16 << 20, 1, 0} {
			t.Run(strconv.FormatInt(n, 10)+"B", func(t *testing.T) {
				s := e.snapshot(t)
				e.app.Drain()
				r := proxytest.Line[tcpResult](t, e.client.Run(t, "tcp", "--addr", e.serverAddr(echoPort), "--bytes", strconv.FormatInt(n, 10), "--seed", "31"))
				want := payload.SHA256(31, n)
				if r.Err != "" || !r.EOF || r.Sent != n || r.Received != n || r.ReceivedSHA256 != want {
					t.Errorf("got %+v; want all %d bytes echoed (sha256 %s) after the half-close, then EOF", r, n, want)
				}
				var ev tcpEvent
				e.app.Next(t, "tcp", &ev)
				if ap, err := netip.ParseAddrPort(ev.Remote); ev.Received != n || !ev.EOF || err != nil || !ap.Addr().Unmap().IsLoopback() {
					t.Errorf("the app saw %+v; want %d bytes, then EOF, from its proxy on loopback", ev, n)
				}
				src, dst := e.tcpLabels("outbound", "src", echoPort), merge(e.tcpLabels("outbound", "dst", echoPort), e.dstLabels())
				s.expect(t, e.client,
					eq("tcp_open_total", src, 1),
					eq("tcp_open_total", dst, 1),
					ge("tcp_read_bytes_total", src, float64(n)),
					ge("tcp_write_bytes_total", src, float64(n)),
					ge("tcp_write_bytes_total", dst, float64(n)),
					eq("tcp_close_total", src, 1),
					eq("tcp_open_connections", src, 0),
					eq("request_total", proxytest.Labels{"target_port": strconv.Itoa(echoPort)}, 0),
				)
				s.expect(t, e.server,
					eq("tcp_open_total", e.tcpLabels("inbound", "src", echoPort), 1),
					ge("tcp_read_bytes_total", e.tcpLabels("inbound", "src", echoPort), float64(n)),
					eq("tcp_close_total", e.tcpLabels("inbound", "src", echoPort), 1),
				)
			})
		}
	})
}

// opaqueResult is the line of `testapp opaque`.
type opaqueResult struct {
	Greeting string `json:"greeting"`
	Frames   int    `json:"frames"`
	Bytes    int64  `json:"bytes"`
	Err      string `json:"err"`
}

// A server-first binary protocol on a port both proxies list in
// SLUICE_PROXY_OPAQUE_PORTS: the proxies forward without waiting for the
// client's first bytes, whose detection timeout is set longer than the
// client waits for the greeting, so the exchange works only if the port is
// treated as opaque.
func TestOpaquePort(t *testing.T) {
	po := proxytest.PodOptions{OpaquePorts: strconv.Itoa(opaquePort), Env: map[string]string{"SLUICE_PROXY_DETECT_TIMEOUT": "10m"}}
	eachMode(t, po, func(t *testing.T, e *env) {
		const frames, size = 30, 40000
		s := e.snapshot(t)
		r := proxytest.Line[opaqueResult](t, e.client.Run(t, "opaque", "--addr", e.serverAddr(opaquePort),
			"--frames", strconv.Itoa(frames), "--size", strconv.Itoa(size), "--timeout", "60s"))
		if r.Err != "" || r.Greeting != "sluice-opaque/1 web-1" || r.Frames != frames || r.Bytes != frames*size {
			t.Errorf("got %+v; want the greeting and %d frames answered", r, frames)
		}
		src, dst := e.tcpLabels("outbound", "src", opaquePort), merge(e.tcpLabels("outbound", "dst", opaquePort), e.dstLabels())
		s.expect(t, e.client,
			eq("tcp_open_total", src, 1),
			eq("tcp_open_total", dst, 1),
			ge("tcp_read_bytes_total", src, frames*size),
			ge("tcp_read_bytes_total", dst, frames*size),
			eq("tcp_close_total", src, 1),
			eq("request_total", proxytest.Labels{"target_port": strconv.Itoa(opaquePort)}, 0),
		)
		s.expect(t, e.server,
			eq("tcp_open_total", e.tcpLabels("inbound", "src", opaquePort), 1),
			eq("tcp_open_total", e.tcpLabels("inbound", "dst", opaquePort), 1),
			ge("tcp_read_bytes_total", e.tcpLabels("inbound", "src", opaquePort), frames*size),
			eq("request_total", proxytest.Labels{"target_port": strconv.Itoa(opaquePort)}, 0),
		)
	})
}
