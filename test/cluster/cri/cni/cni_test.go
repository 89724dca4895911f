package cni

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// run runs a command and returns its output; it fails the test on error.
func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// counters are iptables-save's packet and byte counters.
var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// rules returns the rules of iptables-save or ip6tables-save, without
// comments and counters.
func rules(t *testing.T, save string) []string {
	t.Helper()
	var out []string
	for line := range strings.Lines(run(t, save)) {
		line = strings.TrimSpace(counters.ReplaceAllString(line, ""))
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}

// cniChain is a chain a CNI plugin names after a pod.
var cniChain = regexp.MustCompile(`CNI-[A-Za-z0-9-]+`)

// podRules returns the rules that name one of keys (the pods' sandbox
// ids) and the rules of the per-pod chains those jump to (chains collects
// them, so that a chain's rules are found after the rule that named it is
// gone). The portmap plugin's shared CNI-HOSTPORT-* chains
// are not per-pod.
func podRules(lines, keys []string, chains map[string]bool) []string {
	for _, l := range lines {
		if slices.ContainsFunc(keys, func(k string) bool { return strings.Contains(l, k) }) {
			for _, c := range cniChain.FindAllString(l, -1) {
				if !strings.HasPrefix(c, "CNI-HOSTPORT-") {
					chains[c] = true
				}
			}
		}
	}
	var out []string
	for _, l := range lines {
		mine := slices.ContainsFunc(keys, func(k string) bool { return strings.Contains(l, k) })
		for _, c := range cniChain.FindAllString(l, -1) {
			mine = mine || chains[c]
		}
		if mine {
			out = append(out, l)
		}
	}
	return out
}

// dropPodRules deletes the pods' rules and chains with iptables-restore
// (cleanup after a failed test).
func dropPodRules(save, restore string, keys []string) error {
	out, err := exec.Command(save).Output()
	if err != nil {
		return fmt.Errorf("%s: %w", save, err)
	}
	var lines []string
	for line := range strings.Lines(string(out)) {
		lines = append(lines, strings.TrimSpace(line))
	}
	chains := map[string]bool{}
	podRules(lines, keys, chains) // learns the per-pod chains
	// Per table: delete the pods' rules in other chains, then flush and
	// delete the per-pod chains.
	var script strings.Builder
	var table string
	var del, drop []string
	flush := func() {
		if len(del)+len(drop) > 0 {
			fmt.Fprintf(&script, "%s\n%s\nCOMMIT\n", table, strings.Join(append(del, drop...), "\n"))
		}
		del, drop = nil, nil
	}
	for _, l := range lines {
		switch f := strings.Fields(l); {
		case strings.HasPrefix(l, "*"):
			flush()
			table = l
		case strings.HasPrefix(l, ":") && chains[f[0][1:]]:
			drop = append(drop, "-F "+f[0][1:], "-X "+f[0][1:])
		case strings.HasPrefix(l, "-A ") && !chains[f[1]] && len(podRules([]string{l}, keys, chains)) > 0:
			del = append(del, "-D"+l[2:])
		}
	}
	flush()
	if script.Len() == 0 {
		return nil
	}
	cmd := exec.Command(restore, "--noflush")
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s\n%s", restore, err, out, script.String())
	}
	return nil
}

// nodeIPs returns the host's global unicast addresses on interfaces that
// are up, leaving out lo and the test's bridge.
func nodeIPs(t *testing.T, bridge string) (v4, v6 netip.Addr) {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || ifc.Name == bridge {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			p, err := netip.ParsePrefix(a.String())
			if err != nil || !p.Addr().IsGlobalUnicast() {
				continue
			}
			if ip := p.Addr(); ip.Is4() && !v4.IsValid() {
				v4 = ip
			} else if ip.Is6() && !v6.IsValid() {
				v6 = ip
			}
		}
	}
	return v4, v6
}

// listenIn listens on TCP port (IPv4 and IPv6) in the network namespace
// at nsPath and answers every connection with a line.
func listenIn(t *testing.T, nsPath string, port int, answer string) {
	t.Helper()
	// One listener per family: Go's wildcard "tcp" listener is
	// dual-stack only if its one-time IPv6 probe (a bind to ::1) passed,
	// which depends on the namespace it first ran in.
	lns, err := func() ([]net.Listener, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return nil, err
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			return nil, err
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				panic(fmt.Sprintf("return to the test's netns: %v", err))
			}
		}()
		var lns []net.Listener
		for _, addr := range [][2]string{{"tcp4", "0.0.0.0"}, {"tcp6", "::"}} {
			ln, err := net.Listen(addr[0], net.JoinHostPort(addr[1], fmt.Sprint(port)))
			if err != nil {
				return lns, err
			}
			lns = append(lns, ln)
		}
		return lns, nil
	}()
	for _, ln := range lns {
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				fmt.Fprintln(c, answer)
				c.Close()
			}
		}()
	}
	if err != nil {
		t.Fatalf("listen in %s: %v", nsPath, err)
	}
}

// ask connects to addr and returns the line it answers.
func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// pod is a test pod: a named network namespace and its sandbox.
type pod struct {
	pingCmd []string // the ping command
	key     string   // a, b or c
	ns      string
	meta    PodMeta
	ips     []netip.Addr
}

// path is the pod's netns path.
func (p *pod) path() string { return "/run/netns/" + p.ns }

// ping pings dst from the pod once, with a few attempts for the neighbour
// and IPv6 duplicate address detection to settle.
func (p *pod) ping(t *testing.T, dst netip.Addr) {
	t.Helper()
	var out []byte
	var err error
	for range 5 {
		args := append([]string{"ip", "netns", "exec", p.ns}, p.pingCmd...)
		out, err = exec.Command(args[0], append(args[1:], "-c1", "-W2", dst.String())...).CombinedOutput()
		if err == nil {
			return
		}
	}
	t.Errorf("ping %s from pod %s: %v\n%s", dst, p.meta.Name, err, out)
}

func TestPodNetwork(t *testing.T) {
	testenv.RequireRoot(t)
	for _, c := range []string{"ip", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore"} {
		testenv.RequireCommand(t, c)
	}
	// iputils' ping, or busybox's (test/cluster/deps.txt has busybox).
	ping := []string{"ping"}
	if _, err := exec.LookPath("ping"); err != nil {
		testenv.RequireCommand(t, "busybox")
		ping = []string{"busybox", "ping"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bins, err := build.Cache{}.CNIPlugins(ctx)
	if err != nil {
		t.Fatalf("build the CNI plugins: %v", err)
	}

	pid := os.Getpid()
	bridge := fmt.Sprintf("cnit%d", pid%10000)
	name := fmt.Sprintf("sluice-cnitest-%d", pid)
	v4 := netip.MustParsePrefix(fmt.Sprintf("10.199.%d.0/24", pid%256))
	v6 := netip.MustParsePrefix(fmt.Sprintf("fd99:199:%x::/64", pid%65536))
	dataDir := filepath.Join(t.TempDir(), "ipam")
	confDir := t.TempDir()
	// IPv6 first: Setup must still list IPv4 first.
	conf, err := BridgeConfList(BridgeOptions{Name: name, Bridge: bridge, Subnets: []netip.Prefix{v6, v4}, DataDir: dataDir, MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-test.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := New(confDir, []string{bins}, t.TempDir(), slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}

	pods := map[string]*pod{}
	var keys []string // the sandbox ids: the plugins' comments name them
	for _, p := range []string{"a", "b", "c"} {
		id := fmt.Sprintf("cnitest%d%s", pid, p)
		pods[p] = &pod{pingCmd: ping, key: p, ns: fmt.Sprintf("cnit-%d-%s", pid, p), meta: PodMeta{Namespace: "default", Name: "pod-" + p, UID: "uid-" + id, SandboxID: id}}
		keys = append(keys, id)
	}
	// Last cleanup: whatever the pods left in iptables, and the bridge.
	t.Cleanup(func() {
		for _, s := range [][2]string{{"iptables-save", "iptables-restore"}, {"ip6tables-save", "ip6tables-restore"}} {
			if err := dropPodRules(s[0], s[1], keys); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		_ = exec.Command("ip", "link", "del", bridge).Run()
	})
	before4, before6 := rules(t, "iptables-save"), rules(t, "ip6tables-save")
	hostPort := 20000 + pid%10000
	ports := map[string][]PortMapping{"a": {{HostPort: int32(hostPort), ContainerPort: 8080, Protocol: "TCP"}}}

	for _, k := range []string{"a", "b", "c"} {
		p := pods[k]
		run(t, "ip", "netns", "add", p.ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", p.ns).Run() })
		res, err := n.Setup(ctx, p.path(), p.meta, ports[k])
		if err != nil {
			t.Fatalf("Setup(%s): %v", k, err)
		}
		t.Cleanup(func() {
			if err := n.Teardown(context.Background(), p.path(), p.meta, ports[k]); err != nil {
				t.Errorf("cleanup: Teardown(%s): %v", k, err)
			}
		})
		p.ips = res.IPs
		if len(res.IPs) != 2 || !v4.Contains(res.IPs[0]) || !v6.Contains(res.IPs[1]) {
			t.Fatalf("pod %s: IPs %v, want one in %s then one in %s", k, res.IPs, v4, v6)
		}
		for _, ip := range res.IPs {
			// host-local records each address it hands out.
			if _, err := os.Stat(filepath.Join(dataDir, name, ip.String())); err != nil {
				t.Errorf("pod %s: host-local's record of %s: %v", k, ip, err)
			}
		}
	}
	a, b, c := pods["a"], pods["b"], pods["c"]

	t.Run("pod to pod and gateway", func(t *testing.T) {
		gw4, gw6 := v4.Addr().Next(), v6.Addr().Next()
		for _, tc := range []struct {
			from *pod
			to   netip.Addr
		}{
			{a, b.ips[0]}, {a, b.ips[1]}, {b, a.ips[0]}, {b, a.ips[1]},
			{a, gw4}, {a, gw6}, {b, gw4}, {b, gw6},
		} {
			tc.from.ping(t, tc.to)
		}
	})

	t.Run("host port", func(t *testing.T) {
		listenIn(t, a.path(), 8080, "hello from a")
		// The node reaches the pod's port directly.
		for _, ip := range a.ips {
			addr := netip.AddrPortFrom(ip, 8080).String()
			if got, err := ask(addr); err != nil || got != "hello from a" {
				t.Errorf("pod %s: answer %q, %v; want hello from a", addr, got, err)
			}
		}
		node4, node6 := nodeIPs(t, bridge)
		for _, ip := range []netip.Addr{node4, node6} {
			if !ip.IsValid() {
				continue
			}
			addr := netip.AddrPortFrom(ip, uint16(hostPort)).String()
			if got, err := ask(addr); err != nil || got != "hello from a" {
				t.Errorf("node %s: answer %q, %v; want hello from a", addr, got, err)
			}
		}
		if !node4.IsValid() {
			t.Errorf("no IPv4 node address to test the host port on")
		}
	})

	mid4, mid6 := rules(t, "iptables-save"), rules(t, "ip6tables-save")
	chains := map[string]bool{}
	added4, added6 := podRules(mid4, keys, chains), podRules(mid6, keys, chains)
	if len(added4) == 0 || len(added6) == 0 {
		t.Fatalf("no pod rules found in iptables (%d) or ip6tables (%d): the plugins' masquerading and port mapping rules should be there", len(added4), len(added6))
	}
	for _, l := range append(podRules(before4, keys, map[string]bool{}), podRules(before6, keys, map[string]bool{})...) {
		t.Errorf("pod rule before the pods existed: %s", l)
	}

	t.Run("teardown", func(t *testing.T) {
		for _, p := range []*pod{a, b} {
			if err := n.Teardown(ctx, p.path(), p.meta, ports[p.key]); err != nil {
				t.Fatalf("Teardown(%s): %v", p.meta.Name, err)
			}
		}
		// c's namespace is gone before its teardown (a crashed runtime,
		// a reboot): the plugins clean up all the same.
		run(t, "ip", "netns", "del", c.ns)
		if err := n.Teardown(ctx, "", c.meta, nil); err != nil {
			t.Fatalf("Teardown(c) without a netns: %v", err)
		}
		// Again: nothing left to do is fine.
		if err := n.Teardown(ctx, a.path(), a.meta, ports["a"]); err != nil {
			t.Errorf("second Teardown(a): %v", err)
		}
		for _, p := range []*pod{a, b, c} {
			for _, ip := range p.ips {
				if _, err := os.Stat(filepath.Join(dataDir, name, ip.String())); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("pod %s: host-local's record of %s after Teardown: %v, want it gone", p.meta.Name, ip, err)
				}
			}
		}
		for save, lines := range map[string][]string{"iptables-save": added4, "ip6tables-save": added6} {
			now := rules(t, save)
			for _, l := range podRules(now, keys, chains) {
				t.Errorf("%s: pod rule left after Teardown: %s", save, l)
			}
			for _, l := range lines {
				if slices.Contains(now, l) {
					t.Errorf("%s: rule added by Setup left after Teardown: %s", save, l)
				}
			}
		}
		if _, err := ask(netip.AddrPortFrom(a.ips[0], 8080).String()); err == nil {
			t.Errorf("pod a still reachable after Teardown")
		}
	})
}
