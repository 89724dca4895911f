package httpproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/metrics"
)

var statusLine = regexp.MustCompile(`^HTTP/1\.[01] [1-5][0-9][0-9] `)

// FuzzHTTP1 sends arbitrary bytes as an HTTP/1 client would and checks
// that the proxy answers with a well-formed status line or closes, and that
// it keeps serving a well-formed request afterwards.
func FuzzHTTP1(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
		"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n bad folding\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	reg := metrics.New(metrics.Options{})
	up := upstream(f, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	addr := start(f, "inbound", &staticRouter{reg: reg, to: up}, reg)
	// One client for every input, so its keep-alive connection is reused:
	// a client per input would leave one idle connection (two descriptors)
	// behind per input and exhaust the descriptor limit within seconds. Its
	// timeout stays under the fuzzer's 10 s limit per input, so a proxy that
	// stops answering fails with a message rather than a killed worker.
	client := h1Client()
	client.Timeout = 5 * time.Second
	f.Cleanup(client.CloseIdleConnections)
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			c.Write(in)
			c.(*net.TCPConn).CloseWrite()
		}()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && !statusLine.MatchString(line) {
			t.Fatalf("answer %q is not a status line", line)
		}
		// Still serving.
		resp, err := client.Get("http://" + addr.String() + "/")
		if err != nil {
			t.Fatalf("proxy stopped serving: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("well-formed request after fuzz input: %d", resp.StatusCode)
		}
	})
}
