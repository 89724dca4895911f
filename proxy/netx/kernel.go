package netx

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Kernel is the kernel's TCP stack. Listeners and dialed sockets never use
// MPTCP (net.ListenConfig and net.Dialer with SetMultipathTCP(false)): an MPTCP
// socket cannot enter the SOCKMAP/SOCKHASH that eBPF steering uses. An IPv6
// listen address gets an IPV6_V6ONLY socket ("tcp6"), so [::]:4143 and
// 0.0.0.0:4143 can both be bound; an IPv4 one a plain AF_INET socket ("tcp4").
// Dialed connections have TCP_NODELAY (Go's default) and TCP keep-alive (Go's
// default period, 15 s); so do accepted ones.
type Kernel struct {
	// DialTimeout is the connect timeout; 0 means none beyond ctx.
	DialTimeout time.Duration
}

// Listen listens on addr. An IPv4-mapped IPv6 address is treated as the IPv4
// address it is.
func (Kernel) Listen(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	network, err := tcpNetwork("listen", addr)
	if err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(ctx, network, unmap(addr).String())
}

// Dial connects to addr, giving up after DialTimeout (when set) or when ctx
// ends. An IPv4-mapped IPv6 address is dialed as the IPv4 address it is.
func (k Kernel) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	network, err := tcpNetwork("dial", addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: k.DialTimeout}
	d.SetMultipathTCP(false)
	return d.DialContext(ctx, network, unmap(addr).String())
}

// tcpNetwork returns "tcp4" or "tcp6" for addr, the family Go then uses for
// the socket (and, for "tcp6" listeners, IPV6_V6ONLY).
func tcpNetwork(op string, addr netip.AddrPort) (string, error) {
	if !addr.IsValid() {
		return "", fmt.Errorf("%s: invalid address %v", op, addr)
	}
	if unmap(addr).Addr().Is4() {
		return "tcp4", nil
	}
	return "tcp6", nil
}
