package netx_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
)

var (
	srvAddr  = netip.MustParseAddrPort("10.0.0.2:8080")
	srvAddr6 = netip.MustParseAddrPort("[fd00::2]:8080")
)

func TestMemAddresses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen netip.AddrPort
		dial   netip.AddrPort
		src    netip.AddrPort // DialAs source; invalid: Dial
		orig   netip.AddrPort
		// want
		local, remoteIP netip.Addr
	}{
		{name: "v4", listen: srvAddr, dial: srvAddr, local: srvAddr.Addr(), remoteIP: netip.MustParseAddr("127.0.0.1")},
		{name: "v6", listen: srvAddr6, dial: srvAddr6, local: srvAddr6.Addr(), remoteIP: netip.IPv6Loopback()},
		{name: "unspecified v4 listener", listen: netip.MustParseAddrPort("0.0.0.0:4143"), dial: netip.MustParseAddrPort("10.1.2.3:4143"),
			local: netip.MustParseAddr("10.1.2.3"), remoteIP: netip.MustParseAddr("127.0.0.1")},
		{name: "unspecified v6 listener", listen: netip.MustParseAddrPort("[::]:4143"), dial: netip.MustParseAddrPort("[fd00::9]:4143"),
			local: netip.MustParseAddr("fd00::9"), remoteIP: netip.IPv6Loopback()},
		{name: "mapped dial", listen: srvAddr, dial: netip.MustParseAddrPort("[::ffff:10.0.0.2]:8080"), local: srvAddr.Addr(), remoteIP: netip.MustParseAddr("127.0.0.1")},
		{name: "DialAs", listen: netip.MustParseAddrPort("127.0.0.1:4140"), dial: netip.MustParseAddrPort("127.0.0.1:4140"),
			src: netip.MustParseAddrPort("10.0.0.7:40000"), orig: netip.MustParseAddrPort("10.96.0.10:80"),
			local: netip.MustParseAddr("127.0.0.1"), remoteIP: netip.MustParseAddr("10.0.0.7")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := netx.NewMem()
			client, server := netxtest.Accept(t, netxtest.Listen(t, m, tc.listen), func() (net.Conn, error) {
				if tc.src.IsValid() {
					return m.DialAs(context.Background(), tc.src, tc.dial, tc.orig)
				}
				return m.Dial(context.Background(), tc.dial)
			})
			sl, sr := netx.AddrPortOf(server.LocalAddr()), netx.AddrPortOf(server.RemoteAddr())
			cl, cr := netx.AddrPortOf(client.LocalAddr()), netx.AddrPortOf(client.RemoteAddr())
			if sl.Addr() != tc.local || sl.Port() != tc.dial.Port() {
				t.Errorf("server LocalAddr = %v, want %v:%d", sl, tc.local, tc.dial.Port())
			}
			if sr.Addr() != tc.remoteIP || sr.Port() == 0 {
				t.Errorf("server RemoteAddr = %v, want %v with a port", sr, tc.remoteIP)
			}
			if tc.src.IsValid() && sr != tc.src {
				t.Errorf("server RemoteAddr = %v, want the DialAs source %v", sr, tc.src)
			}
			if cl != sr || cr != sl {
				t.Errorf("client sees %v -> %v, server sees %v <- %v", cl, cr, sl, sr)
			}
			if n := server.LocalAddr().Network(); n != "mem" {
				t.Errorf("Network() = %q, want mem", n)
			}
			got, err := netx.OriginalDst(server)
			if tc.orig.IsValid() {
				if err != nil || got != tc.orig {
					t.Errorf("OriginalDst(accepted) = %v, %v; want %v", got, err, tc.orig)
				}
			} else if !errors.Is(err, netx.ErrNoOriginalDst) {
				t.Errorf("OriginalDst(accepted) = %v, %v; want ErrNoOriginalDst", got, err)
			}
			if _, err := netx.OriginalDst(client); !errors.Is(err, netx.ErrNoOriginalDst) {
				t.Errorf("OriginalDst(dialed) error = %v, want ErrNoOriginalDst", err)
			}
		})
	}
}

func TestMemListen(t *testing.T) {
	ctx := context.Background()
	m := netx.NewMem()
	ln, err := m.Listen(ctx, netip.MustParseAddrPort("10.0.0.1:0"))
	if err != nil {
		t.Fatalf("Listen port 0: %v", err)
	}
	defer ln.Close()
	got := netx.AddrPortOf(ln.Addr())
	if got.Addr() != netip.MustParseAddr("10.0.0.1") || got.Port() == 0 {
		t.Fatalf("listener on port 0 has Addr %v, want 10.0.0.1 with a port", got)
	}
	ln2, err := m.Listen(ctx, netip.MustParseAddrPort("10.0.0.1:0"))
	if err != nil {
		t.Fatalf("second Listen port 0: %v", err)
	}
	defer ln2.Close()
	if p := netx.AddrPortOf(ln2.Addr()); p == got {
		t.Fatalf("two port-0 listeners share %v", p)
	}

	for _, tc := range []struct {
		name  string
		first string
		then  string
		clash bool
	}{
		{"same address", "10.0.0.1:80", "10.0.0.1:80", true},
		{"other address same port", "10.0.0.1:80", "10.0.0.2:80", false},
		{"unspecified after specific", "10.0.0.1:80", "0.0.0.0:80", true},
		{"specific after unspecified", "0.0.0.0:80", "10.0.0.1:80", true},
		{"v4 and v6 unspecified", "0.0.0.0:80", "[::]:80", false},
		{"mapped is v4", "10.0.0.1:80", "[::ffff:10.0.0.1]:80", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := netx.NewMem()
			a, err := m.Listen(ctx, netip.MustParseAddrPort(tc.first))
			if err != nil {
				t.Fatalf("Listen(%s): %v", tc.first, err)
			}
			defer a.Close()
			b, err := m.Listen(ctx, netip.MustParseAddrPort(tc.then))
			if tc.clash {
				if !errors.Is(err, syscall.EADDRINUSE) {
					t.Fatalf("Listen(%s) after %s: %v, want EADDRINUSE", tc.then, tc.first, err)
				}
				// Closing the first frees the address.
				a.Close()
				if b, err = m.Listen(ctx, netip.MustParseAddrPort(tc.then)); err != nil {
					t.Fatalf("Listen(%s) after closing %s: %v", tc.then, tc.first, err)
				}
				b.Close()
				return
			}
			if err != nil {
				t.Fatalf("Listen(%s) after %s: %v", tc.then, tc.first, err)
			}
			b.Close()
		})
	}
}

func TestMemRefused(t *testing.T) {
	ctx := context.Background()
	m := netx.NewMem()
	if _, err := m.Dial(ctx, srvAddr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial with no listener: %v, want ECONNREFUSED", err)
	}
	ln, err := m.Listen(ctx, srvAddr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Dial(ctx, netip.AddrPortFrom(srvAddr.Addr(), srvAddr.Port()+1)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial to another port: %v, want ECONNREFUSED", err)
	}
	// A connection the listener never accepted is reset when it closes.
	pending, err := m.Dial(ctx, srvAddr)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer pending.Close()
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := m.Dial(ctx, srvAddr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("Dial after the listener closed: %v, want ECONNREFUSED", err)
	}
	pending.SetReadDeadline(time.Now().Add(netxtest.HangGuard))
	if _, err := pending.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("Read on a connection never accepted: %v, want ECONNRESET", err)
	}
}

func TestMemAcceptUnblockedByClose(t *testing.T) {
	ln, err := netx.NewMem().Listen(context.Background(), srvAddr)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		errc <- err
	}()
	ln.Close()
	if err := netxtest.Await(t, errc, "Accept"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("blocked Accept after Close: %v, want net.ErrClosed", err)
	}
}

func TestMemBacklogFullDialWaitsForContext(t *testing.T) {
	m := netx.NewMem()
	ln, err := m.Listen(context.Background(), srvAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		c, err := m.Dial(ctx, srvAddr)
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Dial with a full backlog: %v, want context.DeadlineExceeded", err)
			}
			break
		}
		conns = append(conns, c)
		if len(conns) > 10000 {
			t.Fatal("Dial never blocks on a full backlog")
		}
	}
	// Accepting one makes room for one more.
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), netxtest.HangGuard)
	defer cancel()
	c, err := m.Dial(ctx, srvAddr)
	if err != nil {
		t.Fatalf("Dial after an Accept made room: %v", err)
	}
	c.Close()
}

func TestMemHalfClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		// first shuts its write side first, then second answers and closes.
		firstIsClient bool
		secondCloses  func(net.Conn) error
	}{
		{"client first, server closes", true, func(c net.Conn) error { return c.Close() }},
		{"client first, server half-closes", true, func(c net.Conn) error { return c.(interface{ CloseWrite() error }).CloseWrite() }},
		{"server first, client closes", false, func(c net.Conn) error { return c.Close() }},
		{"server first, client half-closes", false, func(c net.Conn) error { return c.(interface{ CloseWrite() error }).CloseWrite() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
			first, second := client, server
			if !tc.firstIsClient {
				first, second = server, client
			}
			netxtest.Write(t, first, "request")
			netxtest.CloseWrite(t, first)
			if _, err := first.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
				t.Errorf("Write after CloseWrite: %v, want EPIPE", err)
			}
			r := netxtest.Await(t, netxtest.ReadAll(second), "read to EOF")
			if r.Err != nil || string(r.Data) != "request" {
				t.Fatalf("second read %q, %v; want \"request\" then EOF", r.Data, r.Err)
			}
			// The half-closed side still reads, and the other still writes.
			firstGot := netxtest.ReadAll(first)
			netxtest.Write(t, second, "response")
			if err := tc.secondCloses(second); err != nil {
				t.Fatalf("close second: %v", err)
			}
			r = netxtest.Await(t, firstGot, "read response")
			if r.Err != nil || string(r.Data) != "response" {
				t.Fatalf("first read %q, %v; want \"response\" then EOF", r.Data, r.Err)
			}
		})
	}
}

func TestMemClose(t *testing.T) {
	t.Run("peer reads buffered data then EOF, writes fail", func(t *testing.T) {
		client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
		netxtest.Write(t, client, "last words")
		if err := client.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		r := netxtest.Await(t, netxtest.ReadAll(server), "read")
		if r.Err != nil || string(r.Data) != "last words" {
			t.Errorf("peer read %q, %v; want the buffered bytes then EOF", r.Data, r.Err)
		}
		if _, err := server.Write([]byte("anyone?")); !errors.Is(err, syscall.EPIPE) {
			t.Errorf("Write to a closed peer: %v, want EPIPE", err)
		}
	})
	t.Run("own calls fail with ErrClosed", func(t *testing.T) {
		client, _ := netxtest.Pair(t, netx.NewMem(), srvAddr)
		client.Close()
		if _, err := client.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
		if _, err := client.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Write after Close: %v, want net.ErrClosed", err)
		}
		if err := client.Close(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("second Close: %v, want net.ErrClosed", err)
		}
		if err := client.SetDeadline(time.Now()); !errors.Is(err, net.ErrClosed) {
			t.Errorf("SetDeadline after Close: %v, want net.ErrClosed", err)
		}
	})
	for _, tc := range []struct {
		name                string
		closePeer           bool
		wantRead, wantWrite error
	}{
		{"own Close unblocks Read and Write", false, net.ErrClosed, net.ErrClosed},
		{"peer Close unblocks Read with EOF and Write with EPIPE", true, io.EOF, syscall.EPIPE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
			rerr := make(chan error, 1)
			go func() {
				_, err := client.Read(make([]byte, 1))
				rerr <- err
			}()
			werr := make(chan error, 1)
			go func() {
				_, err := client.Write(make([]byte, 2*netx.MemBufferSize))
				werr <- err
			}()
			time.Sleep(10 * time.Millisecond) // let both block; the outcome is the same if not
			if tc.closePeer {
				server.Close()
			} else {
				client.Close()
			}
			if err := netxtest.Await(t, rerr, "Read"); !errors.Is(err, tc.wantRead) {
				t.Errorf("blocked Read: %v, want %v", err, tc.wantRead)
			}
			if err := netxtest.Await(t, werr, "Write"); !errors.Is(err, tc.wantWrite) {
				t.Errorf("blocked Write: %v, want %v", err, tc.wantWrite)
			}
		})
	}
	t.Run("SetLinger(0) resets", func(t *testing.T) {
		client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
		netxtest.Write(t, client, "dropped")
		if err := client.(interface{ SetLinger(int) error }).SetLinger(0); err != nil {
			t.Fatalf("SetLinger: %v", err)
		}
		client.Close()
		if _, err := server.Read(make([]byte, 16)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("Read after peer reset: %v, want ECONNRESET", err)
		}
	})
}

func TestMemDeadlines(t *testing.T) {
	isTimeout := func(t *testing.T, what string, err error) {
		t.Helper()
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s: %v, want a net.Error with Timeout() wrapping os.ErrDeadlineExceeded", what, err)
		}
	}
	t.Run("read deadline in the past", func(t *testing.T) {
		client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
		netxtest.Write(t, server, "data")
		client.SetReadDeadline(time.Now().Add(-time.Second))
		_, err := client.Read(make([]byte, 8))
		isTimeout(t, "Read", err)
		// Removing the deadline makes the data readable again.
		client.SetReadDeadline(time.Time{})
		b := make([]byte, 8)
		if n, err := client.Read(b); err != nil || string(b[:n]) != "data" {
			t.Errorf("Read after clearing the deadline = %q, %v", b[:n], err)
		}
	})
	t.Run("blocked read times out", func(t *testing.T) {
		client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
		client.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := client.Read(make([]byte, 8))
		isTimeout(t, "Read", err)
		// Data that arrives later is read once the deadline moves.
		netxtest.Write(t, server, "late")
		client.SetReadDeadline(time.Now().Add(netxtest.HangGuard))
		b := make([]byte, 8)
		if n, err := client.Read(b); err != nil || string(b[:n]) != "late" {
			t.Errorf("Read after moving the deadline = %q, %v", b[:n], err)
		}
	})
	t.Run("SetDeadline while blocked", func(t *testing.T) {
		client, _ := netxtest.Pair(t, netx.NewMem(), srvAddr)
		rerr := make(chan error, 1)
		go func() {
			_, err := client.Read(make([]byte, 8))
			rerr <- err
		}()
		time.Sleep(10 * time.Millisecond)
		client.SetDeadline(time.Now())
		isTimeout(t, "Read", netxtest.Await(t, rerr, "Read"))
	})
	t.Run("write deadline with a full buffer", func(t *testing.T) {
		client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
		client.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := client.Write(make([]byte, netx.MemBufferSize+100))
		isTimeout(t, "Write", err)
		if n != netx.MemBufferSize {
			t.Errorf("Write into a full buffer wrote %d, want %d (the buffer)", n, netx.MemBufferSize)
		}
		// The reader gets exactly what was buffered.
		client.Close()
		r := netxtest.Await(t, netxtest.ReadAll(server), "read")
		if r.Err != nil || len(r.Data) != netx.MemBufferSize {
			t.Errorf("peer read %d bytes, %v; want %d", len(r.Data), r.Err, netx.MemBufferSize)
		}
	})
}

// TestMemWriteDoesNotWaitForReader writes a buffer's worth with nobody
// reading: like a socket, the write completes.
func TestMemWriteDoesNotWaitForReader(t *testing.T) {
	client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
	done := make(chan error, 1)
	go func() {
		_, err := client.Write(bytes.Repeat([]byte("a"), netx.MemBufferSize))
		done <- err
	}()
	if err := netxtest.Await(t, done, "Write into an empty buffer"); err != nil {
		t.Fatal(err)
	}
	client.Close()
	if r := netxtest.Await(t, netxtest.ReadAll(server), "read"); len(r.Data) != netx.MemBufferSize || r.Err != nil {
		t.Errorf("read %d bytes, %v", len(r.Data), r.Err)
	}
}

// TestMemFullDuplex streams 8 MiB each way at once in random-sized writes and
// reads, and checks both with SHA-256.
func TestMemFullDuplex(t *testing.T) {
	client, server := netxtest.Pair(t, netx.NewMem(), srvAddr6)
	const size = 8 << 20
	send := func(c net.Conn, seed uint64) <-chan [32]byte {
		ch := make(chan [32]byte, 1)
		go func() {
			rng := rand.New(rand.NewPCG(seed, seed))
			h := sha256.New()
			buf := make([]byte, 100<<10)
			for left := size; left > 0; {
				n := min(left, 1+rng.IntN(len(buf)))
				for i := range buf[:n] {
					buf[i] = byte(rng.Uint32())
				}
				h.Write(buf[:n])
				if _, err := c.Write(buf[:n]); err != nil {
					t.Errorf("Write: %v", err)
					break
				}
				left -= n
			}
			c.(interface{ CloseWrite() error }).CloseWrite()
			ch <- [32]byte(h.Sum(nil))
		}()
		return ch
	}
	recv := func(c net.Conn) <-chan [32]byte {
		ch := make(chan [32]byte, 1)
		go func() {
			h := sha256.New()
			buf := make([]byte, 7000)
			n, err := io.CopyBuffer(h, struct{ io.Reader }{c}, buf)
			if err != nil || n != size {
				t.Errorf("read %d bytes, %v; want %d", n, err, size)
			}
			ch <- [32]byte(h.Sum(nil))
		}()
		return ch
	}
	c2s, s2c := send(client, 1), send(server, 2)
	atServer, atClient := recv(server), recv(client)
	if a, b := netxtest.Await(t, c2s, "client send"), netxtest.Await(t, atServer, "server receive"); a != b {
		t.Error("client to server: checksums differ")
	}
	if a, b := netxtest.Await(t, s2c, "server send"), netxtest.Await(t, atClient, "client receive"); a != b {
		t.Error("server to client: checksums differ")
	}
}

// TestMemConcurrentWritesDoNotInterleave checks that each Write is delivered
// contiguously, as on a socket, when goroutines write at once.
func TestMemConcurrentWritesDoNotInterleave(t *testing.T) {
	client, server := netxtest.Pair(t, netx.NewMem(), srvAddr)
	const writers, size = 4, 3 * netx.MemBufferSize
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			if _, err := client.Write(bytes.Repeat([]byte{byte('a' + i)}, size)); err != nil {
				t.Errorf("Write: %v", err)
			}
		})
	}
	got := netxtest.ReadAll(server)
	wg.Wait()
	client.Close()
	r := netxtest.Await(t, got, "read")
	if len(r.Data) != writers*size {
		t.Fatalf("read %d bytes, want %d", len(r.Data), writers*size)
	}
	for i := 0; i < len(r.Data); i += size {
		if chunk := r.Data[i : i+size]; !bytes.Equal(chunk, bytes.Repeat(chunk[:1], size)) {
			t.Fatalf("write %d arrived interleaved with another", i/size)
		}
	}
}
