package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST from linux/netfilter_ipv6/ip6_tables.h
// (level SOL_IPV6); it has the same value as SO_ORIGINAL_DST.
const ip6tSOOriginalDst = 80

// OriginalDst returns the destination a redirected connection was originally
// addressed to, read with getsockopt SO_ORIGINAL_DST (SOL_IP, 80) on an AF_INET
// socket or IP6T_SO_ORIGINAL_DST (SOL_IPV6, 80) on an AF_INET6 one: what iptables
// REDIRECT (through conntrack) and Sluice's cgroup/getsockopt program answer.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("get original destination: %w", err)
	}
	var (
		dst  netip.AddrPort
		oerr error
	)
	err = rc.Control(func(fd uintptr) {
		dst, oerr = originalDst(int(fd))
	})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("get original destination: %w", err)
	}
	if oerr != nil {
		return netip.AddrPort{}, fmt.Errorf("get original destination: %w", oerr)
	}
	return dst, nil
}

func originalDst(fd int) (netip.AddrPort, error) {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_DOMAIN: %w", err)
	}
	level, name := unix.SOL_IP, unix.SO_ORIGINAL_DST
	if domain == unix.AF_INET6 {
		level, name = unix.SOL_IPV6, ip6tSOOriginalDst
	}
	var buf [unix.SizeofSockaddrInet6]byte // large enough for both families
	size := uint32(unix.SizeofSockaddrInet4)
	if domain == unix.AF_INET6 {
		size = unix.SizeofSockaddrInet6
	}
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return netip.AddrPort{}, fmt.Errorf("getsockopt level %d optname %d: %w", level, name, syscall.Errno(errno))
	}
	return parseSockaddr(buf[:size])
}

// parseSockaddr decodes a sockaddr_in or sockaddr_in6 (family in host byte
// order, port in network byte order). IPv4-mapped IPv6 addresses are unmapped.
func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 2 {
		return netip.AddrPort{}, fmt.Errorf("short sockaddr (%d bytes)", len(b))
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
	return netip.AddrPort{}, fmt.Errorf("unexpected sockaddr: family %d, %d bytes", family, len(b))
}
