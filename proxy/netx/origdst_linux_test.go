package netx_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/netx"
	"github.com/sluice-mesh/sluice/proxy/netx/netxtest"
	"github.com/sluice-mesh/sluice/test/netns"
)

// TestOriginalDstIptables steers connections with iptables REDIRECT inside a
// fresh pod network namespace, as iptables-mode interception does, and checks
// that OriginalDst reports where the client was going, for IPv4, IPv6, and
// IPv4 arriving on a dual-stack IPv6 socket.
func TestOriginalDstIptables(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireCommand(t, "iptables")
	netns.RequireCommand(t, "ip6tables")
	pod := netns.NewNode(t).AddPod(t, "origdst", netns.PodOptions{})

	for _, tc := range []struct {
		name     string
		iptables string
		listen   func(port uint16) (net.Listener, error)
		orig     netip.AddrPort // where the client connects
		redirect uint16         // REDIRECT --to-ports
	}{
		{
			name:     "ipv4",
			iptables: "iptables",
			listen:   kernelListen("127.0.0.1"),
			orig:     netip.MustParseAddrPort("10.99.0.1:80"),
			redirect: 15001,
		},
		{
			name:     "ipv6",
			iptables: "ip6tables",
			listen:   kernelListen("::1"),
			orig:     netip.MustParseAddrPort("[fd99::1]:80"),
			redirect: 15002,
		},
		{
			// A dual-stack listener (not what Kernel makes) carries IPv4 in
			// IPv4-mapped addresses; conntrack knows the flow as IPv4.
			name:     "ipv4 on dual-stack socket",
			iptables: "iptables",
			listen: func(port uint16) (net.Listener, error) {
				var lc net.ListenConfig
				lc.SetMultipathTCP(false)
				return lc.Listen(context.Background(), "tcp", fmt.Sprintf("[::]:%d", port))
			},
			orig:     netip.MustParseAddrPort("10.99.0.2:8080"),
			redirect: 15003,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := pod.Command(0, tc.iptables, "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
				"-d", tc.orig.Addr().String(), "--dport", fmt.Sprint(tc.orig.Port()),
				"-j", "REDIRECT", "--to-ports", fmt.Sprint(tc.redirect)).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v: %s", tc.iptables, err, strings.TrimSpace(string(out)))
			}
			var ln net.Listener
			if err := pod.Do(func() (err error) { ln, err = tc.listen(tc.redirect); return err }); err != nil {
				t.Fatalf("listen in pod: %v", err)
			}
			defer ln.Close()

			// Steered: the kernel remembers the original destination.
			client, server := dialAccept(t, pod, ln, tc.orig)
			got, err := netx.OriginalDst(server)
			if err != nil || got != tc.orig {
				t.Errorf("OriginalDst(steered) = %v, %v; want %v", got, err, tc.orig)
			}
			if got := netx.AddrPortOf(client.RemoteAddr()); got != tc.orig {
				t.Errorf("client RemoteAddr = %v, want %v (REDIRECT is invisible to the client)", got, tc.orig)
			}
			// Through wrappers too.
			if got, err := netx.OriginalDst(wrapper{Conn: server, inner: server}); err != nil || got != tc.orig {
				t.Errorf("OriginalDst(wrapped steered) = %v, %v; want %v", got, err, tc.orig)
			}

			// Not steered: either no record or, where conntrack tracks the
			// flow, the listener's own address: never someone else's.
			direct := netx.AddrPortOf(ln.Addr())
			if direct.Addr().IsUnspecified() {
				direct = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), direct.Port())
			}
			_, server = dialAccept(t, pod, ln, direct)
			got, err = netx.OriginalDst(server)
			local := netx.AddrPortOf(server.LocalAddr())
			if err != nil && !errors.Is(err, netx.ErrNoOriginalDst) || err == nil && got != local {
				t.Errorf("OriginalDst(direct) = %v, %v; want ErrNoOriginalDst or the local address %v", got, err, local)
			}
		})
	}
}

// TestOriginalDstNoConntrack checks that a connection in a namespace where
// nothing tracks connections gives ErrNoOriginalDst.
func TestOriginalDstNoConntrack(t *testing.T) {
	netns.RequireRoot(t)
	pod := netns.NewNode(t).AddPod(t, "noct", netns.PodOptions{})
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			var ln net.Listener
			if err := pod.Do(func() (err error) { ln, err = kernelListen(ip)(0); return err }); err != nil {
				t.Fatalf("listen in pod: %v", err)
			}
			defer ln.Close()
			_, server := dialAccept(t, pod, ln, netx.AddrPortOf(ln.Addr()))
			got, err := netx.OriginalDst(server)
			t.Logf("OriginalDst(unsteered): %v", err)
			if !errors.Is(err, netx.ErrNoOriginalDst) {
				t.Errorf("OriginalDst(unsteered) = %v, %v; want ErrNoOriginalDst", got, err)
			}
		})
	}
}

func kernelListen(ip string) func(port uint16) (net.Listener, error) {
	return func(port uint16) (net.Listener, error) {
		return netx.Kernel{}.Listen(context.Background(), netip.AddrPortFrom(netip.MustParseAddr(ip), port))
	}
}

// dialAccept connects to addr from inside pod and accepts on ln; both ends
// are closed at cleanup.
func dialAccept(t *testing.T, pod *netns.Pod, ln net.Listener, addr netip.AddrPort) (client, server net.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), netxtest.HangGuard)
	defer cancel()
	err := pod.Do(func() (err error) {
		client, err = netx.Kernel{DialTimeout: netxtest.HangGuard}.Dial(ctx, addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %v in pod: %v", addr, err)
	}
	t.Cleanup(func() { client.Close() })
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(netxtest.HangGuard))
	server, err = ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}
