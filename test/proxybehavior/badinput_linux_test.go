package proxybehavior

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/test/proxytest"
)

// Hostile and broken clients of a pod's inbound proxy — binary garbage,
// malformed HTTP, truncated requests, a 1 MiB header, slowloris clients —
// get an error answer or a closed connection, never a hang, while a
// well-behaved client keeps getting 200s throughout; the proxy's
// inbound_http_errors_total counts the malformed requests it answered.
func TestBadInput(t *testing.T) {
	eachMode(t, ebpfOnly, func(t *testing.T, m *proxytest.Mesh) {
		web := m.AddPod(t, "web", proxytest.PodOptions{})
		web.App(t, "--http", fmt.Sprintf(":%d", appPort), "--name", "web")
		addr := fmt.Sprintf("%s:%d", web.IPv4(), appPort)
		before := web.Metrics(t)

		good := startGoodClient(t, web.URL(appPort, "/echo"))

		// Slowloris clients hold their connections for the proxy's header
		// timeout (10 s); everything else happens meanwhile.
		const slowClients = 20
		var slow sync.WaitGroup
		slowEnds := make(chan slowEnd, slowClients)
		for range slowClients {
			slow.Add(1)
			go func() { defer slow.Done(); slowEnds <- slowloris(addr) }()
		}

		var malformed int // answers the proxy itself gave to malformed HTTP
		cases := []struct {
			name string
			send []byte
			// closeWrite half-closes after send, as a client that gave up.
			closeWrite bool
			// want is the status the answer must have; 0: any answer or
			// none, as long as the connection ends.
			want int
		}{
			{name: "binary garbage", send: garbage(4096), want: 0},
			{name: "invalid header line", send: []byte("GET /echo HTTP/1.1\r\nHost: web\r\n\x01\x02 nonsense\r\n\r\n"), want: 400},
			{name: "invalid content-length", send: []byte("POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: twelve\r\n\r\nhello"), want: 400},
			{name: "HTTP/1.1 without Host", send: []byte("GET /echo HTTP/1.1\r\n\r\n"), want: 400},
			{name: "truncated headers", send: []byte("GET /echo HTTP/1.1\r\nHost: web\r\nX-Partial: ab"), closeWrite: true},
			{name: "truncated body", send: []byte("POST /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 1000\r\n\r\nonly ten b"), closeWrite: true},
			{name: "1 MiB header", send: append(append([]byte("GET /echo HTTP/1.1\r\nHost: web\r\nX-Big: "), bytes.Repeat([]byte("a"), 1<<20)...), "\r\n\r\n"...), want: 431},
		}
		for _, tc := range cases {
			resp, err := rawExchange(addr, tc.send, tc.closeWrite)
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			t.Logf("%s: answer %q", tc.name, resp.statusLine)
			if tc.want != 0 && resp.status != tc.want {
				t.Errorf("%s: answer %q, want status %d and a closed connection", tc.name, resp.statusLine, tc.want)
			}
			if resp.status == 400 && resp.app == "" && tc.name != "binary garbage" {
				malformed++
			}
		}

		slow.Wait()
		close(slowEnds)
		for e := range slowEnds {
			switch {
			case e.err != nil:
				t.Errorf("slowloris: %v", e.err)
			case e.status400:
				// net/http answers 400 to a request whose header times
				// out half-written; the proxy counts it as an error.
				malformed++
			}
		}
		rs := good.stop(t)
		if len(rs) == 0 {
			t.Fatal("the well-behaved client made no request")
		}
		if bad := failures(rs); len(bad) > 0 {
			t.Errorf("%d of the well-behaved client's %d requests failed, first: %v", len(bad), len(rs), bad[0])
		}
		t.Logf("the well-behaved client got %d answers meanwhile", len(rs))

		// Every error answer the proxy gave is counted: the 431 as such,
		// the 400s under any label.
		web.Eventually(t, func(after proxytest.Metrics) error {
			growth := func(q proxytest.Labels) float64 {
				return after.Sum("inbound_http_errors_total", q) - before.Sum("inbound_http_errors_total", q)
			}
			tooLarge := proxytest.Labels{"error": "request_header_fields_too_large"}
			if got, all := growth(tooLarge), growth(nil); got != 1 || all != float64(malformed+1) {
				return fmt.Errorf("inbound_http_errors_total%s grew by %g and all its series by %g; want 1 and %d (the 431 and %d answers 400)\n%s",
					tooLarge, got, all, malformed+1, malformed, after.Format("inbound_http_errors_total", nil))
			}
			return nil
		})
		t.Logf("error answers counted:\n%s", web.Metrics(t).Format("inbound_http_errors_total", nil))
	})
}

// garbage returns n bytes that are neither HTTP nor TLS.
func garbage(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	b[0] = 0
	return b
}

// rawAnswer is what a raw client read back.
type rawAnswer struct {
	statusLine string // "" when the connection ended without an answer
	status     int
	app        string // x-app-name: the application answered
}

// rawExchange connects to addr, writes send (concurrently with reading,
// since a server may answer and close before reading it all) and reads
// until the server closes the connection. Only a hang (a minute) or a
// failed connect is an error: a reset after the answer is not.
func rawExchange(addr string, send []byte, closeWrite bool) (rawAnswer, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return rawAnswer{}, fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	go func() {
		if _, err := c.Write(send); err == nil && closeWrite {
			_ = c.(*net.TCPConn).CloseWrite()
		}
	}()
	var ans rawAnswer
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err == nil {
		ans.statusLine = resp.Proto + " " + resp.Status
		ans.status = resp.StatusCode
		ans.app = resp.Header.Get("X-App-Name")
		_, err = io.Copy(io.Discard, resp.Body)
		if err == nil {
			// Read on until the server closes.
			_, err = io.Copy(io.Discard, br)
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ans, fmt.Errorf("connection still open a minute later (answer %q)", ans.statusLine)
	}
	return ans, nil
}

// slowEnd is how a slowloris client ended.
type slowEnd struct {
	status400 bool  // the server answered 400 before it closed
	err       error // the server answered 2xx, or did not close for a minute
}

// slowloris sends a request line, then a header one byte a second, until
// the server closes the connection.
func slowloris(addr string) slowEnd {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return slowEnd{err: fmt.Errorf("connect: %w", err)}
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /echo HTTP/1.1\r\nHost: web\r\n"); err != nil {
		return slowEnd{err: fmt.Errorf("write request line: %w", err)}
	}
	type end struct {
		b   []byte
		err error
	}
	closed := make(chan end, 1)
	go func() {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		b, err := io.ReadAll(c)
		closed <- end{b, err}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	header := "X-Slowloris: " + strings.Repeat("z", 100)
	for i := 0; ; i++ {
		select {
		case e := <-closed:
			var ne net.Error
			switch {
			case errors.As(e.err, &ne) && ne.Timeout():
				return slowEnd{err: fmt.Errorf("the connection is still open after a minute of one header byte a second (sent %d)", i)}
			case bytes.HasPrefix(e.b, []byte("HTTP/1.1 2")):
				return slowEnd{err: fmt.Errorf("the proxy answered a request whose header never ended: %.40q", e.b)}
			}
			return slowEnd{status400: bytes.HasPrefix(e.b, []byte("HTTP/1.1 400 "))}
		case <-tick.C:
			_, _ = c.Write([]byte{header[i%len(header)]})
		}
	}
}

// goodClient sends GET requests one after another over a keep-alive
// connection from the host, recording each result.
type goodClient struct {
	stopc chan struct{}
	done  chan []result
}

func startGoodClient(t *testing.T, url string) *goodClient {
	g := &goodClient{stopc: make(chan struct{}), done: make(chan []result, 1)}
	hc := &http.Client{Timeout: 30 * time.Second}
	go func() {
		var rs []result
		defer func() { hc.CloseIdleConnections(); g.done <- rs }()
		for seq := int64(0); ; seq++ {
			select {
			case <-g.stopc:
				return
			case <-time.After(10 * time.Millisecond):
			}
			r := result{Seq: seq}
			resp, err := hc.Get(url)
			if err != nil {
				r.Err = err.Error()
			} else {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				r.Status, r.App = resp.StatusCode, resp.Header.Get("X-App-Name")
				if err != nil {
					r.Err = "read body: " + err.Error()
				}
			}
			rs = append(rs, r)
		}
	}()
	t.Cleanup(func() { g.stopOnce() })
	return g
}

func (g *goodClient) stopOnce() {
	select {
	case <-g.stopc:
	default:
		close(g.stopc)
	}
}

// stop ends the client and returns its results.
func (g *goodClient) stop(t *testing.T) []result {
	t.Helper()
	g.stopOnce()
	select {
	case rs := <-g.done:
		return rs
	case <-time.After(time.Minute):
		t.Fatal("the well-behaved client did not stop (hang guard)")
		return nil
	}
}
