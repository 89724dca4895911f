package netx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from
// linux/netfilter_ipv6/ip6_tables.h (level SOL_IPV6); it has the same value as
// SO_ORIGINAL_DST.
const ip6tSOOriginalDst = 80

// tcpOriginalDst asks the kernel for c's original destination.
func tcpOriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("get original destination: %w", err)
	}
	// An IPv6 socket can carry an IPv4 connection (IPv4-mapped addresses on a
	// dual-stack listener); conntrack then knows it as IPv4, and SOL_IP is the
	// level that reaches it.
	v4 := AddrPortOf(c.LocalAddr()).Addr().Is4()
	var (
		dst  netip.AddrPort
		oerr error
	)
	if err := rc.Control(func(fd uintptr) { dst, oerr = originalDst(int(fd), v4) }); err != nil {
		return netip.AddrPort{}, fmt.Errorf("get original destination: %w", err)
	}
	if oerr != nil {
		if errors.Is(oerr, unix.ENOENT) || errors.Is(oerr, unix.ENOPROTOOPT) {
			return netip.AddrPort{}, fmt.Errorf("get original destination: %w: %w", oerr, ErrNoOriginalDst)
		}
		return netip.AddrPort{}, fmt.Errorf("get original destination: %w", oerr)
	}
	return dst, nil
}

// originalDst reads SO_ORIGINAL_DST (v4) or IP6T_SO_ORIGINAL_DST from fd.
func originalDst(fd int, v4 bool) (netip.AddrPort, error) {
	level, name, size := unix.SOL_IPV6, ip6tSOOriginalDst, uint32(unix.SizeofSockaddrInet6)
	if v4 {
		level, name, size = unix.SOL_IP, unix.SO_ORIGINAL_DST, unix.SizeofSockaddrInet4
	}
	var buf [unix.SizeofSockaddrInet6]byte // large enough for both families
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		opt := "SO_ORIGINAL_DST"
		if !v4 {
			opt = "IP6T_SO_ORIGINAL_DST"
		}
		return netip.AddrPort{}, os.NewSyscallError("getsockopt "+opt, syscall.Errno(errno))
	}
	return parseSockaddr(buf[:min(int(size), len(buf))])
}

// parseSockaddr decodes a sockaddr_in or sockaddr_in6 (family in host byte
// order, port in network byte order), unmapping IPv4-mapped IPv6 addresses.
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, fmt.Errorf("parse sockaddr: %d bytes", len(b))
	}
	family := binary.NativeEndian.Uint16(b)
	switch {
	case family == unix.AF_INET && len(b) >= unix.SizeofSockaddrInet4:
		port := binary.BigEndian.Uint16(b[2:])
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	case family == unix.AF_INET6 && len(b) >= unix.SizeofSockaddrInet6:
		port := binary.BigEndian.Uint16(b[2:])
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port), nil
	}
	return netip.AddrPort{}, fmt.Errorf("parse sockaddr: family %d in %d bytes", family, len(b))
}
