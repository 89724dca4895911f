package netx_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
)

func TestKernelRoundTrip(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "[::ffff:127.0.0.1]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln := netxtest.Listen(t, netx.Kernel{}, netip.MustParseAddrPort(addr))
			client, server := netxtest.Connect(t, netx.Kernel{}, ln)
			la := netx.AddrPortOf(ln.Addr())
			if want := netip.MustParseAddrPort(addr).Addr().Unmap(); la.Addr() != want {
				t.Errorf("listener address %v, want %v", la, want)
			}
			if got := netx.AddrPortOf(server.LocalAddr()); got != la {
				t.Errorf("accepted LocalAddr %v, want %v", got, la)
			}
			netxtest.Write(t, client, "ping")
			netxtest.CloseWrite(t, client)
			if r := netxtest.Await(t, netxtest.ReadAll(server), "read"); r.Err != nil || string(r.Data) != "ping" {
				t.Fatalf("server read %q, %v", r.Data, r.Err)
			}
			netxtest.Write(t, server, "pong")
			server.Close()
			if b, err := io.ReadAll(client); err != nil || string(b) != "pong" {
				t.Fatalf("client read %q, %v", b, err)
			}
		})
	}
}

func TestKernelDialRefused(t *testing.T) {
	// A port that was just free and is not listened on.
	var k netx.Kernel
	ln, err := k.Listen(context.Background(), netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	addr := netx.AddrPortOf(ln.Addr())
	ln.Close()
	if c, err := k.Dial(context.Background(), addr); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Errorf("Dial(%v) with no listener: %v, want ECONNREFUSED", addr, err)
	}
}

func TestKernelInvalidAddress(t *testing.T) {
	var k netx.Kernel
	if _, err := k.Listen(context.Background(), netip.AddrPort{}); err == nil {
		t.Error("Listen(invalid) succeeded")
	}
	if _, err := k.Dial(context.Background(), netip.AddrPort{}); err == nil {
		t.Error("Dial(invalid) succeeded")
	}
}

// TestKernelListenBothFamiliesOnOnePort binds [::]:p and then 0.0.0.0:p,
// which works only when the IPv6 listener is IPV6_V6ONLY.
func TestKernelListenBothFamiliesOnOnePort(t *testing.T) {
	var k netx.Kernel
	ctx := context.Background()
	l6, err := k.Listen(ctx, netip.MustParseAddrPort("[::]:0"))
	if err != nil {
		t.Fatalf("Listen([::]:0): %v", err)
	}
	defer l6.Close()
	port := netx.AddrPortOf(l6.Addr()).Port()
	l4, err := k.Listen(ctx, netip.AddrPortFrom(netip.IPv4Unspecified(), port))
	if err != nil {
		t.Fatalf("Listen(0.0.0.0:%d) beside [::]:%d: %v (the IPv6 listener is not V6ONLY?)", port, port, err)
	}
	defer l4.Close()
	// Each family reaches its own listener.
	for _, tc := range []struct {
		dial string
		ln   net.Listener
	}{{"127.0.0.1", l4}, {"::1", l6}} {
		c, err := k.Dial(ctx, netip.AddrPortFrom(netip.MustParseAddr(tc.dial), port))
		if err != nil {
			t.Fatalf("Dial %s: %v", tc.dial, err)
		}
		s, err := tc.ln.Accept()
		if err != nil {
			t.Fatalf("Accept on %v: %v", tc.ln.Addr(), err)
		}
		if got := netx.AddrPortOf(s.LocalAddr()).Addr(); got != netip.MustParseAddr(tc.dial) {
			t.Errorf("connection to %s accepted with local address %v", tc.dial, got)
		}
		s.Close()
		c.Close()
	}
}
