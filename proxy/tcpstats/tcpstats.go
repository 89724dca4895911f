// Package tcpstats counts a connection's bytes, opening and closing into
// the proxy's TCP metrics (tcp_open_total, tcp_read_bytes_total, ...).
package tcpstats

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sluice-mesh/sluice/proxy/metrics"
)

// Conn counts what passes through a connection into a TCP series. It
// passes CloseWrite on and exposes the wrapped connection through NetConn;
// like every connection wrapper in the proxy it implements neither
// io.ReaderFrom nor io.WriterTo, so no copy through it uses splice(2).
type Conn struct {
	net.Conn
	s      *metrics.TCPSeries
	opened time.Time
	mu     sync.Mutex
	errno  string
	closed bool
}

// Wrap opens c in s (tcp_open_total, tcp_open_connections) and returns the
// counting connection; closing it records tcp_close_total with the first
// errno seen.
func Wrap(c net.Conn, s *metrics.TCPSeries) *Conn {
	s.Open()
	return &Conn{Conn: c, s: s, opened: time.Now()}
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.s.Read(n)
	}
	if err != nil {
		c.note(err)
	}
	return n, err
}

// Write implements net.Conn.
func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.s.Wrote(n)
	}
	if err != nil {
		c.note(err)
	}
	return n, err
}

// CloseWrite half-closes the connection when the wrapped one can, else
// closes it.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// NetConn returns the wrapped connection.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// Close closes the connection and records it once.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	first := !c.closed
	c.closed = true
	errno := c.errno
	c.mu.Unlock()
	if first {
		c.s.Close(errno, time.Since(c.opened))
	}
	return err
}

// note remembers the first errno a read or write failed with.
func (c *Conn) note(err error) {
	var en syscall.Errno
	if !errors.As(err, &en) {
		return
	}
	c.mu.Lock()
	if c.errno == "" {
		c.errno = errnoName(en)
	}
	c.mu.Unlock()
}

// errnoName returns the symbolic name Linkerd uses, such as "ECONNRESET".
func errnoName(en syscall.Errno) string {
	switch en {
	case syscall.ECONNRESET:
		return "ECONNRESET"
	case syscall.EPIPE:
		return "EPIPE"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.ECONNABORTED:
		return "ECONNABORTED"
	case syscall.EHOSTUNREACH:
		return "EHOSTUNREACH"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	}
	return "errno_" + strconv.Itoa(int(en))
}
