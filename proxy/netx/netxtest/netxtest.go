// Package netxtest helps tests of code built on netx: listeners and
// connected pairs on any netx.Network that are cleaned up with the test, and
// waiting for results from goroutines with a hang guard instead of hanging.
package netxtest

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/netx"
)

// HangGuard bounds every blocking step these helpers take; a test that
// reaches it has hung.
const HangGuard = 30 * time.Second

// Listen listens on addr in nw and closes the listener at cleanup.
func Listen(t testing.TB, nw netx.Network, addr netip.AddrPort) net.Listener {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), HangGuard)
	defer cancel()
	ln, err := nw.Listen(ctx, addr)
	if err != nil {
		t.Fatalf("listen %v: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Connect dials ln's address in nw and accepts the connection; both ends are
// closed at cleanup.
func Connect(t testing.TB, nw netx.Network, ln net.Listener) (dialed, accepted net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), HangGuard)
	defer cancel()
	return Accept(t, ln, func() (net.Conn, error) { return nw.Dial(ctx, netx.AddrPortOf(ln.Addr())) })
}

// Accept calls dial, which must connect to ln, and accepts on ln; both ends
// are closed at cleanup.
func Accept(t testing.TB, ln net.Listener, dial func() (net.Conn, error)) (dialed, accepted net.Conn) {
	t.Helper()
	dialed, err := dial()
	if err != nil {
		t.Fatalf("dial %v: %v", ln.Addr(), err)
	}
	t.Cleanup(func() { dialed.Close() })
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		ch <- result{c, err}
	}()
	r := Await(t, ch, "accept")
	if r.err != nil {
		t.Fatalf("accept on %v: %v", ln.Addr(), r.err)
	}
	t.Cleanup(func() { r.c.Close() })
	return dialed, r.c
}

// Pair listens on addr in nw and returns a connected pair; everything is
// closed at cleanup.
func Pair(t testing.TB, nw netx.Network, addr netip.AddrPort) (dialed, accepted net.Conn) {
	t.Helper()
	return Connect(t, nw, Listen(t, nw, addr))
}

// Await returns the next value from ch, failing t if none arrives within
// HangGuard.
func Await[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	timer := time.NewTimer(HangGuard)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("%s: no result after %v", what, HangGuard)
		panic("unreachable")
	}
}

// ReadResult is what ReadAll read.
type ReadResult struct {
	Data []byte
	Err  error
}

// ReadAll reads r to EOF (or an error) in the background; the result arrives
// on the returned channel.
func ReadAll(r io.Reader) <-chan ReadResult {
	ch := make(chan ReadResult, 1)
	go func() {
		b, err := io.ReadAll(r)
		ch <- ReadResult{b, err}
	}()
	return ch
}

// CloseWrite half-closes c, which must implement CloseWrite, failing t if it
// cannot.
func CloseWrite(t testing.TB, c net.Conn) {
	t.Helper()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
}

// Write writes s to c, failing t on error.
func Write(t testing.TB, c net.Conn, s string) {
	t.Helper()
	if n, err := c.Write([]byte(s)); err != nil || n != len(s) {
		t.Fatalf("Write(%.40q) = %d, %v", s, n, err)
	}
}
