// Package netx holds how the proxy dials and listens: the Network interface with
// its kernel implementation (Kernel, never MPTCP) and an in-memory one for tests
// (Mem), and how an accepted connection's original destination is read
// (OriginalDst: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST, answered by iptables
// REDIRECT through conntrack or by Sluice's cgroup/getsockopt program).
package netx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Network dials and listens. Kernel is the real implementation, Mem an
// in-memory one for tests.
type Network interface {
	// Listen listens for TCP connections on addr.
	Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error)
	// Dial connects to addr.
	Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
}

var (
	_ Network = Kernel{}
	_ Network = (*Mem)(nil)
)

// ErrNoOriginalDst is returned (wrapped) by OriginalDst when the connection
// carries no original destination: it was not steered, or the kernel has no
// record of it (ENOENT, ENOPROTOOPT), or it is not a kind of connection that
// can have one.
var ErrNoOriginalDst = errors.New("no original destination")

// originalDster is a connection that knows its original destination itself,
// such as a Mem connection accepted from DialAs.
type originalDster interface {
	OriginalDst() (netip.AddrPort, error)
}

// netConner is a connection wrapper that exposes the connection it wraps, as
// crypto/tls.Conn and detect.Conn do.
type netConner interface {
	NetConn() net.Conn
}

// OriginalDst returns the destination the client asked for before it was
// steered to the proxy. For a *net.TCPConn it asks the kernel: getsockopt
// SOL_IP/SO_ORIGINAL_DST when the connection is IPv4 (also on an IPv6 socket
// carrying IPv4-mapped addresses) and SOL_IPV6/IP6T_SO_ORIGINAL_DST when it is
// IPv6; an IPv4-mapped answer is unmapped. For a connection that implements
// OriginalDst() (netip.AddrPort, error) it returns that method's answer.
// Wrappers implementing NetConn() net.Conn are unwrapped until one of these
// matches. ENOENT and ENOPROTOOPT from the kernel, and connections of any
// other kind, give an error wrapping ErrNoOriginalDst.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	for range 64 { // bounded: a wrapper that returns itself must not loop forever
		switch x := c.(type) {
		case nil:
			return netip.AddrPort{}, fmt.Errorf("get original destination: nil connection: %w", ErrNoOriginalDst)
		case originalDster:
			return x.OriginalDst()
		case *net.TCPConn:
			return tcpOriginalDst(x)
		case netConner:
			c = x.NetConn()
		default:
			return netip.AddrPort{}, fmt.Errorf("get original destination: %T: %w", c, ErrNoOriginalDst)
		}
	}
	return netip.AddrPort{}, fmt.Errorf("get original destination: too many wrapped connections: %w", ErrNoOriginalDst)
}

// AddrPortOf converts a net.Addr (*net.TCPAddr, *net.UDPAddr or MemAddr) to a
// netip.AddrPort, unmapping IPv4-mapped IPv6 addresses. Any other address is
// parsed from its String form; what does not parse gives the zero AddrPort.
func AddrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch x := a.(type) {
	case nil:
		return netip.AddrPort{}
	case *net.TCPAddr:
		if x == nil {
			return netip.AddrPort{}
		}
		ap = x.AddrPort()
	case *net.UDPAddr:
		if x == nil {
			return netip.AddrPort{}
		}
		ap = x.AddrPort()
	case MemAddr:
		ap = x.AddrPort
	case *MemAddr:
		if x == nil {
			return netip.AddrPort{}
		}
		ap = x.AddrPort
	default:
		p, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.AddrPort{}
		}
		ap = p
	}
	return unmap(ap)
}

// unmap turns an IPv4-mapped IPv6 address into the IPv4 address it is.
func unmap(ap netip.AddrPort) netip.AddrPort {
	if ap.Addr().Is4In6() {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return ap
}
