// Package opaque carries a connection the proxy does not understand: Relay
// copies bytes both ways between the client's connection and the server's,
// passing half-closes and resets on, without buffering delay and without
// splice(2), which cannot see data that the sk_msg redirect delivers.
package opaque

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// BufferSize is the size of each copy buffer.
const BufferSize = 32 << 10

// bufPool holds copy buffers (*[]byte of BufferSize). It is a cache with no
// observable state, shared by all relays so that idle connections hold none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

// Counters observes bytes as they pass, each time a read's bytes were
// written on; nil funcs are skipped. They are called from the relay's copier
// goroutines, one per direction.
type Counters struct {
	ClientToServer, ServerToClient func(n int)
}

// Result of one relay.
type Result struct {
	// ClientToServer and ServerToClient count the bytes written on in each
	// direction.
	ClientToServer, ServerToClient int64
	// Err is the first real error: a read or write error other than EOF
	// (wrapped with the direction), or the context's error when ctx ended
	// the relay. It is nil when both directions ended with EOF.
	Err error
}

// Relay copies client→server and server→client until both directions end.
// On EOF from one side it half-closes the other (CloseWrite when available,
// else Close) and keeps copying the other direction. A read or write error
// other than EOF on either side aborts both: each connection is reset (the
// innermost connection implementing SetLinger, such as *net.TCPConn, gets
// SetLinger(0), found by unwrapping NetConn() net.Conn; then Close), so the
// peers see a RST rather than a clean FIN. Each read is written on at once,
// with no coalescing delay. Copies use plain Read and Write with BufferSize
// buffers from a pool, never io.Copy, which would splice between two
// *net.TCPConn. Ending ctx closes both connections. Relay closes both
// connections before it returns.
func Relay(ctx context.Context, client, server net.Conn, cnt Counters) Result {
	r := &relay{conns: [2]net.Conn{client, server}}
	c2s := &halfCopier{r: r, name: "client to server", src: 0, dst: 1, count: cnt.ClientToServer}
	s2c := &halfCopier{r: r, name: "server to client", src: 1, dst: 0, count: cnt.ServerToClient}
	cancelled := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		r.cancel(ctx)
	})
	var wg sync.WaitGroup
	wg.Go(c2s.run)
	wg.Go(s2c.run)
	wg.Wait()
	if !stop() {
		<-cancelled // the cancel ran or is running: let it finish first
	}
	r.closeAll()
	r.mu.Lock()
	defer r.mu.Unlock()
	return Result{ClientToServer: c2s.n, ServerToClient: s2c.n, Err: r.err}
}

// relay is the state two halfCopiers share.
type relay struct {
	conns  [2]net.Conn // client, server
	closed [2]atomic.Bool

	mu    sync.Mutex
	ended bool // aborted or cancelled: later errors are consequences
	err   error
}

// halfCopier copies one direction of a relay; its run method is what
// goroutine stacks show.
type halfCopier struct {
	r        *relay
	name     string
	src, dst int // indexes into r.conns
	count    func(int)
	n        int64
}

func (h *halfCopier) run() {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	src, dst := h.r.conns[h.src], h.r.conns[h.dst]
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			if w > 0 {
				h.n += int64(w)
				if h.count != nil {
					h.count(w)
				}
			}
			if werr == nil && w < n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				if !h.r.closed[h.dst].Load() {
					h.r.abort(fmt.Errorf("relay %s: %w", h.name, werr))
				}
				return
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) || h.r.closed[h.src].Load() {
				h.r.closeWrite(h.dst)
				return
			}
			h.r.abort(fmt.Errorf("relay %s: %w", h.name, rerr))
			return
		}
	}
}

// closeWrite half-closes conns[i] when it can, and closes it otherwise.
func (r *relay) closeWrite(i int) {
	if cw, ok := r.conns[i].(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
			// Other failures mean the connection is already gone; the
			// other direction sees that itself.
			return
		}
	}
	r.close(i)
}

// close closes conns[i] once.
func (r *relay) close(i int) {
	if !r.closed[i].Swap(true) {
		r.conns[i].Close()
	}
}

func (r *relay) closeAll() {
	r.close(0)
	r.close(1)
}

// end records err as the relay's error unless it already ended, and reports
// whether it did now.
func (r *relay) end(err error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return false
	}
	r.ended, r.err = true, err
	return true
}

// abort records err and resets both connections.
func (r *relay) abort(err error) {
	if !r.end(err) {
		return
	}
	for i := range r.conns {
		if !r.closed[i].Swap(true) {
			reset(r.conns[i])
		}
	}
}

// cancel records the context's error and closes both connections.
func (r *relay) cancel(ctx context.Context) {
	if r.end(fmt.Errorf("relay: %w", context.Cause(ctx))) {
		r.closeAll()
	}
}

// lingerer is a connection whose Close can send a reset (*net.TCPConn).
type lingerer interface {
	SetLinger(sec int) error
}

// reset closes c so that its peer sees a TCP reset: SetLinger(0) on the
// innermost connection that has it, then Close on c itself, so that every
// wrapper sees the close.
func reset(c net.Conn) {
	x := c
	for range 64 { // bounded: a wrapper may return itself
		if l, ok := x.(lingerer); ok {
			_ = l.SetLinger(0)
			break
		}
		u, ok := x.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		if x = u.NetConn(); x == nil {
			break
		}
	}
	c.Close()
}
