package proxy

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest"
	"github.com/sluice-mesh/sluice/test/proxytest/payload"
)

// httpResult is a line of `testapp http`.
type httpResult struct {
	Status         int                 `json:"status"`
	Proto          string              `json:"proto"`
	Bytes          int64               `json:"bytes"`
	SHA256         string              `json:"sha256"`
	Body           string              `json:"body"`
	Headers        map[string][]string `json:"headers"`
	Trailers       map[string][]string `json:"trailers"`
	SentSHA256     string              `json:"sent_sha256"`
	Got100Continue bool                `json:"got_100_continue"`
	Reused         bool                `json:"reused"`
	Conns          int64               `json:"conns"`
	Err            string              `json:"err"`
}

// sha256Answer is the app's answer to /sha256.
type sha256Answer struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// headersAnswer is the app's answer to /headers.
type headersAnswer struct {
	Host       string              `json:"host"`
	Proto      string              `json:"proto"`
	RemoteAddr string              `json:"remote_addr"`
	Headers    map[string][]string `json:"headers"`
}

// bigBody is the size of the large uploads and downloads.
const bigBody = 100 << 20

// linkerdBuckets are the le values of Linkerd's response_latency_ms.
var linkerdBuckets = []string{"1", "2", "3", "4", "5", "10", "20", "30", "40", "50", "100", "200", "300", "400", "500",
	"1000", "2000", "3000", "4000", "5000", "10000", "20000", "30000", "40000", "50000", "+Inf"}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// get runs `testapp http` in the client pod and checks every request got
// an answer.
func (e *env) http(t *testing.T, args ...string) []httpResult {
	t.Helper()
	rs := proxytest.Lines[httpResult](t, e.client.Run(t, append([]string{"http"}, args...)...))
	for i, r := range rs {
		if r.Err != "" {
			t.Fatalf("request %d: %s", i, r.Err)
		}
	}
	return rs
}

func decodeBody[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	return v
}

// HTTP/1.1 from Go's net/http client and curl through two proxies:
// keep-alive, 100 MiB chunked uploads and downloads with checksums,
// Expect: 100-continue, and requests without a service name.
func TestHTTP1(t *testing.T) {
	netns.RequireCommand(t, "curl")
	upSHA, downSHA := payload.SHA256(11, bigBody), payload.SHA256(12, bigBody)
	eachMode(t, proxytest.PodOptions{}, func(t *testing.T, e *env) {
		url := func(path string) string { return e.server.URL(httpPort, path) }
		host := authority(httpPort)

		t.Run("keep-alive/go", func(t *testing.T) {
			s := e.snapshot(t)
			rs := e.http(t, "--url", url("/sha256"), "--host", host, "--body", "ping", "--keepalive-requests", "5")
			for i, r := range rs {
				a := decodeBody[sha256Answer](t, r.Body)
				if r.Status != 200 || a.Bytes != 4 || a.SHA256 != r.SentSHA256 || r.Proto != "HTTP/1.1" || first(r.Headers, "X-App-Name") != "web-1" {
					t.Errorf("request %d: %d %s %q %v", i, r.Status, r.Proto, r.Body, r.Headers)
				}
				if r.Conns != 1 || r.Reused != (i > 0) {
					t.Errorf("request %d: the app dialled %d connections (reused %v); want all requests on one", i, r.Conns, r.Reused)
				}
			}
			e.httpOK(t, s, httpPort, "200", 5)
			m := s.expect(t, e.client,
				eq("tcp_open_total", e.tcpLabels("outbound", "src", httpPort), 1),
				le("tcp_open_total", e.tcpLabels("outbound", "dst", httpPort), 1),
			)
			// The proxy's connections to the server pod are labelled with
			// the endpoint's dst_* labels, as Linkerd's dashboards expect.
			if dst := merge(e.tcpLabels("outbound", "dst", httpPort), e.dstLabels()); m.Sum("tcp_open_total", dst) < 1 {
				t.Errorf("no tcp_open_total%s; outbound dst series:\n%s", dst, m.Format("tcp_open_total", proxytest.Labels{"direction": "outbound", "peer": "dst"}))
			}
			s.expect(t, e.server, le("tcp_open_total", e.tcpLabels("inbound", "src", httpPort), 1))
			// Linkerd's latency buckets, so its dashboards' quantiles work.
			var les []string
			for _, b := range m.Samples("response_latency_ms_bucket", with(e.outHTTP(httpPort), "status_code", "200")) {
				les = append(les, b.Labels["le"])
			}
			if want := linkerdBuckets; !sameSet(les, want) {
				t.Errorf("response_latency_ms buckets %v, want %v", les, want)
			}
		})

		t.Run("keep-alive/curl", func(t *testing.T) {
			s := e.snapshot(t)
			u := url("/echo")
			out := string(e.client.Exec(t, "curl", "-sS", "-o", "/dev/null", "-H", "Host: "+host,
				"-w", "%{http_code} %{num_connects}\n", u, u, u))
			if out != "200 1\n200 0\n200 0\n" {
				t.Errorf("curl (status, new connections) per request:\n%s\nwant three 200s on one connection", out)
			}
			e.httpOK(t, s, httpPort, "200", 3)
			s.expect(t, e.client, eq("tcp_open_total", e.tcpLabels("outbound", "src", httpPort), 1))
		})

		t.Run("upload/go", func(t *testing.T) {
			s := e.snapshot(t)
			r := e.http(t, "--url", url("/sha256"), "--host", host, "--upload-bytes", strconv.Itoa(bigBody), "--seed", "11")[0]
			a := decodeBody[sha256Answer](t, r.Body)
			if r.Status != 200 || a.Bytes != bigBody || a.SHA256 != upSHA || r.SentSHA256 != upSHA {
				t.Errorf("the app received %d bytes with sha256 %s (status %d); sent %d bytes with %s", a.Bytes, a.SHA256, r.Status, bigBody, upSHA)
			}
			e.httpOK(t, s, httpPort, "200", 1)
			s.expect(t, e.client, ge("tcp_read_bytes_total", e.tcpLabels("outbound", "src", httpPort), bigBody))
			s.expect(t, e.server, ge("tcp_read_bytes_total", e.tcpLabels("inbound", "src", httpPort), bigBody))
		})

		// The app answers /echo while it still reads the request: the
		// body streams both ways at once.
		t.Run("full-duplex/go", func(t *testing.T) {
			const n = 10 << 20
			s := e.snapshot(t)
			r := e.http(t, "--url", url("/echo"), "--host", host, "--upload-bytes", strconv.Itoa(n), "--seed", "15")[0]
			if want := payload.SHA256(15, n); r.Status != 200 || r.Bytes != n || r.SHA256 != want {
				t.Errorf("echo of %d bytes: status %d, %d bytes with sha256 %s; want %s", n, r.Status, r.Bytes, r.SHA256, want)
			}
			e.httpOK(t, s, httpPort, "200", 1)
		})

		t.Run("download/go", func(t *testing.T) {
			s := e.snapshot(t)
			r := e.http(t, "--url", url(fmt.Sprintf("/bytes?n=%d&seed=12", bigBody)), "--host", host)[0]
			if r.Status != 200 || r.Bytes != bigBody || r.SHA256 != downSHA {
				t.Errorf("received %d bytes with sha256 %s (status %d), want %d with %s", r.Bytes, r.SHA256, r.Status, bigBody, downSHA)
			}
			if tr := r.Trailers["X-Sha256"]; len(tr) != 1 || tr[0] != downSHA {
				t.Errorf("trailer x-sha256 %v, want %s (trailers %v)", tr, downSHA, r.Trailers)
			}
			e.httpOK(t, s, httpPort, "200", 1)
			s.expect(t, e.client, ge("tcp_write_bytes_total", e.tcpLabels("outbound", "src", httpPort), bigBody))
			s.expect(t, e.server, ge("tcp_write_bytes_total", e.tcpLabels("inbound", "src", httpPort), bigBody))
		})

		t.Run("upload/curl", func(t *testing.T) {
			s := e.snapshot(t)
			// curl -T - reads stdin and sends it chunked.
			out, _ := e.curl(t, fmt.Sprintf("APP gen --bytes %d --seed 11 | curl -sS --fail-with-body -T - -H 'Host: %s' %s",
				bigBody, host, url("/sha256")))
			if a := decodeBody[sha256Answer](t, out); a.Bytes != bigBody || a.SHA256 != upSHA {
				t.Errorf("the app received %d bytes with sha256 %s, want %d with %s", a.Bytes, a.SHA256, bigBody, upSHA)
			}
			e.httpOK(t, s, httpPort, "200", 1)
		})

		t.Run("download/curl", func(t *testing.T) {
			s := e.snapshot(t)
			out, h := e.curl(t, fmt.Sprintf("curl -sS --fail -D HEADERS -H 'Host: %s' '%s' | sha256sum",
				host, url(fmt.Sprintf("/bytes?n=%d&seed=12", bigBody))))
			if got, _, _ := strings.Cut(out, " "); got != downSHA {
				t.Errorf("curl received bytes with sha256 %q, want %s", got, downSHA)
			}
			if !strings.Contains(strings.ToLower(h), "x-sha256: "+downSHA) {
				t.Errorf("curl saw no trailer x-sha256: %s in:\n%s", downSHA, h)
			}
			e.httpOK(t, s, httpPort, "200", 1)
		})

		t.Run("expect-continue/go", func(t *testing.T) {
			s := e.snapshot(t)
			r := e.http(t, "--url", url("/sha256"), "--host", host, "--upload-bytes", "1000000", "--seed", "3", "--expect-continue")[0]
			a := decodeBody[sha256Answer](t, r.Body)
			if !r.Got100Continue {
				t.Error("the client got no 100 Continue")
			}
			if r.Status != 200 || a.SHA256 != payload.SHA256(3, 1000000) {
				t.Errorf("status %d, the app received %d bytes with sha256 %s", r.Status, a.Bytes, a.SHA256)
			}
			e.httpOK(t, s, httpPort, "200", 1)
		})

		t.Run("expect-continue/curl", func(t *testing.T) {
			s := e.snapshot(t)
			out, h := e.curl(t, fmt.Sprintf("APP gen --bytes 1000000 --seed 3 | curl -sS --fail-with-body -D HEADERS -T - -H 'Expect: 100-continue' -H 'Host: %s' %s",
				host, url("/sha256")))
			if a := decodeBody[sha256Answer](t, out); a.SHA256 != payload.SHA256(3, 1000000) {
				t.Errorf("the app received %d bytes with sha256 %s", a.Bytes, a.SHA256)
			}
			if !strings.Contains(h, "HTTP/1.1 100 Continue") {
				t.Errorf("curl saw no 100 Continue:\n%s", h)
			}
			e.httpOK(t, s, httpPort, "200", 1)
		})

		// The app refuses the body with a final status: the client gets
		// it instead of a 100 and never sends the body.
		t.Run("expect-continue-refused/curl", func(t *testing.T) {
			s := e.snapshot(t)
			out, h := e.curl(t, fmt.Sprintf("APP gen --bytes 10000000 | curl -sS -o /dev/null -w '%%{http_code} %%{size_upload}' -D HEADERS -T - -H 'Expect: 100-continue' -H 'Host: %s' %s",
				host, url("/status/413")))
			if out != "413 0" || strings.Contains(h, "100 Continue") {
				t.Errorf("curl: status and bytes uploaded %q, headers:\n%s\nwant 413, no 100 Continue and no body sent", out, h)
			}
			// Linkerd classifies only 5xx as failures.
			s.expect(t, e.client, eq("response_total", with(e.outHTTP(httpPort), "status_code", "413", "classification", "success"), 1))
		})

		t.Run("request-headers", func(t *testing.T) {
			s := e.snapshot(t)
			r := e.http(t, "--url", url("/headers?x=1"), "--host", host, "-H", "X-Custom: kept", "-H", "Connection: X-Hop", "-H", "X-Hop: dropped")[0]
			a := decodeBody[headersAnswer](t, r.Body)
			if a.Host != host || a.Proto != "HTTP/1.1" || first(a.Headers, "X-Custom") != "kept" {
				t.Errorf("the app saw host %q proto %s headers %v; want host %s, HTTP/1.1 and x-custom", a.Host, a.Proto, a.Headers, host)
			}
			if v := first(a.Headers, "X-Hop"); v != "" {
				t.Errorf("hop-by-hop header X-Hop (named in Connection) reached the app: %q", v)
			}
			if ip, _, err := net.SplitHostPort(a.RemoteAddr); err != nil || !net.ParseIP(ip).IsLoopback() {
				t.Errorf("the app saw the request from %s, want its proxy on loopback", a.RemoteAddr)
			}
			e.httpOK(t, s, httpPort, "200", 1)
		})

		t.Run("error-status", func(t *testing.T) {
			s := e.snapshot(t)
			r := e.http(t, "--url", url("/status/503"), "--host", host)[0]
			if r.Status != 503 || len(r.Headers["Sluice-Proxy-Error"]) != 0 {
				t.Errorf("status %d headers %v, want the app's own 503", r.Status, r.Headers)
			}
			out := e.outHTTP(httpPort)
			s.expect(t, e.client,
				eq("request_total", out, 1),
				eq("response_total", with(out, "status_code", "503", "classification", "failure"), 1),
			)
			s.expect(t, e.server, eq("response_total", with(e.inHTTP(httpPort, host), "status_code", "503", "classification", "failure"), 1))
		})

		// An IP literal authority is not a service: the request goes to
		// its original destination, with no dst_* labels.
		t.Run("original-destination", func(t *testing.T) {
			for _, ip := range []net.IP{net.IP(e.server.IPv4().AsSlice()), net.IP(e.server.IPv6().AsSlice())} {
				hostport := net.JoinHostPort(ip.String(), strconv.Itoa(httpPort))
				s := e.snapshot(t)
				r := e.http(t, "--url", "http://"+hostport+"/headers")[0]
				if a := decodeBody[headersAnswer](t, r.Body); r.Status != 200 || a.Host != hostport {
					t.Errorf("%s: status %d, the app saw host %q", hostport, r.Status, a.Host)
				}
				out := proxytest.Labels{"direction": "outbound", "authority": hostport, "target_addr": hostport, "dst_service": proxytest.Absent}
				s.expect(t, e.client,
					eq("request_total", out, 1),
					eq("response_total", with(out, "status_code", "200", "classification", "success"), 1),
				)
				s.expect(t, e.server, eq("request_total", proxytest.Labels{"direction": "inbound", "authority": hostport, "target_addr": hostport}, 1))
			}
		})
	})
}

// curl runs a shell script (a pipeline with curl) in the client pod, with
// APP standing for the testapp binary and HEADERS for a file to give
// curl's -D. It returns the script's stdout and the file: every response
// header block curl saw, 1xx answers and trailers included.
func (e *env) curl(t *testing.T, script string) (stdout, headers string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-proxy-e2e-") // not t.TempDir: its parent is private to root
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	hdrs := filepath.Join(dir, "headers")
	script = strings.NewReplacer("APP", e.mesh.AppBin, "HEADERS", hdrs).Replace(script)
	out := e.client.Exec(t, "sh", "-c", script)
	h, _ := os.ReadFile(hdrs)
	return string(out), string(h)
}

func first(h map[string][]string, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}
