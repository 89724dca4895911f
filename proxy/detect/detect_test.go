package detect_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/detect"
	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
)

// detectTimeout is short, so that timeout cases end quickly; tests assert
// outcomes, never durations.
const detectTimeout = 50 * time.Millisecond

// trickle hands out at most one byte per Read: data arriving byte by byte.
type trickle struct{ net.Conn }

func (c trickle) Read(b []byte) (int, error) { return c.Conn.Read(b[:min(len(b), 1)]) }

type detectResult struct {
	p   detect.Protocol
	c   *detect.Conn
	err error
}

func detectAsync(c net.Conn, timeout time.Duration) <-chan detectResult {
	ch := make(chan detectResult, 1)
	go func() {
		p, dc, err := detect.Detect(c, timeout)
		ch <- detectResult{p, dc, err}
	}()
	return ch
}

func TestDetect(t *testing.T) {
	const get = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, tc := range []struct {
		name    string
		chunks  []string // written in turn, each as its own Write
		closeW  bool     // half-close after the chunks
		oneByte bool     // the reader gets one byte per Read
		want    detect.Protocol
		peeked  string // what Detect read; "" skips the check
	}{
		{name: "GET in one write", chunks: []string{get}, want: detect.HTTP1, peeked: get},
		{name: "GET byte by byte", chunks: []string{get}, oneByte: true, want: detect.HTTP1, peeked: "GET /x HTTP/1.1\r\n"},
		{name: "GET in pieces", chunks: []string{"GE", "T /x HT", "TP/1.1\r", "\nHost: a\r\n\r\n"}, want: detect.HTTP1},
		{name: "h2 preface split", chunks: []string{"PRI * HTTP/2.0\r\n", "\r\nSM\r\n\r\n", "\x00\x00\x00\x04\x00\x00\x00\x00\x00"}, want: detect.HTTP2},
		{name: "h2 preface byte by byte", chunks: []string{preface + "\x00\x00\x12\x04"}, oneByte: true, want: detect.HTTP2, peeked: preface},
		{name: "TLS", chunks: []string{string(clientHello)}, want: detect.TLS, peeked: string(clientHello)},
		{name: "TLS byte by byte", chunks: []string{string(clientHello)}, oneByte: true, want: detect.TLS, peeked: string(clientHello[:3])},
		{name: "binary byte by byte", chunks: []string{"\x00\xffrest"}, oneByte: true, want: detect.Opaque, peeked: "\x00"},
		{name: "partial line then EOF", chunks: []string{"GET / HT"}, closeW: true, want: detect.Opaque, peeked: "GET / HT"},
		{name: "partial line then silence", chunks: []string{"GET / HT"}, want: detect.Opaque, peeked: "GET / HT"},
		{name: "nothing: server speaks first", want: detect.Opaque, peeked: ""},
		{name: "longer than MaxPeek", chunks: []string{strings.Repeat("A", 3000)}, want: detect.Opaque, peeked: strings.Repeat("A", detect.MaxPeek)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.1:80"))
			var sent strings.Builder
			for _, c := range tc.chunks {
				sent.WriteString(c)
			}
			var in net.Conn = server
			if tc.oneByte {
				in = trickle{server}
			}
			res := detectAsync(in, detectTimeout)
			for _, c := range tc.chunks {
				if _, err := client.Write([]byte(c)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Millisecond) // let the reader see the pieces apart; same outcome if not
			}
			if tc.closeW {
				netxtest.CloseWrite(t, client)
			}
			r := netxtest.Await(t, res, "Detect")
			if r.err != nil || r.p != tc.want {
				t.Fatalf("Detect = %v, %v; want %v", r.p, r.err, tc.want)
			}
			if tc.peeked != "" && string(r.c.Peeked()) != tc.peeked {
				t.Errorf("Peeked() = %q, want %q", r.c.Peeked(), tc.peeked)
			}
			// The deadline is gone and every byte is replayed in order: what
			// the client sends after detection follows what came before.
			time.Sleep(2 * detectTimeout)
			if !tc.closeW {
				if _, err := client.Write([]byte("|after")); err != nil {
					t.Fatal(err)
				}
				sent.WriteString("|after")
				netxtest.CloseWrite(t, client)
			}
			got, err := io.ReadAll(r.c)
			if err != nil || string(got) != sent.String() {
				t.Errorf("read through Conn %.60q, %v; want %.60q", got, err, sent.String())
			}
		})
	}
}

func TestDetectErrorsBeforeAnyByte(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(net.Conn)
		want  error
	}{
		{"EOF", func(c net.Conn) { c.Close() }, io.EOF},
		{"reset", func(c net.Conn) { c.(interface{ SetLinger(int) error }).SetLinger(0); c.Close() }, syscall.ECONNRESET},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.1:80"))
			res := detectAsync(server, netxtest.HangGuard)
			tc.close(client)
			r := netxtest.Await(t, res, "Detect")
			if r.p != detect.Opaque || !errors.Is(r.err, tc.want) {
				t.Errorf("Detect = %v, %v; want opaque and %v", r.p, r.err, tc.want)
			}
			if r.c == nil || len(r.c.Peeked()) != 0 {
				t.Errorf("Detect returned Conn %v, want one with nothing peeked", r.c)
			}
		})
	}
}

// TestDetectNoTimeout: timeout 0 waits as long as it takes.
func TestDetectNoTimeout(t *testing.T) {
	client, server := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.1:80"))
	res := detectAsync(server, 0)
	time.Sleep(2 * detectTimeout)
	if _, err := client.Write([]byte(preface)); err != nil {
		t.Fatal(err)
	}
	if r := netxtest.Await(t, res, "Detect"); r.err != nil || r.p != detect.HTTP2 {
		t.Errorf("Detect = %v, %v; want h2", r.p, r.err)
	}
}

func TestConn(t *testing.T) {
	client, server := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.1:80"))
	dc := detect.NewConn(server, []byte("peeked|"))
	if dc.NetConn() != server {
		t.Error("NetConn() is not the underlying connection")
	}
	if dc.LocalAddr() != server.LocalAddr() || dc.RemoteAddr() != server.RemoteAddr() {
		t.Error("addresses differ from the underlying connection's")
	}
	var x any = dc
	if _, ok := x.(io.ReaderFrom); ok {
		t.Error("Conn implements io.ReaderFrom: io.Copy could splice")
	}
	if _, ok := x.(io.WriterTo); ok {
		t.Error("Conn implements io.WriterTo: io.Copy could splice")
	}

	// Small reads drain the peeked bytes first, then the connection.
	if _, err := client.Write([]byte("live")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 3)
	for len(got) < len("peeked|live") {
		n, err := dc.Read(buf)
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "peeked|live" {
		t.Errorf("read %q, want %q", got, "peeked|live")
	}
	if string(dc.Peeked()) != "peeked|" {
		t.Errorf("Peeked() after reading = %q, want all peeked bytes", dc.Peeked())
	}

	// Deadlines reach the connection.
	dc.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := dc.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read past the deadline: %v", err)
	}
	dc.SetDeadline(time.Time{})
	dc.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := dc.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write past the deadline: %v", err)
	}
	dc.SetWriteDeadline(time.Time{})

	// CloseWrite half-closes: the peer reads EOF and can still answer.
	if _, err := dc.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := dc.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if b, err := io.ReadAll(client); err != nil || string(b) != "bye" {
		t.Errorf("peer read %q, %v; want \"bye\" then EOF", b, err)
	}
	if _, err := client.Write([]byte("still here")); err != nil {
		t.Errorf("peer cannot answer after CloseWrite: %v", err)
	}
	if err := dc.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}

	// Without CloseWrite underneath, CloseWrite says so.
	p1, p2 := net.Pipe()
	defer p2.Close()
	defer p1.Close()
	if err := detect.NewConn(p1, nil).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite over net.Pipe: %v, want ErrUnsupported", err)
	}
}

// TestDetectTLS reads no further than it takes to tell TLS from opaque
// bytes: a request line that Detect would wait for is opaque at once.
func TestDetectTLS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		send    string
		oneByte bool
		want    detect.Protocol
		peeked  string
	}{
		{name: "ClientHello", send: string(clientHello), want: detect.TLS, peeked: string(clientHello)},
		{name: "ClientHello byte by byte", send: string(clientHello), oneByte: true, want: detect.TLS, peeked: string(clientHello[:3])},
		{name: "partial request line", send: "GET / HT", oneByte: true, want: detect.Opaque, peeked: "G"},
		{name: "binary", send: "\x16\x02", oneByte: true, want: detect.Opaque, peeked: "\x16\x02"},
		{name: "nothing: server speaks first", want: detect.Opaque, peeked: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := netxtest.Pair(t, netx.NewMem(), netip.MustParseAddrPort("10.0.0.1:80"))
			var in net.Conn = server
			if tc.oneByte {
				in = trickle{server}
			}
			if tc.send != "" {
				if _, err := client.Write([]byte(tc.send)); err != nil {
					t.Fatal(err)
				}
			}
			p, dc, err := detect.DetectTLS(in, detectTimeout)
			if err != nil || p != tc.want || string(dc.Peeked()) != tc.peeked {
				t.Errorf("DetectTLS = %v, peeked %q, %v; want %v, %q", p, dc.Peeked(), err, tc.want, tc.peeked)
			}
		})
	}
}
