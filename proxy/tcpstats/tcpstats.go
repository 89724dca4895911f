// Package tcpstats counts a connection's bytes, opening and closing into
// the proxy's TCP metrics (tcp_open_total, tcp_read_bytes_total, ...).
package tcpstats

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
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
	s      atomic.Pointer[metrics.TCPSeries] // nil until Attach for a Pending Conn
	opened time.Time
	mu     sync.Mutex
	errno  string
	closed bool
	// Bytes seen before Attach.
	pendingRead, pendingWrote atomic.Int64
}

// Wrap opens c in s (tcp_open_total, tcp_open_connections) and returns the
// counting connection; closing it records tcp_close_total with the first
// errno seen.
func Wrap(c net.Conn, s *metrics.TCPSeries) *Conn {
	s.Open()
	w := &Conn{Conn: c, opened: time.Now()}
	w.s.Store(s)
	return w
}

// Pending returns a counting connection whose series is not known yet,
// such as an inbound connection whose TLS state (and so its labels) the
// handshake will tell. It counts its bytes until Attach opens it in its
// series; closed before Attach, it is recorded nowhere.
func Pending(c net.Conn) *Conn {
	return &Conn{Conn: c, opened: time.Now()}
}

// Attach opens a Pending connection in s with the bytes seen so far. It
// must be called at most once, before the connection is closed, and not
// on a Conn made by Wrap.
func (c *Conn) Attach(s *metrics.TCPSeries) {
	s.Open()
	c.s.Store(s)
	s.Read(int(c.pendingRead.Swap(0)))
	s.Wrote(int(c.pendingWrote.Swap(0)))
}

// Read implements net.Conn.
func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		if s := c.s.Load(); s != nil {
			s.Read(n)
		} else {
			c.pendingRead.Add(int64(n))
		}
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
		if s := c.s.Load(); s != nil {
			s.Wrote(n)
		} else {
			c.pendingWrote.Add(int64(n))
		}
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
	if s := c.s.Load(); first && s != nil {
		s.Close(errno, time.Since(c.opened))
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
