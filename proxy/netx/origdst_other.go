//go:build !linux

package netx

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// tcpOriginalDst reports that only Linux records original destinations.
func tcpOriginalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, fmt.Errorf("get original destination: %w: %w", errors.ErrUnsupported, ErrNoOriginalDst)
}
