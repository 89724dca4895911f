package httpproxy

import (
	"bytes"
	"net"
	"sync"

	"github.com/sluice-mesh/sluice/proxy/metrics"
)

// connQueue is the net.Listener the HTTP server accepts from: connections
// arrive through push after protocol detection.
type connQueue struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (q *connQueue) push(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.closed:
		c.Close()
	}
}

// Accept implements net.Listener.
func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

// Addr implements net.Listener.
func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "detected" }
func (queueAddr) String() string  { return "detected" }

// serverConn is a connection the HTTP server serves. It carries the
// connection's ConnInfo to requests and counts the error responses that
// net/http writes by itself, without calling a handler, for malformed
// requests (400), oversized headers (431) and unsupported versions (505).
// It deliberately implements neither io.ReaderFrom nor io.WriterTo, so no
// copy on it can use splice(2), which cannot see data that the sk_msg
// redirect put in the socket.
type serverConn struct {
	net.Conn
	ci  *ConnInfo
	reg *metrics.Registry
}

// CloseWrite half-closes the connection when the underlying one can.
func (c *serverConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// NetConn returns the underlying connection.
func (c *serverConn) NetConn() net.Conn { return c.Conn }

var (
	statusPrefix = []byte("HTTP/1.1 ")
	dateHeader   = []byte("\r\nDate: ")
	headerEnd    = []byte("\r\n\r\n")
)

// Write passes b on. A write that is a whole HTTP/1.1 4xx/5xx response
// head without a Date header comes from net/http's own error path (handler
// responses always carry Date): it is counted as a client error.
func (c *serverConn) Write(b []byte) (int, error) {
	if len(b) > 12 && (b[9] == '4' || b[9] == '5') && bytes.HasPrefix(b, statusPrefix) && c.reg != nil {
		head := b
		if i := bytes.Index(b, headerEnd); i >= 0 {
			head = b[:i]
		}
		if !bytes.Contains(head, dateHeader) {
			c.reg.HTTPError(c.ci.Direction, serverErrorLabel(b[9:12]))
		}
	}
	return c.Conn.Write(b)
}

func serverErrorLabel(code []byte) string {
	switch string(code) {
	case "431":
		return "request_header_fields_too_large"
	case "505":
		return "http_version_not_supported"
	case "408":
		return "request_timeout"
	default:
		return "malformed_request"
	}
}

// bufferPool lends ReverseProxy its 32 KiB copy buffers.
type bufferPool struct{ pool sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{pool: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

// Get implements httputil.BufferPool.
func (p *bufferPool) Get() []byte { return *p.pool.Get().(*[]byte) }

// Put implements httputil.BufferPool.
func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }
