// Package steering tests Sluice's traffic steering end to end on the real
// kernel: a real sluice-agent, netns pods on a bridge, a test sidecar that
// reads the original destination the way the proxy does, and applications as
// real processes of other users. Every test runs in eBPF mode and, where the
// issue asks for it, in iptables mode too.
package steering

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/netns"
)

// An app in pod A connects to pod B; A's proxy accepts it on 4140, reads
// B's address with SO_ORIGINAL_DST and forwards; bytes flow both ways.
func TestOutbound(t *testing.T) {
	eachMode(t, func(t *testing.T, mode api.Mode, f *fixture) {
		a := f.node.AddPod(t, "a", netns.PodOptions{})
		b := f.node.AddPod(t, "b", netns.PodOptions{})
		f.agent.Enroll(t, a, api.PodConfig{})
		proxy := f.proxy(t, a, "forward")
		srv := f.server(t, b, ":9000", "sha256")
		families(t, func(t *testing.T, ip func(*netns.Pod) netip.Addr) {
			dst := ap(ip(b), 9000)
			res := dial(t, a.Command(appUID, f.peer, dialArgs(dst, 100000)...))
			ev := proxy.next(t)
			if ev.Listener != "outbound" || ev.Orig != dst.String() || ev.Err != "" {
				t.Fatalf("proxy saw %+v, want outbound with original destination %s", ev, dst)
			}
			if res.Remote != dst.String() {
				t.Errorf("app's peer address is %s, want %s (steering must be invisible to the app)", res.Remote, dst)
			}
			if strings.TrimSpace(res.Response) != res.SentSHA256 {
				t.Errorf("server's hash %q of what it received differs from the app's %q", res.Response, res.SentSHA256)
			}
			sev := srv.next(t)
			if got, _ := netip.ParseAddrPort(sev.Remote); got.Addr() != ip(a) {
				t.Errorf("server saw the connection from %s, want pod A's %s", sev.Remote, ip(a))
			}
		})
	})
}

// A client in pod B connects to A:8080; A's 4143 listener accepts it and
// sees A:8080 as the original destination, then forwards to A's app.
func TestInbound(t *testing.T) {
	eachMode(t, func(t *testing.T, mode api.Mode, f *fixture) {
		a := f.node.AddPod(t, "a", netns.PodOptions{})
		b := f.node.AddPod(t, "b", netns.PodOptions{})
		en := f.agent.Enroll(t, a, api.PodConfig{})
		proxy := f.proxy(t, a, "forward")
		app := f.server(t, a, ":8080", "sha256")
		if mode == api.ModeEBPF {
			f.agent.WaitListener(t, en.NetNSCookie)
		}
		families(t, func(t *testing.T, ip func(*netns.Pod) netip.Addr) {
			dst := ap(ip(a), 8080)
			res := dial(t, b.Command(appUID, f.peer, dialArgs(dst, 50000)...))
			ev := proxy.next(t)
			if ev.Listener != "inbound" || ev.Orig != dst.String() {
				t.Fatalf("proxy saw %+v, want inbound with original destination %s", ev, dst)
			}
			if got, _ := netip.ParseAddrPort(ev.Remote); got.Addr() != ip(b) {
				t.Errorf("proxy saw the client as %s, want pod B's %s", ev.Remote, ip(b))
			}
			if strings.TrimSpace(res.Response) != res.SentSHA256 {
				t.Errorf("app's hash %q differs from the client's %q", res.Response, res.SentSHA256)
			}
			if sev := app.next(t); !strings.Contains(sev.Remote, "127.0.0.1") && !strings.Contains(sev.Remote, "::1") {
				t.Errorf("app saw %s, want the proxy on loopback", sev.Remote)
			}
		})
	})
}

// Skip rules: the proxy's own user, loopback, skipped ports and subnets,
// pods that are not enrolled and host processes are never steered. The
// proxy echoes, the servers answer with a hash: the answer tells who
// received the connection.
func TestSkipRules(t *testing.T) {
	eachMode(t, func(t *testing.T, mode api.Mode, f *fixture) {
		a := f.node.AddPod(t, "a", netns.PodOptions{})
		b := f.node.AddPod(t, "b", netns.PodOptions{})
		c := f.node.AddPod(t, "c", netns.PodOptions{})
		f.agent.Enroll(t, a, api.PodConfig{
			SkipOutboundPorts: []api.PortRange{{Lo: 9001, Hi: 9001}},
			SkipSubnets:       []netip.Prefix{netip.PrefixFrom(c.IPv4(), 32), netip.PrefixFrom(c.IPv6(), 128)},
			SkipInboundPorts:  []api.PortRange{{Lo: 9100, Hi: 9199}},
		})
		proxy := f.proxy(t, a, "echo")
		f.server(t, b, ":9000", "sha256")
		f.server(t, b, ":9001", "sha256")
		f.server(t, c, ":9000", "sha256")
		f.server(t, a, ":9000", "sha256")
		f.server(t, a, ":9150", "sha256")
		steered := func(t *testing.T, res event) bool {
			t.Helper()
			return strings.TrimSpace(res.Response) != res.SentSHA256
		}
		families(t, func(t *testing.T, ip func(*netns.Pod) netip.Addr) {
			lo := netip.MustParseAddr("127.0.0.1")
			if ip(a).Is6() {
				lo = netip.IPv6Loopback()
			}
			cases := []struct {
				name    string
				cmd     *exec.Cmd
				steered bool
			}{
				{"app to pod B is steered", a.Command(appUID, f.peer, dialArgs(ap(ip(b), 9000), 1000)...), true},
				{"proxy uid", a.Command(proxyUID, f.peer, dialArgs(ap(ip(b), 9000), 1000)...), false},
				{"loopback", a.Command(appUID, f.peer, dialArgs(ap(lo, 9000), 1000)...), false},
				{"skipped outbound port", a.Command(appUID, f.peer, dialArgs(ap(ip(b), 9001), 1000)...), false},
				{"skipped subnet", a.Command(appUID, f.peer, dialArgs(ap(ip(c), 9000), 1000)...), false},
				{"pod not enrolled", b.Command(appUID, f.peer, dialArgs(ap(ip(c), 9000), 1000)...), false},
				{"host process", f.node.HostCommand(appUID, f.peer, dialArgs(ap(ip(c), 9000), 1000)...), false},
				{"skipped inbound port", b.Command(appUID, f.peer, dialArgs(ap(ip(a), 9150), 1000)...), false},
			}
			for _, tc := range cases {
				t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
					res := dial(t, tc.cmd)
					if got := steered(t, res); got != tc.steered {
						t.Fatalf("steered=%v, want %v (response %.40q)", got, tc.steered, res.Response)
					}
					if tc.steered {
						if ev := proxy.next(t); ev.Listener != "outbound" {
							t.Errorf("proxy saw %+v", ev)
						}
					} else {
						proxy.none(t)
					}
				})
			}
		})
		if mode == api.ModeEBPF {
			c := f.agent.Counters(t)
			for _, name := range []string{"skipped_proxy_uid", "skipped_loopback", "skipped_outbound_port", "skipped_subnet", "skipped_inbound_port"} {
				if c[name] == 0 {
					t.Errorf("counter %s did not move: %v", name, c)
				}
			}
		}
	})
}

// The sk_msg redirect carries app↔proxy bytes: its counters move, and 1 GiB
// arrives intact through two enrolled pods' proxies.
func TestRedirectBulkTransfer(t *testing.T) {
	f := newFixture(t, agenttest.Options{})
	a := f.node.AddPod(t, "a", netns.PodOptions{})
	b := f.node.AddPod(t, "b", netns.PodOptions{})
	f.agent.Enroll(t, a, api.PodConfig{})
	enB := f.agent.Enroll(t, b, api.PodConfig{})
	f.proxy(t, a, "forward")
	f.proxy(t, b, "forward")
	f.server(t, b, ":9000", "sha256")
	f.agent.WaitListener(t, enB.NetNSCookie)
	st, err := f.agent.Client.Status(context.Background())
	if err != nil || !st.RedirectEnabled {
		t.Fatalf("redirect not enabled: %v %+v", err, st)
	}
	families(t, func(t *testing.T, ip func(*netns.Pod) netip.Addr) {
		before := f.agent.Counters(t)
		const size = 1 << 30
		res := dial(t, a.Command(appUID, f.peer, dialArgs(ap(ip(b), 9000), size)...))
		if res.Sent != size || strings.TrimSpace(res.Response) != res.SentSHA256 {
			t.Fatalf("sent %d bytes with sha256 %s; the server hashed %q", res.Sent, res.SentSHA256, res.Response)
		}
		after := f.agent.Counters(t)
		// App→proxy in A and proxy→app in B: each pair is two sockets.
		if d := after["sockhash_add_ok"] - before["sockhash_add_ok"]; d < 4 {
			t.Errorf("sockhash_add_ok moved by %d, want ≥ 4 (two loopback pairs)", d)
		}
		if d := after["redirect_ok"] - before["redirect_ok"]; d < 1000 {
			t.Errorf("redirect_ok moved by %d for 1 GiB, want ≥ 1000", d)
		}
		if d := after["redirect_failed"] - before["redirect_failed"]; d != 0 {
			t.Logf("redirect_failed moved by %d (fell back to the normal path)", d)
		}
	})
	if m := f.agent.Metrics(t); !strings.Contains(m, `sluice_agent_steering_events_total{event="redirect_ok"}`) {
		t.Errorf("metrics lack the redirect counter:\n%.2000s", m)
	}
}

// With the redirect off for a pod, connections are steered but no pair is
// accelerated.
func TestRedirectDisabledPerPod(t *testing.T) {
	f := newFixture(t, agenttest.Options{})
	a := f.node.AddPod(t, "a", netns.PodOptions{})
	b := f.node.AddPod(t, "b", netns.PodOptions{})
	f.agent.Enroll(t, a, api.PodConfig{DisableRedirect: true})
	proxy := f.proxy(t, a, "forward")
	f.server(t, b, ":9000", "sha256")
	before := f.agent.Counters(t)
	res := dial(t, a.Command(appUID, f.peer, dialArgs(ap(b.IPv4(), 9000), 1<<20)...))
	if strings.TrimSpace(res.Response) != res.SentSHA256 {
		t.Fatalf("hash mismatch")
	}
	if ev := proxy.next(t); ev.Listener != "outbound" {
		t.Fatalf("not steered: %+v", ev)
	}
	after := f.agent.Counters(t)
	if after["sockhash_add_ok"] != before["sockhash_add_ok"] || after["redirect_ok"] != before["redirect_ok"] {
		t.Errorf("redirect counters moved with the redirect disabled: %v → %v", before, after)
	}
}

// kill -9 of the agent during a transfer: the transfer completes, new
// connections are still steered, the restarted agent reports the same
// enrollments.
func TestAgentKill9(t *testing.T) {
	eachMode(t, func(t *testing.T, mode api.Mode, f *fixture) {
		a := f.node.AddPod(t, "a", netns.PodOptions{})
		b := f.node.AddPod(t, "b", netns.PodOptions{})
		f.agent.Enroll(t, a, api.PodConfig{SkipOutboundPorts: []api.PortRange{{Lo: 7000, Hi: 7100}}})
		enB := f.agent.Enroll(t, b, api.PodConfig{})
		proxy := f.proxy(t, a, "forward")
		f.proxy(t, b, "forward")
		f.server(t, b, ":9000", "sha256")
		if mode == api.ModeEBPF {
			f.agent.WaitListener(t, enB.NetNSCookie)
		}
		before, err := f.agent.Client.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}

		cmd := a.Command(appUID, f.peer, dialArgs(ap(b.IPv4(), 9000), 1<<30)...)
		type result struct {
			ev  event
			err error
		}
		done := make(chan result, 1)
		go func() {
			ev, err := tryDial(cmd)
			done <- result{ev, err}
		}()
		if ev := proxy.next(t); ev.Listener != "outbound" {
			t.Fatalf("transfer not steered: %+v", ev)
		}
		f.agent.Kill9()
		select {
		case <-done:
			t.Log("note: the transfer ended before the kill landed")
		default:
		}
		var res event
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("transfer across the kill: %v", r.err)
			}
			res = r.ev
		case <-time.After(5 * time.Minute):
			t.Fatal("transfer did not complete after the agent was killed")
		}
		if strings.TrimSpace(res.Response) != res.SentSHA256 {
			t.Fatalf("transfer across the kill corrupted: sent %s, server hashed %q", res.SentSHA256, res.Response)
		}

		// With no agent running, new connections are still steered.
		res = dial(t, a.Command(appUID, f.peer, dialArgs(ap(b.IPv6(), 9000), 1000)...))
		if ev := proxy.next(t); ev.Listener != "outbound" || ev.Orig != ap(b.IPv6(), 9000).String() {
			t.Fatalf("new connection with the agent dead: proxy saw %+v", ev)
		}
		if strings.TrimSpace(res.Response) != res.SentSHA256 {
			t.Fatalf("hash mismatch with the agent dead")
		}

		f.agent.Restart(t)
		after, err := f.agent.Client.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Fatalf("restarted agent lists %d enrollments, want %d", len(after), len(before))
		}
		for i := range before {
			b, a := before[i], after[i]
			if b.NetNSCookie != a.NetNSCookie || b.NetNS != a.NetNS || b.Mode != a.Mode || len(b.Addresses) != len(a.Addresses) ||
				len(b.Config.SkipOutboundPorts) != len(a.Config.SkipOutboundPorts) {
				t.Errorf("enrollment changed across the restart:\n before %+v\n after  %+v", b, a)
			}
		}
	})
}

// Unenrolling stops steering and, in iptables mode, leaves no rule behind.
func TestUnenroll(t *testing.T) {
	eachMode(t, func(t *testing.T, mode api.Mode, f *fixture) {
		a := f.node.AddPod(t, "a", netns.PodOptions{})
		b := f.node.AddPod(t, "b", netns.PodOptions{})
		en := f.agent.Enroll(t, a, api.PodConfig{})
		proxy := f.proxy(t, a, "echo")
		f.server(t, b, ":9000", "sha256")
		if err := f.agent.Client.Unenroll(context.Background(), en.NetNSCookie); err != nil {
			t.Fatal(err)
		}
		res := dial(t, a.Command(appUID, f.peer, dialArgs(ap(b.IPv4(), 9000), 1000)...))
		if strings.TrimSpace(res.Response) != res.SentSHA256 {
			t.Errorf("still steered after unenroll")
		}
		proxy.none(t)
		if mode == api.ModeIPTables {
			assertNoRules(t, a)
		}
		var se *api.StatusError
		if err := f.agent.Client.Unenroll(context.Background(), en.NetNSCookie); !errors.As(err, &se) || se.Code != 404 {
			t.Errorf("second unenroll: %v, want 404", err)
		}
	})
}

// assertNoRules checks that the pod's namespace has no Sluice iptables rule.
func assertNoRules(t *testing.T, pod *netns.Pod) {
	t.Helper()
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command("nsenter", "--net="+pod.NetNSPath(), save).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", save, err, out)
		}
		if strings.Contains(strings.ToUpper(string(out)), "SLUICE") {
			t.Errorf("%s in %s still shows Sluice rules:\n%s", save, pod.Name(), out)
		}
	}
}
