package iptables

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/netns"
)

// requireRoot needs root and the programs the rules are made with; the
// shared harness skips outside CI and fails in CI.
func requireRoot(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	for _, bin := range []string{"ip", "nsenter", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save"} {
		netns.RequireCommand(t, bin)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a network namespace with lo up, deleted when the test
// ends, and returns its name and path.
func newNetns(t *testing.T) (name, path string) {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name = "sl-ipt-" + hex.EncodeToString(b[:])
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name, "/run/netns/" + name
}

// natTable returns iptables-save -t nat for family in netns, without the
// timestamped comment lines.
func natTable(t *testing.T, path string, f Family) string {
	t.Helper()
	out := run(t, "nsenter", "--net="+path, "--", f.saveCmd(), "-t", "nat")
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func TestInstallRemove(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	_, ns := newNetns(t)
	var r Rules

	if ok, err := r.Installed(ctx, ns); err != nil || ok {
		t.Fatalf("Installed before Install = %v, %v; want false", ok, err)
	}
	if err := r.Remove(ctx, ns); err != nil {
		t.Fatalf("Remove before Install: %v", err)
	}
	if err := r.Install(ctx, ns, skipConfig); err != nil {
		t.Fatalf("Install: %v", err)
	}
	before := map[Family]string{}
	for _, f := range families {
		tab := natTable(t, ns, f)
		before[f] = tab
		for _, want := range []string{
			":" + InboundChain + " - [0:0]",
			":" + OutboundChain + " - [0:0]",
			`-A PREROUTING -m comment --comment "sluice: inbound" -j SLUICE_INBOUND`,
			`-A OUTPUT -m comment --comment "sluice: outbound" -j SLUICE_OUTPUT`,
			"-m owner --uid-owner 1337",
			"--to-ports 15001",
			"--to-ports 15006",
		} {
			if !strings.Contains(tab, want) {
				t.Errorf("%s nat table lacks %q:\n%s", f, want, tab)
			}
		}
		sub, other := "-d 10.0.0.0/8", "-d fd00::/8"
		if f == IPv6 {
			sub, other = other, sub
		}
		if !strings.Contains(tab, sub) || strings.Contains(tab, other) {
			t.Errorf("%s nat table: want %q and not %q:\n%s", f, sub, other, tab)
		}
	}
	if ok, err := r.Installed(ctx, ns); err != nil || !ok {
		t.Fatalf("Installed after Install = %v, %v; want true", ok, err)
	}

	err := r.Install(ctx, ns, api.PodConfig{})
	if !errors.Is(err, ErrInstalled) {
		t.Fatalf("second Install = %v, want ErrInstalled", err)
	}
	for _, f := range families {
		if after := natTable(t, ns, f); after != before[f] {
			t.Errorf("second Install changed the %s nat table:\nbefore:\n%s\nafter:\n%s", f, before[f], after)
		}
	}

	if err := r.Remove(ctx, ns); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	for _, f := range families {
		if tab := natTable(t, ns, f); strings.Contains(tab, "SLUICE") || strings.Contains(tab, "sluice") {
			t.Errorf("%s nat table after Remove:\n%s", f, tab)
		}
	}
	if ok, err := r.Installed(ctx, ns); err != nil || ok {
		t.Fatalf("Installed after Remove = %v, %v; want false", ok, err)
	}
	if err := r.Remove(ctx, ns); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	// And it installs again.
	if err := r.Install(ctx, ns, api.PodConfig{}); err != nil {
		t.Fatalf("Install after Remove: %v", err)
	}
}

func TestInstallRace(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	_, ns := newNetns(t)
	var r Rules
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() { errs <- r.Install(ctx, ns, api.PodConfig{}) }()
	}
	ok := 0
	for range n {
		err := <-errs
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrInstalled):
			t.Errorf("Install: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d of %d concurrent Installs succeeded, want 1", ok, n)
	}
	for _, f := range families {
		tab := natTable(t, ns, f)
		if c := strings.Count(tab, "-j "+OutboundChain); c != 1 {
			t.Errorf("%s: %d jumps to %s, want 1:\n%s", f, c, OutboundChain, tab)
		}
	}
}

func TestMissingNetns(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	ns := "/run/netns/sl-ipt-missing-" + strings.ReplaceAll(t.Name(), "/", "-")
	var r Rules
	err := r.Install(ctx, ns, api.PodConfig{})
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), ns) {
		t.Errorf("Install on a missing netns = %v, want os.ErrNotExist naming %s", err, ns)
	}
	if err := r.Remove(ctx, ns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Remove on a missing netns = %v, want os.ErrNotExist", err)
	}
	if _, err := r.Installed(ctx, ns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Installed on a missing netns = %v, want os.ErrNotExist", err)
	}
}

// inNetns runs fn on an OS thread moved into the network namespace at path.
// The thread stays locked, so the runtime ends it with the goroutine
// instead of reusing it elsewhere.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// originalDst reads SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6)
// from a redirected connection.
func originalDst(c *net.TCPConn, f Family) (netip.AddrPort, error) {
	const soOriginalDst = 80
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		ap   netip.AddrPort
		serr error
	)
	err = rc.Control(func(fd uintptr) {
		if f == IPv4 {
			var sa unix.RawSockaddrInet4
			l := uint32(unsafe.Sizeof(sa))
			serr = getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &l)
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
			ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
			return
		}
		var sa unix.RawSockaddrInet6
		l := uint32(unsafe.Sizeof(sa))
		serr = getsockopt(fd, unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &l)
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		ap = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ap, serr
}

func getsockopt(fd uintptr, level, name int, p unsafe.Pointer, l *uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name), uintptr(p), uintptr(unsafe.Pointer(l)), 0)
	if errno != 0 {
		return fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", errno)
	}
	return nil
}

// TestRedirect shows, in a netns with a dummy interface, that a connection
// to a remote address reaches the outbound listener with its original
// destination intact, while skipped ports and the proxy's user go direct.
func TestRedirect(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	name, ns := newNetns(t)
	// A dummy interface where the kernel has one, else a veth pair whose
	// peer stays silent: either way the SYN goes nowhere.
	if out, err := exec.Command("ip", "-n", name, "link", "add", "d0", "type", "dummy").CombinedOutput(); err != nil {
		t.Logf("no dummy interface (%v: %s); using a veth pair", err, bytes.TrimSpace(out))
		run(t, "ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
		run(t, "ip", "-n", name, "link", "set", "d1", "up")
	}
	run(t, "ip", "-n", name, "addr", "add", "10.249.0.2/24", "dev", "d0")
	run(t, "ip", "-n", name, "addr", "add", "fd5d::2/64", "dev", "d0", "nodad")
	run(t, "ip", "-n", name, "link", "set", "d0", "up")

	cfg := api.PodConfig{SkipOutboundPorts: []api.PortRange{{Lo: 81, Hi: 81}}}.WithDefaults()
	var r Rules
	if err := r.Install(ctx, ns, cfg); err != nil {
		t.Fatalf("Install: %v", err)
	}

	for _, tc := range []struct {
		family       Family
		network      string
		listen, dest string
	}{
		{IPv4, "tcp4", "127.0.0.1", "10.249.0.1"},
		{IPv6, "tcp6", "::1", "fd5d::1"},
	} {
		t.Run(tc.family.String(), func(t *testing.T) {
			var ln *net.TCPListener
			err := inNetns(ns, func() error {
				var lc net.ListenConfig
				lc.SetMultipathTCP(false) // SO_ORIGINAL_DST wants plain TCP
				l, err := lc.Listen(ctx, tc.network, net.JoinHostPort(tc.listen, fmt.Sprint(cfg.OutboundPort)))
				if err != nil {
					return err
				}
				ln = l.(*net.TCPListener)
				return nil
			})
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			defer ln.Close()

			dial := func(port uint16, fsuid int) (net.Conn, error) {
				var c net.Conn
				err := inNetns(ns, func() error {
					if fsuid >= 0 {
						// Sockets are owned by the fsuid that creates them;
						// this thread dies after fn, so the change does too.
						unix.Setfsuid(fsuid)
					}
					var err error
					d := net.Dialer{Timeout: 500 * time.Millisecond}
					c, err = d.Dial(tc.network, net.JoinHostPort(tc.dest, fmt.Sprint(port)))
					return err
				})
				return c, err
			}

			c, err := dial(80, -1)
			if err != nil {
				t.Fatalf("dial %s port 80: %v", tc.dest, err)
			}
			defer c.Close()
			ln.SetDeadline(time.Now().Add(2 * time.Second))
			sc, err := ln.AcceptTCP()
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			defer sc.Close()
			if sc.RemoteAddr().String() != c.LocalAddr().String() {
				t.Errorf("accepted %v, dialed from %v", sc.RemoteAddr(), c.LocalAddr())
			}
			got, err := originalDst(sc, tc.family)
			if err != nil {
				t.Fatal(err)
			}
			if want := netip.AddrPortFrom(netip.MustParseAddr(tc.dest), 80); got != want {
				t.Errorf("original destination = %v, want %v", got, want)
			}

			// Not redirected: the dummy interface drops the SYN, so the
			// dial times out and the listener sees nothing.
			for _, skip := range []struct {
				what  string
				port  uint16
				fsuid int
			}{
				{"skipped port 81", 81, -1},
				{"proxy user", 80, int(cfg.ProxyUID)},
			} {
				if c, err := dial(skip.port, skip.fsuid); err == nil {
					c.Close()
					t.Errorf("%s: dial %s succeeded, want it to go to the dummy interface", skip.what, tc.dest)
				} else if ne := net.Error(nil); !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, syscall.ECONNREFUSED) {
					t.Logf("%s: dial: %v", skip.what, err)
				}
				ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
				if sc, err := ln.Accept(); err == nil {
					sc.Close()
					t.Errorf("%s: connection reached the proxy listener", skip.what)
				}
			}
		})
	}
}
