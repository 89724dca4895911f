package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"
)

// ioTimeout bounds one request on a connection: a hang guard, not a measure.
const ioTimeout = 10 * time.Second

// dialer makes plain TCP connections (Go may otherwise try MPTCP, which a
// SOCKHASH cannot hold).
func dialer() *net.Dialer {
	d := &net.Dialer{Timeout: ioTimeout}
	d.SetMultipathTCP(false)
	return d
}

// httpConn is one HTTP/1.1 client worker that sends the same GET over and
// over. By default it keeps one connection alive, reconnects when the
// server closes it (Connection: close, or an idle close found on reuse) and
// counts the reconnects. With newConn every request has a connection of its
// own and nothing counts as a reconnect.
type httpConn struct {
	addr       string
	req        []byte
	bodySize   int64 // expected response body size; -1: any
	newConn    bool  // a new connection per request
	c          net.Conn
	br         *bufio.Reader
	reused     bool // c has carried a request before
	reconnects int64
}

func newHTTPConn(addr, host, path string, bodySize int64, newConn bool) *httpConn {
	conn := ""
	if newConn {
		conn = "Connection: close\r\n"
	}
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-loadgen\r\n%s\r\n", path, host, conn)
	return &httpConn{addr: addr, req: []byte(req), bodySize: bodySize, newConn: newConn}
}

func (h *httpConn) close() {
	if h.c != nil {
		h.c.Close()
		h.c = nil
	}
}

// do sends one request and reads the whole response; it is an op.
func (h *httpConn) do() error {
	if h.newConn {
		return h.once()
	}
	err := h.try()
	if err != nil && h.reused && errors.Is(err, io.EOF) {
		// The server closed the idle connection just before our request:
		// a GET is safe to send again on a new connection.
		h.reconnects++
		err = h.try()
	}
	return err
}

// connect dials a new connection for h and points h.br at it.
func (h *httpConn) connect() error {
	c, err := dialer().DialContext(context.Background(), "tcp", h.addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", h.addr, err)
	}
	h.c, h.reused = c, false
	if h.br == nil {
		h.br = bufio.NewReaderSize(c, 16<<10)
	} else {
		h.br.Reset(c)
	}
	return nil
}

// send writes the request on h.c under a fresh hang-guard deadline.
func (h *httpConn) send() error {
	if err := h.c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	if _, err := h.c.Write(h.req); err != nil {
		return fmt.Errorf("write request: %w", err)
	}
	return nil
}

func (h *httpConn) try() error {
	if h.c == nil {
		if err := h.connect(); err != nil {
			return err
		}
	}
	wasReused := h.reused
	h.reused = true
	if err := h.send(); err != nil {
		h.close()
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		h.close()
		if wasReused && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
			err = io.EOF // nothing of a response arrived
		}
		return fmt.Errorf("read response: %w", err)
	}
	n, err := readBody(resp)
	if err != nil {
		h.close()
		return err
	}
	if resp.Close {
		h.close()
		h.reconnects++
	}
	return h.check(resp, n)
}

// once makes one request on a connection of its own: dial, send the
// request (it says Connection: close), read the response and then to the
// end of the stream, close. Waiting for the server's FIN before closing
// makes the server the side that closes first, so the TIME_WAIT state stays
// with the server's socket: a client that closed first would keep every
// connection's local port in TIME_WAIT for 60 s, and at a few thousand
// connections per second run out of ephemeral ports to one destination
// (connect: EADDRNOTAVAIL), unless net.ipv4.tcp_tw_reuse lets it reuse
// them, which its default allows for loopback only.
func (h *httpConn) once() error {
	if err := h.connect(); err != nil {
		return err
	}
	defer h.close()
	if err := h.send(); err != nil {
		return err
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	n, err := readBody(resp)
	if err != nil {
		return err
	}
	if err := h.check(resp, n); err != nil {
		return err
	}
	switch _, err := h.br.ReadByte(); {
	case err == nil:
		return errors.New("read to the end of the connection: data after the response")
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return nil // closed (a reset after the whole response loses nothing)
	default:
		return fmt.Errorf("read to the end of the connection: %w", err)
	}
}

// readBody reads resp's whole body, closes it and returns its size.
func readBody(resp *http.Response) (int64, error) {
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return n, fmt.Errorf("read response body: %w", err)
	}
	return n, nil
}

// check returns the error of a response that is not a 200 with a body of
// the expected size n.
func (h *httpConn) check(resp *http.Response, n int64) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("response status %d (%s)", resp.StatusCode, resp.Header.Get("sluice-proxy-error"))
	}
	if h.bodySize >= 0 && n != h.bodySize {
		return fmt.Errorf("response body of %d bytes, want %d", n, h.bodySize)
	}
	return nil
}
