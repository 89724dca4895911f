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

// httpConn is one HTTP/1.1 keep-alive client connection that sends the same
// GET over and over. It reconnects when the server closes the connection
// (Connection: close, or an idle close found on reuse) and counts it.
type httpConn struct {
	addr       string
	req        []byte
	bodySize   int64 // expected response body size; -1: any
	c          net.Conn
	br         *bufio.Reader
	reused     bool // c has carried a request before
	reconnects int64
}

func newHTTPConn(addr, host, path string, bodySize int64) *httpConn {
	req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sluice-loadgen\r\n\r\n", path, host)
	return &httpConn{addr: addr, req: []byte(req), bodySize: bodySize}
}

func (h *httpConn) close() {
	if h.c != nil {
		h.c.Close()
		h.c = nil
	}
}

// do sends one request and reads the whole response; it is an op.
func (h *httpConn) do() error {
	err := h.try()
	if err != nil && h.reused && errors.Is(err, io.EOF) {
		// The server closed the idle connection just before our request:
		// a GET is safe to send again on a new connection.
		h.reconnects++
		err = h.try()
	}
	return err
}

func (h *httpConn) try() error {
	if h.c == nil {
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
	}
	if err := h.c.SetDeadline(time.Now().Add(ioTimeout)); err != nil {
		h.close()
		return fmt.Errorf("set deadline: %w", err)
	}
	wasReused := h.reused
	h.reused = true
	if _, err := h.c.Write(h.req); err != nil {
		h.close()
		return fmt.Errorf("write request: %w", err)
	}
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		h.close()
		if wasReused && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
			err = io.EOF // nothing of a response arrived
		}
		return fmt.Errorf("read response: %w", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		h.close()
		return fmt.Errorf("read response body: %w", err)
	}
	if resp.Close {
		h.close()
		h.reconnects++
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("response status %d (%s)", resp.StatusCode, resp.Header.Get("sluice-proxy-error"))
	}
	if h.bodySize >= 0 && n != h.bodySize {
		return fmt.Errorf("response body of %d bytes, want %d", n, h.bodySize)
	}
	return nil
}
