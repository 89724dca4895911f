//go:build !linux

package main

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst returns the original destination of a redirected connection; it is
// only implemented on Linux.
func OriginalDst(c *net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("get original destination: only supported on Linux")
}
