package main

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/sluice-mesh/sluice/test/netns"
)

// TestProxyForwardIptables checks the outbound path of the proxy under iptables
// REDIRECT in a netns pod, for IPv4 and IPv6: OriginalDst finds the server and
// the data arrives intact.
func TestProxyForwardIptables(t *testing.T) {
	netns.RequireRoot(t)
	for _, c := range []string{"ip", "nsenter", "iptables", "ip6tables"} {
		netns.RequireCommand(t, c)
	}
	bin := netns.BuildTool(t, "./test/cmd/steerpeer")
	node := netns.NewNode(t)
	client := node.AddPod(t, "client", netns.PodOptions{})
	server := node.AddPod(t, "server", netns.PodOptions{})

	srv := start(t, server.Command(1000, bin, "serve", "--listen", "[::]:8080", "--mode", "sha256"))
	px := start(t, client.Command(2102, bin, "proxy"))
	for _, rule := range [][]string{
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", server.IPv4().String(),
			"-m", "owner", "!", "--uid-owner", "2102", "-j", "REDIRECT", "--to-ports", "4140"},
		{"ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", server.IPv6().String(),
			"-m", "owner", "!", "--uid-owner", "2102", "-j", "REDIRECT", "--to-ports", "4140"},
	} {
		if out, err := client.Command(0, rule[0], rule[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", rule, err, out)
		}
	}

	for _, tc := range []struct{ server, client netip.Addr }{
		{server.IPv4(), client.IPv4()},
		{server.IPv6(), client.IPv6()},
	} {
		to := netip.AddrPortFrom(tc.server, 8080)
		_, derr, err := runDialCmd(t, client.Command(1000, bin, "dial", "--to", to.String(),
			"--bytes", fmt.Sprint(4<<20), "--expect-sha256"))
		if err != nil {
			t.Errorf("dial %v through the proxy: %v %+v", to, err, derr)
			continue
		}
		var ev proxyEvent
		px.next(t, &ev)
		if ev.Listener != "outbound" || ev.Orig != to.String() || ev.Err != "" {
			t.Errorf("proxy event %+v, want outbound to %v", ev, to)
		}
		var sev serveEvent
		srv.next(t, &sev)
		if got, err := netip.ParseAddrPort(sev.Remote); err != nil || got.Addr() != tc.client {
			t.Errorf("server saw %+v, want the client pod's address", sev)
		}
	}
}
