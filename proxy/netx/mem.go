package netx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
)

// MemBufferSize is how many bytes a Mem connection buffers in each direction:
// a Write returns once its bytes fit in the buffer, as a write to a socket
// returns once they fit in the send buffer, and blocks while it is full.
const MemBufferSize = 64 << 10

// memBacklog is how many dialed connections wait for Accept before Dial
// blocks.
const memBacklog = 128

// Ephemeral ports that Mem hands out for port 0 (Linux's default
// ip_local_port_range).
const (
	memPortFirst = 32768
	memPortLast  = 60999
)

// MemAddr is the address of a Mem listener or of one end of a Mem connection.
type MemAddr struct {
	AddrPort netip.AddrPort
}

// Network returns "mem".
func (MemAddr) Network() string { return "mem" }

// String returns the address as ip:port.
func (a MemAddr) String() string { return a.AddrPort.String() }

// Mem is an in-memory network: Listen on any AddrPort; Dial connects to a
// listener there (or to one on the unspecified address of the same family and
// port). Its connections behave like TCP for the proxy: full-duplex;
// CloseWrite half-closes (the peer reads io.EOF and can still write back);
// deadlines make blocked and later calls fail with an error that wraps
// os.ErrDeadlineExceeded and is a net.Error with Timeout() true; writes are
// buffered up to MemBufferSize and do not wait for the reader; Close makes the
// peer's reads return io.EOF after the buffered data and its writes fail with
// EPIPE, unless SetLinger(0) came first, in which case the peer's reads fail
// with ECONNRESET at once, as after a TCP reset. Dialing an address with no
// listener fails with an error that wraps syscall.ECONNREFUSED.
//
// Connections accepted from DialAs report the original destination that
// DialAs was given from OriginalDst, like connections steered by the kernel.
// The zero Mem is ready to use; NewMem is its constructor.
type Mem struct {
	mu        sync.Mutex
	listeners map[netip.AddrPort]*memListener
	nextPort  int // next ephemeral port to try; 0 means memPortFirst
}

// NewMem returns an empty in-memory network.
func NewMem() *Mem { return &Mem{} }

// Listen listens on addr. Port 0 picks a free ephemeral port, which the
// listener's Addr reports. An address already listened on, or a port already
// taken on the unspecified address of the same family (or, for an unspecified
// address, on any address of its family), gives an error wrapping
// syscall.EADDRINUSE.
func (m *Mem) Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	if !addr.IsValid() {
		return nil, fmt.Errorf("listen: invalid address %v", addr)
	}
	addr = unmap(addr)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.listeners == nil {
		m.listeners = make(map[netip.AddrPort]*memListener)
	}
	if addr.Port() == 0 {
		p, ok := m.freePortLocked(addr.Addr())
		if !ok {
			return nil, m.listenErr(addr, syscall.EADDRINUSE)
		}
		addr = netip.AddrPortFrom(addr.Addr(), p)
	} else if m.inUseLocked(addr) {
		return nil, m.listenErr(addr, syscall.EADDRINUSE)
	}
	l := &memListener{mem: m, addr: addr}
	m.listeners[addr] = l
	return l, nil
}

func (m *Mem) listenErr(addr netip.AddrPort, errno syscall.Errno) error {
	return &net.OpError{Op: "listen", Net: "mem", Addr: MemAddr{addr}, Err: os.NewSyscallError("bind", errno)}
}

// inUseLocked reports whether a listener on addr would clash with one that
// exists.
func (m *Mem) inUseLocked(addr netip.AddrPort) bool {
	for a := range m.listeners {
		if a.Port() != addr.Port() || a.Addr().Is4() != addr.Addr().Is4() {
			continue
		}
		if a.Addr() == addr.Addr() || a.Addr().IsUnspecified() || addr.Addr().IsUnspecified() {
			return true
		}
	}
	return false
}

// freePortLocked finds an ephemeral port on which a listener on ip fits.
func (m *Mem) freePortLocked(ip netip.Addr) (uint16, bool) {
	for range memPortLast - memPortFirst + 1 {
		p := m.ephemeralPortLocked()
		if !m.inUseLocked(netip.AddrPortFrom(ip, p)) {
			return p, true
		}
	}
	return 0, false
}

// ephemeralPortLocked returns the next port of the ephemeral range.
func (m *Mem) ephemeralPortLocked() uint16 {
	if m.nextPort < memPortFirst || m.nextPort > memPortLast {
		m.nextPort = memPortFirst
	}
	p := uint16(m.nextPort)
	m.nextPort++
	return p
}

// Dial connects to the listener on addr from a loopback address of addr's
// family with an ephemeral port.
func (m *Mem) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	return m.DialAs(ctx, netip.AddrPort{}, addr, netip.AddrPort{})
}

// DialAs dials addr with the given local (source) address and makes the
// accepted connection report orig from OriginalDst: how tests emulate an
// application connection steered to the proxy. An invalid src means a
// loopback address of addr's family; src port 0 means an ephemeral port. An
// invalid orig means none: OriginalDst of the accepted connection then fails
// with ErrNoOriginalDst. Dial blocks only while the listener's backlog is
// full, until ctx ends.
func (m *Mem) DialAs(ctx context.Context, src, addr, orig netip.AddrPort) (net.Conn, error) {
	if !addr.IsValid() {
		return nil, fmt.Errorf("dial: invalid address %v", addr)
	}
	addr, src, orig = unmap(addr), unmap(src), unmap(orig)
	if err := ctx.Err(); err != nil {
		return nil, &net.OpError{Op: "dial", Net: "mem", Addr: MemAddr{addr}, Err: err}
	}
	m.mu.Lock()
	l := m.lookupLocked(addr)
	if !src.IsValid() {
		ip := netip.IPv6Loopback()
		if addr.Addr().Is4() {
			ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
		src = netip.AddrPortFrom(ip, 0)
	}
	if src.Port() == 0 {
		src = netip.AddrPortFrom(src.Addr(), m.ephemeralPortLocked())
	}
	m.mu.Unlock()
	refused := &net.OpError{Op: "dial", Net: "mem", Source: MemAddr{src}, Addr: MemAddr{addr}, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	if l == nil {
		return nil, refused
	}
	client, server := newMemPair(src, addr)
	server.orig = orig
	if err := l.enqueue(ctx, server); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return nil, refused
		}
		return nil, &net.OpError{Op: "dial", Net: "mem", Source: MemAddr{src}, Addr: MemAddr{addr}, Err: err}
	}
	return client, nil
}

// lookupLocked finds the listener for a connection to addr: one on addr
// itself, else one on the unspecified address of its family and port.
func (m *Mem) lookupLocked(addr netip.AddrPort) *memListener {
	if l := m.listeners[addr]; l != nil {
		return l
	}
	unspec := netip.IPv6Unspecified()
	if addr.Addr().Is4() {
		unspec = netip.IPv4Unspecified()
	}
	return m.listeners[netip.AddrPortFrom(unspec, addr.Port())]
}

// notifier wakes every goroutine waiting for a change of the state guarded
// by the mutex its owner holds while calling wait and broadcast.
type notifier struct{ ch chan struct{} }

// wait returns a channel closed at the next broadcast.
func (n *notifier) wait() <-chan struct{} {
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

// broadcast wakes the waiters.
func (n *notifier) broadcast() {
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}

// memListener is a Mem listener.
type memListener struct {
	mem  *Mem
	addr netip.AddrPort

	mu     sync.Mutex
	wake   notifier
	queue  []*memConn // dialed, not yet accepted
	closed bool
}

var _ net.Listener = (*memListener)(nil)

// enqueue hands c to Accept, waiting while the backlog is full.
func (l *memListener) enqueue(ctx context.Context, c *memConn) error {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return net.ErrClosed
		}
		if len(l.queue) < memBacklog {
			l.queue = append(l.queue, c)
			l.wake.broadcast()
			l.mu.Unlock()
			return nil
		}
		w := l.wake.wait()
		l.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Accept waits for and returns the next connection dialed to the listener.
func (l *memListener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, &net.OpError{Op: "accept", Net: "mem", Addr: MemAddr{l.addr}, Err: net.ErrClosed}
		}
		if len(l.queue) > 0 {
			c := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			l.wake.broadcast()
			l.mu.Unlock()
			return c, nil
		}
		w := l.wake.wait()
		l.mu.Unlock()
		<-w
	}
}

// Close stops the listener: Accept fails with net.ErrClosed, connections not
// yet accepted are reset, and the address is free again.
func (l *memListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return &net.OpError{Op: "close", Net: "mem", Addr: MemAddr{l.addr}, Err: net.ErrClosed}
	}
	l.closed = true
	pending := l.queue
	l.queue = nil
	l.wake.broadcast()
	l.mu.Unlock()
	for _, c := range pending {
		_ = c.SetLinger(0)
		_ = c.Close()
	}
	l.mem.mu.Lock()
	if l.mem.listeners[l.addr] == l {
		delete(l.mem.listeners, l.addr)
	}
	l.mem.mu.Unlock()
	return nil
}

// Addr returns the listener's address as a MemAddr.
func (l *memListener) Addr() net.Addr { return MemAddr{l.addr} }

// memLink is the shared state of a connection's two ends.
type memLink struct {
	mu     sync.Mutex
	wake   notifier
	dir    [2]memPipe // dir[i] carries what end i writes to end 1-i
	closed [2]bool    // end i was closed
	linger [2]int     // SetLinger value of end i; -1 by default
}

// memPipe is one direction of a connection.
type memPipe struct {
	data   []byte // buffered bytes are data[r:]
	r      int
	eof    bool // the writer shut down: the reader sees io.EOF after data
	reset  bool // the writer reset: the reader sees ECONNRESET
	broken bool // the reader is gone: writes fail with EPIPE
}

func (p *memPipe) buffered() int { return len(p.data) - p.r }

func (p *memPipe) read(b []byte) int {
	n := copy(b, p.data[p.r:])
	p.r += n
	if p.r == len(p.data) {
		p.data, p.r = p.data[:0], 0
	}
	return n
}

func (p *memPipe) write(b []byte) {
	if p.r > 0 && len(p.data)+len(b) > cap(p.data) {
		n := copy(p.data, p.data[p.r:])
		p.data, p.r = p.data[:n], 0
	}
	p.data = append(p.data, b...)
}

func (p *memPipe) discard() { p.data, p.r = nil, 0 }

// memConn is one end of a Mem connection.
type memConn struct {
	link          *memLink
	end           int
	local, remote MemAddr
	orig          netip.AddrPort
	rmu, wmu      sync.Mutex // one Read and one Write at a time, as on a socket
	rd, wd        deadline
}

var _ net.Conn = (*memConn)(nil)

// newMemPair returns the dialing and the accepted end of a new connection
// from src to dst.
func newMemPair(src, dst netip.AddrPort) (client, server *memConn) {
	l := &memLink{linger: [2]int{-1, -1}}
	client = &memConn{link: l, end: 0, local: MemAddr{src}, remote: MemAddr{dst}, rd: makeDeadline(), wd: makeDeadline()}
	server = &memConn{link: l, end: 1, local: MemAddr{dst}, remote: MemAddr{src}, rd: makeDeadline(), wd: makeDeadline()}
	return client, server
}

func (c *memConn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "mem", Source: c.local, Addr: c.remote, Err: err}
}

// Read reads buffered bytes the peer wrote, waiting for some if there are
// none. It returns io.EOF once the peer shut down writing and everything was
// read, and fails after a reset or when the read deadline has passed.
func (c *memConn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	l := c.link
	for {
		dl := c.rd.wait()
		l.mu.Lock()
		p := &l.dir[1-c.end]
		switch {
		case l.closed[c.end]:
			l.mu.Unlock()
			return 0, c.opErr("read", net.ErrClosed)
		case isClosedChan(dl):
			l.mu.Unlock()
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		case p.reset:
			l.mu.Unlock()
			return 0, c.opErr("read", os.NewSyscallError("read", syscall.ECONNRESET))
		case len(b) == 0:
			l.mu.Unlock()
			return 0, nil
		case p.buffered() > 0:
			n := p.read(b)
			l.wake.broadcast()
			l.mu.Unlock()
			return n, nil
		case p.eof:
			l.mu.Unlock()
			return 0, io.EOF
		}
		w := l.wake.wait()
		l.mu.Unlock()
		select {
		case <-w:
		case <-dl:
		}
	}
}

// Write buffers b for the peer, waiting while the buffer is full. It fails
// once this end shut down writing or the peer closed, and when the write
// deadline has passed (returning how much was buffered).
func (c *memConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	l := c.link
	n := 0
	for {
		dl := c.wd.wait()
		l.mu.Lock()
		p := &l.dir[c.end]
		switch {
		case l.closed[c.end]:
			l.mu.Unlock()
			return n, c.opErr("write", net.ErrClosed)
		case isClosedChan(dl):
			l.mu.Unlock()
			return n, c.opErr("write", os.ErrDeadlineExceeded)
		case p.eof, p.broken:
			l.mu.Unlock()
			return n, c.opErr("write", os.NewSyscallError("write", syscall.EPIPE))
		case len(b) == 0:
			l.mu.Unlock()
			return n, nil
		}
		if free := MemBufferSize - p.buffered(); free > 0 {
			k := min(free, len(b))
			p.write(b[:k])
			b = b[k:]
			n += k
			l.wake.broadcast()
			l.mu.Unlock()
			continue
		}
		w := l.wake.wait()
		l.mu.Unlock()
		select {
		case <-w:
		case <-dl:
		}
	}
}

// CloseWrite shuts down writing: the peer reads io.EOF after the buffered
// bytes and can still write back.
func (c *memConn) CloseWrite() error {
	l := c.link
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed[c.end] {
		return c.opErr("close", net.ErrClosed)
	}
	l.dir[c.end].eof = true
	l.wake.broadcast()
	return nil
}

// SetLinger with sec 0 makes Close reset the connection: the peer's reads
// then fail with ECONNRESET and the buffered bytes are dropped. Other values
// restore the default, an orderly close.
func (c *memConn) SetLinger(sec int) error {
	l := c.link
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed[c.end] {
		return c.opErr("set", net.ErrClosed)
	}
	l.linger[c.end] = sec
	return nil
}

// Close closes this end: its own calls fail with net.ErrClosed, the peer
// reads io.EOF after the buffered bytes (or ECONNRESET after SetLinger(0)) and
// its writes fail.
func (c *memConn) Close() error {
	l := c.link
	l.mu.Lock()
	if l.closed[c.end] {
		l.mu.Unlock()
		return c.opErr("close", net.ErrClosed)
	}
	l.closed[c.end] = true
	out, in := &l.dir[c.end], &l.dir[1-c.end]
	out.eof = true
	if l.linger[c.end] == 0 {
		out.reset = true
		out.discard()
	}
	in.broken = true
	in.discard()
	l.wake.broadcast()
	l.mu.Unlock()
	c.rd.set(time.Time{})
	c.wd.set(time.Time{})
	return nil
}

// LocalAddr returns this end's address, a MemAddr.
func (c *memConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the peer's address, a MemAddr.
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read and write deadlines.
func (c *memConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; the zero time removes it.
func (c *memConn) SetReadDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set", net.ErrClosed)
	}
	c.rd.set(t)
	return nil
}

// SetWriteDeadline sets the write deadline; the zero time removes it.
func (c *memConn) SetWriteDeadline(t time.Time) error {
	if c.isClosed() {
		return c.opErr("set", net.ErrClosed)
	}
	c.wd.set(t)
	return nil
}

func (c *memConn) isClosed() bool {
	c.link.mu.Lock()
	defer c.link.mu.Unlock()
	return c.link.closed[c.end]
}

// OriginalDst returns the original destination given to DialAs, or an error
// wrapping ErrNoOriginalDst when there is none.
func (c *memConn) OriginalDst() (netip.AddrPort, error) {
	if !c.orig.IsValid() {
		return netip.AddrPort{}, fmt.Errorf("get original destination: %v: %w", c.local, ErrNoOriginalDst)
	}
	return c.orig, nil
}

// deadline is a read or write deadline: a channel closed when it passes
// (the construction of net.Pipe's).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{}
}

func makeDeadline() deadline { return deadline{cancel: make(chan struct{})} }

// set moves the deadline to t; the zero time removes it.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait until its func closed cancel
	}
	d.timer = nil
	closed := isClosedChan(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait returns a channel closed once the deadline passed.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosedChan(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
