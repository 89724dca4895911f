package netx_test

import (
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"

	"golang.org/x/sys/unix"
)

// sockopt reads an integer socket option from a listener or connection.
func sockopt(t *testing.T, s syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := s.SyscallConn()
	if err != nil {
		t.Fatalf("SyscallConn: %v", err)
	}
	var (
		v    int
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatalf("Control: %v", err)
	}
	if gerr != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, gerr)
	}
	return v
}

// TestKernelNoMPTCP checks that listeners, accepted and dialed sockets are
// plain TCP (Go ≥ 1.24 would otherwise make MPTCP listeners, which cannot
// enter a SOCKMAP), and that IPv6 listeners are V6ONLY.
func TestKernelNoMPTCP(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "0.0.0.0:0", "[::]:0"} {
		t.Run(addr, func(t *testing.T) {
			ln := netxtest.Listen(t, netx.Kernel{}, netip.MustParseAddrPort(addr))
			client, server := netxtest.Connect(t, netx.Kernel{}, ln)
			for _, s := range []struct {
				what string
				conn syscall.Conn
			}{
				{"listener", ln.(*net.TCPListener)},
				{"accepted", server.(*net.TCPConn)},
				{"dialed", client.(*net.TCPConn)},
			} {
				if p := sockopt(t, s.conn, unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.IPPROTO_TCP {
					t.Errorf("%s socket has SO_PROTOCOL %d, want IPPROTO_TCP (%d)", s.what, p, unix.IPPROTO_TCP)
				}
			}
			if netip.MustParseAddrPort(addr).Addr().Is6() {
				if v := sockopt(t, ln.(*net.TCPListener), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 {
					t.Errorf("IPv6 listener has IPV6_V6ONLY %d, want 1", v)
				}
			}
			if v := sockopt(t, client.(*net.TCPConn), unix.IPPROTO_TCP, unix.TCP_NODELAY); v != 1 {
				t.Errorf("dialed socket has TCP_NODELAY %d, want 1", v)
			}
			for _, c := range []syscall.Conn{client.(*net.TCPConn), server.(*net.TCPConn)} {
				if v := sockopt(t, c, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v != 1 {
					t.Errorf("SO_KEEPALIVE %d, want 1", v)
				}
			}
		})
	}
}
