package proxy

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"

	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest"
	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// h2load's summary lines.
var (
	h2loadRequests = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2loadStatus   = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// HTTP/2 with prior knowledge (h2c) from the application: h2load with many
// concurrent streams, and Go's client streaming a body with a trailer.
func TestH2C(t *testing.T) {
	netns.RequireCommand(t, "h2load")
	eachMode(t, proxytest.PodOptions{}, func(t *testing.T, e *env) {
		host := authority(httpPort)

		t.Run("h2load", func(t *testing.T) {
			const requests, conns = 2000, 4
			s := e.snapshot(t)
			out := string(e.client.Exec(t, "h2load", "-n", strconv.Itoa(requests), "-c", strconv.Itoa(conns), "-m", "10",
				"-H", ":authority: "+host, e.server.URL(httpPort, "/echo")))
			m := h2loadRequests.FindStringSubmatch(out)
			st := h2loadStatus.FindStringSubmatch(out)
			if m == nil || st == nil {
				t.Fatalf("no summary in h2load's output:\n%s", out)
			}
			if m[4] != strconv.Itoa(requests) || m[5] != "0" || m[6] != "0" || st[1] != strconv.Itoa(requests) {
				t.Errorf("h2load: %s; %s; want %d succeeded with 2xx", m[0], st[0], requests)
			}
			e.httpOK(t, s, httpPort, "200", requests)
			s.expect(t, e.client, eq("tcp_open_total", e.tcpLabels("outbound", "src", httpPort), conns))
		})

		t.Run("go-client", func(t *testing.T) {
			const n = 10 << 20
			s := e.snapshot(t)
			want := payload.SHA256(21, n)
			rs := e.http(t, "--h2c", "--url", e.server.URL(httpPort, fmt.Sprintf("/bytes?n=%d&seed=21", n)), "--host", host, "--keepalive-requests", "3")
			for i, r := range rs {
				if r.Status != 200 || r.Proto != "HTTP/2.0" || r.Bytes != n || r.SHA256 != want {
					t.Errorf("request %d: %d %s, %d bytes with sha256 %s; want 200 HTTP/2.0, %d bytes with %s", i, r.Status, r.Proto, r.Bytes, r.SHA256, n, want)
				}
				if tr := r.Trailers["X-Sha256"]; len(tr) != 1 || tr[0] != want {
					t.Errorf("request %d: trailer x-sha256 %v, want %s", i, tr, want)
				}
				if r.Conns != 1 {
					t.Errorf("request %d: %d connections, want one for all streams", i, r.Conns)
				}
			}
			e.httpOK(t, s, httpPort, "200", 3)
			s.expect(t, e.client,
				eq("tcp_open_total", e.tcpLabels("outbound", "src", httpPort), 1),
				ge("tcp_write_bytes_total", e.tcpLabels("outbound", "src", httpPort), 3*n),
			)
		})

		t.Run("upload", func(t *testing.T) {
			const n = 20 << 20
			s := e.snapshot(t)
			r := e.http(t, "--h2c", "--url", e.server.URL(httpPort, "/sha256"), "--host", host, "--upload-bytes", strconv.Itoa(n), "--seed", "22")[0]
			if a := decodeBody[sha256Answer](t, r.Body); r.Status != 200 || a.Bytes != n || a.SHA256 != payload.SHA256(22, n) {
				t.Errorf("status %d, the app received %d bytes with sha256 %s", r.Status, a.Bytes, a.SHA256)
			}
			e.httpOK(t, s, httpPort, "200", 1)
		})
	})
}
