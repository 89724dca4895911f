package opaque_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
	"github.com/sluice-mesh/sluice/proxy/opaque"
)

// network is where a test's four connections live.
type network struct {
	name  string
	new   func() netx.Network
	addrs [2]netip.AddrPort // the proxy's listener, the server's listener
	big   int               // payload size of the checksum test
}

var networks = []network{
	{
		name:  "mem",
		new:   func() netx.Network { return netx.NewMem() },
		addrs: [2]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4140"), netip.MustParseAddrPort("10.0.0.2:80")},
		big:   16 << 20,
	},
	{
		name:  "tcp",
		new:   func() netx.Network { return netx.Kernel{} },
		addrs: [2]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")},
		big:   64 << 20,
	},
}

// conns are the four ends around a relay: the application's client (peer of
// the proxy's client conn), the proxy's two conns, and the server.
type conns struct {
	app, client, server, srv net.Conn
}

// connect makes the four connections on nw; all are closed at cleanup.
func connect(t *testing.T, n network) conns {
	t.Helper()
	nw := n.new()
	var c conns
	c.app, c.client = netxtest.Pair(t, nw, n.addrs[0])
	c.server, c.srv = netxtest.Pair(t, nw, n.addrs[1])
	return c
}

// start runs Relay between c.client and c.server; its result arrives on the
// channel. The relay is cancelled at cleanup if still running.
func start(t *testing.T, c conns, cnt opaque.Counters) <-chan opaque.Result {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch := make(chan opaque.Result, 1)
	go func() { ch <- opaque.Relay(ctx, c.client, c.server, cnt) }()
	return ch
}

func resetConn(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ SetLinger(int) error }).SetLinger(0); err != nil {
		t.Fatalf("SetLinger: %v", err)
	}
	c.Close()
}

func TestHalfClose(t *testing.T) {
	for _, n := range networks {
		for _, tc := range []struct {
			name        string
			clientFirst bool
		}{{"client first", true}, {"server first", false}} {
			t.Run(n.name+"/"+tc.name, func(t *testing.T) {
				c := connect(t, n)
				var up, down atomic.Int64
				res := start(t, c, opaque.Counters{
					ClientToServer: func(n int) { up.Add(int64(n)) },
					ServerToClient: func(n int) { down.Add(int64(n)) },
				})
				first, second := c.app, c.srv
				if !tc.clientFirst {
					first, second = c.srv, c.app
				}
				// first says its piece and half-closes; second reads to
				// EOF, then answers through the still-open direction.
				netxtest.Write(t, first, "question")
				netxtest.CloseWrite(t, first)
				if r := netxtest.Await(t, netxtest.ReadAll(second), "read question"); r.Err != nil || string(r.Data) != "question" {
					t.Fatalf("read %q, %v; want \"question\" then EOF", r.Data, r.Err)
				}
				netxtest.Write(t, second, "the answer")
				netxtest.CloseWrite(t, second)
				if r := netxtest.Await(t, netxtest.ReadAll(first), "read answer"); r.Err != nil || string(r.Data) != "the answer" {
					t.Fatalf("read %q, %v; want \"the answer\" then EOF", r.Data, r.Err)
				}
				r := netxtest.Await(t, res, "Relay")
				wantUp, wantDown := int64(len("question")), int64(len("the answer"))
				if !tc.clientFirst {
					wantUp, wantDown = wantDown, wantUp
				}
				if r.Err != nil || r.ClientToServer != wantUp || r.ServerToClient != wantDown {
					t.Errorf("Relay = %+v; want %d up, %d down, no error", r, wantUp, wantDown)
				}
				if up.Load() != wantUp || down.Load() != wantDown {
					t.Errorf("counters saw %d up, %d down; want %d, %d", up.Load(), down.Load(), wantUp, wantDown)
				}
				// Relay closed its own connections.
				for _, x := range []net.Conn{c.client, c.server} {
					if _, err := x.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
						t.Errorf("Write on a relayed connection after Relay: %v, want net.ErrClosed", err)
					}
				}
			})
		}
	}
}

// TestChecksum streams a large random payload both ways at once.
func TestChecksum(t *testing.T) {
	for _, n := range networks {
		t.Run(n.name, func(t *testing.T) {
			c := connect(t, n)
			res := start(t, c, opaque.Counters{})
			type sent struct {
				sum [32]byte
				err error
			}
			send := func(w net.Conn, seed uint64) <-chan sent {
				ch := make(chan sent, 1)
				go func() {
					h := sha256.New()
					rng := rand.New(rand.NewPCG(seed, 0))
					buf := make([]byte, 256<<10)
					var err error
					for left := n.big; left > 0 && err == nil; {
						k := min(left, 1+rng.IntN(len(buf)))
						for i := 0; i+8 <= k; i += 8 {
							v := rng.Uint64()
							copy(buf[i:], []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24), byte(v >> 32), byte(v >> 40), byte(v >> 48), byte(v >> 56)})
						}
						h.Write(buf[:k])
						_, err = w.Write(buf[:k])
						left -= k
					}
					if err == nil {
						err = w.(interface{ CloseWrite() error }).CloseWrite()
					}
					ch <- sent{[32]byte(h.Sum(nil)), err}
				}()
				return ch
			}
			recv := func(r net.Conn) <-chan sent {
				ch := make(chan sent, 1)
				go func() {
					h := sha256.New()
					k, err := io.CopyBuffer(h, struct{ io.Reader }{r}, make([]byte, 50000))
					if err == nil && k != int64(n.big) {
						err = io.ErrUnexpectedEOF
					}
					ch <- sent{[32]byte(h.Sum(nil)), err}
				}()
				return ch
			}
			upSent, downSent := send(c.app, 1), send(c.srv, 2)
			upGot, downGot := recv(c.srv), recv(c.app)
			for _, d := range []struct {
				name      string
				sent, got <-chan sent
			}{{"client to server", upSent, upGot}, {"server to client", downSent, downGot}} {
				s, g := netxtest.Await(t, d.sent, d.name+" send"), netxtest.Await(t, d.got, d.name+" receive")
				if s.err != nil || g.err != nil {
					t.Fatalf("%s: send %v, receive %v", d.name, s.err, g.err)
				}
				if s.sum != g.sum {
					t.Errorf("%s: checksums differ", d.name)
				}
			}
			r := netxtest.Await(t, res, "Relay")
			if r.Err != nil || r.ClientToServer != int64(n.big) || r.ServerToClient != int64(n.big) {
				t.Errorf("Relay = %+v; want %d bytes each way, no error", r, n.big)
			}
		})
	}
}

// TestResetPropagates: a reset on one side reaches the other side as a
// reset (ECONNRESET), not as a clean EOF, and is the relay's error.
func TestResetPropagates(t *testing.T) {
	for _, n := range networks {
		for _, tc := range []struct {
			name        string
			serverDies  bool
			wantInError string
		}{{"server resets", true, "server to client"}, {"client resets", false, "client to server"}} {
			t.Run(n.name+"/"+tc.name, func(t *testing.T) {
				c := connect(t, n)
				res := start(t, c, opaque.Counters{})
				dying, survivor := c.app, c.srv
				if tc.serverDies {
					dying, survivor = c.srv, c.app
				}
				// Traffic first, so the relay is in full flow.
				netxtest.Write(t, dying, "hello")
				buf := make([]byte, 5)
				if _, err := io.ReadFull(survivor, buf); err != nil {
					t.Fatal(err)
				}
				resetConn(t, dying)
				if r := netxtest.Await(t, netxtest.ReadAll(survivor), "survivor read"); !errors.Is(r.Err, syscall.ECONNRESET) {
					t.Errorf("survivor read %q, %v; want ECONNRESET", r.Data, r.Err)
				}
				r := netxtest.Await(t, res, "Relay")
				if !errors.Is(r.Err, syscall.ECONNRESET) {
					t.Errorf("Relay error %v, want ECONNRESET", r.Err)
				} else if !bytes.Contains([]byte(r.Err.Error()), []byte(tc.wantInError)) {
					t.Errorf("Relay error %q does not name the direction %q", r.Err, tc.wantInError)
				}
			})
		}
	}
}

// TestNoCoalescing plays ping-pong one byte at a time: every byte must be
// passed on by itself, or the exchange stalls.
func TestNoCoalescing(t *testing.T) {
	for _, n := range networks {
		t.Run(n.name, func(t *testing.T) {
			c := connect(t, n)
			res := start(t, c, opaque.Counters{})
			done := make(chan error, 1)
			go func() {
				b := make([]byte, 1)
				for {
					if _, err := io.ReadFull(c.srv, b); err != nil {
						done <- err
						return
					}
					b[0]++
					if _, err := c.srv.Write(b); err != nil {
						done <- err
						return
					}
				}
			}()
			b := []byte{0}
			for i := range 200 {
				c.app.SetReadDeadline(time.Now().Add(netxtest.HangGuard))
				if _, err := c.app.Write(b); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(c.app, b); err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
				if b[0] != byte(i+1) {
					t.Fatalf("round %d: got %d", i, b[0])
				}
			}
			netxtest.CloseWrite(t, c.app)
			if err := netxtest.Await(t, done, "echo"); err != io.EOF {
				t.Errorf("echo ended with %v, want EOF", err)
			}
			c.srv.Close()
			if r := netxtest.Await(t, res, "Relay"); r.Err != nil || r.ClientToServer != 200 || r.ServerToClient != 200 {
				t.Errorf("Relay = %+v", r)
			}
		})
	}
}

func TestContextCancelClosesBoth(t *testing.T) {
	for _, n := range networks {
		t.Run(n.name, func(t *testing.T) {
			c := connect(t, n)
			ctx, cancel := context.WithCancel(context.Background())
			res := make(chan opaque.Result, 1)
			go func() { res <- opaque.Relay(ctx, c.client, c.server, opaque.Counters{}) }()
			netxtest.Write(t, c.app, "in flight")
			if _, err := io.ReadFull(c.srv, make([]byte, len("in flight"))); err != nil {
				t.Fatal(err)
			}
			cancel()
			r := netxtest.Await(t, res, "Relay")
			if !errors.Is(r.Err, context.Canceled) {
				t.Errorf("Relay error %v, want context.Canceled", r.Err)
			}
			for _, peer := range []net.Conn{c.app, c.srv} {
				peer.SetReadDeadline(time.Now().Add(netxtest.HangGuard))
				if _, err := peer.Read(make([]byte, 1)); err == nil {
					t.Errorf("peer still connected after cancel")
				}
			}
		})
	}
}

// plain hides CloseWrite and SetLinger: only net.Conn's methods and NetConn.
type plain struct{ c net.Conn }

func (p plain) Read(b []byte) (int, error)         { return p.c.Read(b) }
func (p plain) Write(b []byte) (int, error)        { return p.c.Write(b) }
func (p plain) Close() error                       { return p.c.Close() }
func (p plain) LocalAddr() net.Addr                { return p.c.LocalAddr() }
func (p plain) RemoteAddr() net.Addr               { return p.c.RemoteAddr() }
func (p plain) SetDeadline(t time.Time) error      { return p.c.SetDeadline(t) }
func (p plain) SetReadDeadline(t time.Time) error  { return p.c.SetReadDeadline(t) }
func (p plain) SetWriteDeadline(t time.Time) error { return p.c.SetWriteDeadline(t) }

func (p plain) NetConn() net.Conn { return p.c }

// TestWithoutCloseWrite: a server connection that cannot half-close is
// closed at the client's EOF, which ends the relay cleanly.
func TestWithoutCloseWrite(t *testing.T) {
	for _, n := range networks {
		t.Run(n.name, func(t *testing.T) {
			c := connect(t, n)
			c.server = plain{c.server}
			res := start(t, c, opaque.Counters{})
			netxtest.Write(t, c.app, "last")
			netxtest.CloseWrite(t, c.app)
			if r := netxtest.Await(t, netxtest.ReadAll(c.srv), "server read"); r.Err != nil || string(r.Data) != "last" {
				t.Errorf("server read %q, %v", r.Data, r.Err)
			}
			if r := netxtest.Await(t, netxtest.ReadAll(c.app), "client read"); r.Err != nil || len(r.Data) != 0 {
				t.Errorf("client read %q, %v; want EOF", r.Data, r.Err)
			}
			if r := netxtest.Await(t, res, "Relay"); r.Err != nil {
				t.Errorf("Relay error %v", r.Err)
			}
		})
	}
}

// TestResetThroughWrapper: the reset reaches the socket under wrappers that
// expose it only through NetConn, as the proxy's metrics wrapper does.
func TestResetThroughWrapper(t *testing.T) {
	for _, n := range networks {
		t.Run(n.name, func(t *testing.T) {
			c := connect(t, n)
			c.client = plain{plain{c.client}}
			res := start(t, c, opaque.Counters{})
			resetConn(t, c.srv)
			if r := netxtest.Await(t, netxtest.ReadAll(c.app), "client read"); !errors.Is(r.Err, syscall.ECONNRESET) {
				t.Errorf("client read %q, %v; want ECONNRESET", r.Data, r.Err)
			}
			netxtest.Await(t, res, "Relay")
		})
	}
}

// spliceable offers ReadFrom and WriteTo, as *net.TCPConn does; io.Copy
// would use them (and splice(2) between two TCP sockets). Relay must not.
type spliceable struct {
	net.Conn
	used *atomic.Bool
}

func (s spliceable) ReadFrom(r io.Reader) (int64, error) {
	s.used.Store(true)
	return io.Copy(struct{ io.Writer }{s.Conn}, r)
}

func (s spliceable) WriteTo(w io.Writer) (int64, error) {
	s.used.Store(true)
	return io.Copy(w, struct{ io.Reader }{s.Conn})
}

func (s spliceable) CloseWrite() error { return s.Conn.(interface{ CloseWrite() error }).CloseWrite() }

func TestNoReadFromWriteTo(t *testing.T) {
	c := connect(t, networks[0])
	var used atomic.Bool
	c.client, c.server = spliceable{c.client, &used}, spliceable{c.server, &used}
	res := start(t, c, opaque.Counters{})
	netxtest.Write(t, c.app, "data")
	netxtest.CloseWrite(t, c.app)
	netxtest.CloseWrite(t, c.srv)
	if r := netxtest.Await(t, netxtest.ReadAll(c.srv), "read"); string(r.Data) != "data" {
		t.Errorf("server read %q, %v", r.Data, r.Err)
	}
	netxtest.Await(t, res, "Relay")
	if used.Load() {
		t.Error("Relay copied with ReadFrom or WriteTo")
	}
}
