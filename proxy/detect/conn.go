package detect

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Conn is a connection whose first bytes were read during detection: its
// Read serves them first, then reads from the underlying connection. It passes
// CloseWrite, deadlines and addresses through and exposes the underlying
// connection with NetConn. It deliberately implements neither io.ReaderFrom
// nor io.WriterTo: io.Copy through it must use plain Read and Write, because
// splice(2) cannot see data that the sk_msg redirect placed in a socket (see
// DESIGN.md, Interception gotchas).
type Conn struct {
	conn   net.Conn
	peeked []byte // all bytes detection read
	unread []byte // the tail of peeked that Read has not returned yet
}

var _ net.Conn = (*Conn)(nil)

// NewConn returns a Conn that replays peeked before reading from c. It keeps
// peeked; the caller must not change it.
func NewConn(c net.Conn, peeked []byte) *Conn {
	return &Conn{conn: c, peeked: peeked, unread: peeked}
}

// Peeked returns every byte detection read, whether or not Read has returned
// it yet. The caller must not change it.
func (c *Conn) Peeked() []byte { return c.peeked }

// NetConn returns the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.conn }

// Read returns the peeked bytes not yet read, if any, and otherwise reads
// from the underlying connection.
func (c *Conn) Read(b []byte) (int, error) {
	if len(c.unread) > 0 {
		n := copy(b, c.unread)
		c.unread = c.unread[n:]
		return n, nil
	}
	return c.conn.Read(b)
}

// Write writes to the underlying connection.
func (c *Conn) Write(b []byte) (int, error) { return c.conn.Write(b) }

// Close closes the underlying connection.
func (c *Conn) Close() error { return c.conn.Close() }

// CloseWrite shuts down writing on the underlying connection, which must
// implement CloseWrite() error; otherwise it fails with an error wrapping
// errors.ErrUnsupported and changes nothing.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("close write: %T: %w", c.conn, errors.ErrUnsupported)
}

// LocalAddr returns the underlying connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr returns the underlying connection's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the underlying connection's deadlines. Peeked bytes not
// yet read are returned regardless of the read deadline.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
