package netns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serveEcho accepts on l until it is closed and echoes each connection.
func serveEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					c.Write(buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// roundTrip dials addr, sends msg and returns what comes back first.
func roundTrip(addr netip.AddrPort, msg string) (local netip.AddrPort, reply string, err error) {
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		return local, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return local, "", err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return local, "", err
	}
	return c.LocalAddr().(*net.TCPAddr).AddrPort(), string(buf), nil
}

func TestPodsReachEachOther(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ip")
	RequireCommand(t, "nsenter")
	node := NewNode(t)
	a := node.AddPod(t, "a", PodOptions{})
	b := node.AddPod(t, "b", PodOptions{})
	if a.IPv4() == b.IPv4() || a.IPv6() == b.IPv6() {
		t.Fatalf("pods share addresses: %v %v / %v %v", a.IPv4(), a.IPv6(), b.IPv4(), b.IPv6())
	}

	var addrs []netip.AddrPort
	err := b.Do(func() error {
		for _, ip := range []netip.Addr{b.IPv4(), b.IPv6()} {
			l, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go serveEcho(l)
			addrs = append(addrs, l.Addr().(*net.TCPAddr).AddrPort())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listen in pod b: %v", err)
	}
	for i, addr := range addrs {
		want := []netip.Addr{a.IPv4(), a.IPv6()}[i]
		err := a.Do(func() error {
			local, reply, err := roundTrip(addr, "ping "+addr.String())
			if err != nil {
				return err
			}
			if reply != "ping "+addr.String() {
				return fmt.Errorf("reply %q", reply)
			}
			if local.Addr() != want {
				return fmt.Errorf("source address %v, want %v", local.Addr(), want)
			}
			return nil
		})
		if err != nil {
			t.Errorf("pod a -> %v: %v", addr, err)
		}
	}

	// The pod's listeners are not reachable from the host netns by loopback:
	// they really live in the pod.
	if _, _, err := roundTrip(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), addrs[0].Port()), "x"); err == nil {
		t.Errorf("pod listener reachable on host loopback")
	}

	// Pods reach the host at the gateway addresses.
	for _, gw := range []netip.Addr{node.GatewayV4(), node.GatewayV6()} {
		l, err := net.Listen("tcp", netip.AddrPortFrom(gw, 0).String())
		if err != nil {
			t.Fatalf("listen on gateway: %v", err)
		}
		defer l.Close()
		go serveEcho(l)
		err = a.Do(func() error {
			_, _, err := roundTrip(l.Addr().(*net.TCPAddr).AddrPort(), "host")
			return err
		})
		if err != nil {
			t.Errorf("pod a -> host %v: %v", gw, err)
		}
	}
}

func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "0::"); ok {
			return rest
		}
	}
	t.Fatalf("no cgroup v2 line in %q", b)
	return ""
}

func relCgroup(t *testing.T, abs string) string {
	t.Helper()
	root, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil {
		t.Fatal(err)
	}
	return "/" + rel
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(sa, sb)
}

func TestCommand(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ip")
	RequireCommand(t, "nsenter")
	node := NewNode(t)
	pod := node.AddPod(t, "app", PodOptions{})

	out, err := pod.Command(2102, "sh", "-c", "id -u; id -g; cat /proc/self/cgroup").CombinedOutput()
	if err != nil {
		t.Fatalf("command: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 3 || lines[0] != "2102" || lines[1] != "2102" {
		t.Fatalf("id -u/-g = %q, want 2102 2102", out)
	}
	if !strings.Contains(string(out), "0::"+relCgroup(t, pod.CgroupPath())+"\n") {
		t.Errorf("cgroup = %q, want %s", out, relCgroup(t, pod.CgroupPath()))
	}

	cmd := pod.Command(2102, "sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	// nsenter execs the program: wait until it did.
	deadline := time.Now().Add(5 * time.Second)
	for {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "sleep" || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got, want := cgroupOf(t, pid), relCgroup(t, pod.CgroupPath()); got != want {
		t.Errorf("cgroup of pid %d = %s, want %s", pid, got, want)
	}
	if !sameFile(t, fmt.Sprintf("/proc/%d/ns/net", pid), pod.NetNSPath()) {
		t.Errorf("pid %d is not in the pod's netns", pid)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !strings.Contains(string(status), "Uid:\t2102\t2102\t2102\t2102") {
		t.Errorf("pid %d status: %s", pid, status)
	}

	host := node.HostCommand(2102, "sleep", "60")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	if got, want := cgroupOf(t, host.Process.Pid), relCgroup(t, node.CgroupPath()); got != want {
		t.Errorf("host command cgroup = %s, want %s", got, want)
	}
	if !sameFile(t, fmt.Sprintf("/proc/%d/ns/net", host.Process.Pid), "/proc/self/ns/net") {
		t.Errorf("host command not in the host netns")
	}
	// Both sleeps are left running: cleanup must kill them.
}

func TestMountNS(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ip")
	RequireCommand(t, "nsenter")
	RequireCommand(t, "unshare")
	node := NewNode(t)
	pod := node.AddPod(t, "mnt", PodOptions{MountNS: true})
	plain := node.AddPod(t, "plain", PodOptions{})
	if pod.MountNSPath() == "" || plain.MountNSPath() != "" {
		t.Fatalf("MountNSPath = %q / %q", pod.MountNSPath(), plain.MountNSPath())
	}
	dir := t.TempDir()
	out, err := pod.Command(0, "sh", "-c", "mount -t tmpfs sltest "+dir+" && touch "+dir+"/inside").CombinedOutput()
	if err != nil {
		t.Fatalf("mount in pod: %v: %s", err, out)
	}
	// The mount persists in the pod's namespace ...
	out, err = pod.Command(0, "ls", dir).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "inside" {
		t.Errorf("second command sees %q (%v), want the pod's tmpfs", out, err)
	}
	// ... and is invisible on the host and in other pods.
	if _, err := os.Stat(filepath.Join(dir, "inside")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pod mount visible on the host: %v", err)
	}
	out, err = plain.Command(0, "ls", dir).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("other pod sees %q (%v)", out, err)
	}
}

// nodeResources lists what must be gone after a node's teardown.
type nodeResources struct {
	id, bridge, cgroup string
	netns, veths       []string
	mountNS            []string
	pids               []int
}

func resourcesOf(n *Node) nodeResources {
	r := nodeResources{id: n.ID(), bridge: n.Bridge(), cgroup: n.CgroupPath()}
	for _, p := range n.Pods() {
		r.netns = append(r.netns, p.NetNSPath())
		r.veths = append(r.veths, p.rec.HostVeth)
		if p.MountNSPath() != "" {
			r.mountNS = append(r.mountNS, p.MountNSPath())
		}
	}
	return r
}

// alive reports whether pid runs (a zombie does not count).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

func checkGone(t *testing.T, r nodeResources) {
	t.Helper()
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }
	for _, p := range append(append([]string{r.cgroup, recordPath(r.id)}, r.netns...), r.mountNS...) {
		if exists(p) {
			t.Errorf("%s still exists", p)
		}
	}
	for _, l := range append([]string{r.bridge}, r.veths...) {
		if linkExists(l) {
			t.Errorf("link %s still exists", l)
		}
	}
	for _, pid := range r.pids {
		deadline := time.Now().Add(5 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d still running", pid)
		}
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), "sl-"+r.id+"-") {
		t.Errorf("ip netns list still shows the node's pods: %s", out)
	}
}

func TestCleanup(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ip")
	RequireCommand(t, "nsenter")
	var r nodeResources
	t.Run("node", func(t *testing.T) {
		node := NewNode(t)
		node.AddPod(t, "a", PodOptions{MountNS: true})
		p := node.AddPod(t, "b", PodOptions{})
		r = resourcesOf(node)
		for _, cmd := range []*exec.Cmd{p.Command(2102, "sleep", "60"), node.HostCommand(0, "sleep", "60"),
			p.Command(0, "sh", "-c", "sleep 60 & sleep 60")} {
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			r.pids = append(r.pids, cmd.Process.Pid)
		}
		// A socket held by the test itself in the pod must not stop teardown.
		err := p.Do(func() error {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			_ = l
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	checkGone(t, r)
}

func TestParallelNodesDistinct(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ip")
	RequireCommand(t, "nsenter")
	// Nodes created concurrently (and alive at the same time) get distinct
	// subnets. NewNode only calls t.Fatalf on setup errors, which the main test
	// goroutine reports after Wait.
	const count = 6
	nodes := make([]*Node, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i] = NewNode(t)
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for _, n := range nodes {
		if n == nil {
			t.Fatal("NewNode failed")
		}
		if other, ok := seen[n.GatewayV4()]; ok {
			t.Errorf("nodes %s and %s share %v", n.ID(), other, n.GatewayV4())
		}
		seen[n.GatewayV4()] = n.ID()
		if !linkExists(n.Bridge()) {
			t.Errorf("bridge %s missing", n.Bridge())
		}
	}
}

// TestStaleNodeHelper is not a test: TestStaleNodeSweep runs it as a child
// process (the os/exec TestHelperProcess idiom) to build a node, print its
// resources and die by SIGKILL without any cleanup. Run normally it returns.
func TestStaleNodeHelper(t *testing.T) {
	if os.Getenv("SLUICE_NETNS_STALE_HELPER") != "1" {
		return
	}
	node := NewNode(t)
	node.AddPod(t, "a", PodOptions{MountNS: true})
	p := node.AddPod(t, "b", PodOptions{})
	cmd := p.Command(2102, "sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("NODE %s %d\n", node.ID(), cmd.Process.Pid)
	os.Stdout.Sync()
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}

func TestStaleNodeSweep(t *testing.T) {
	RequireRoot(t)
	RequireCommand(t, "ip")
	RequireCommand(t, "nsenter")
	RequireCommand(t, "unshare")
	cmd := exec.Command(os.Args[0], "-test.run=^TestStaleNodeHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SLUICE_NETNS_STALE_HELPER=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var id string
	var pid int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "NODE %s %d", &id, &pid); err == nil {
			break
		}
	}
	io.Copy(io.Discard, stdout)
	err = cmd.Wait()
	if id == "" {
		t.Fatalf("helper printed no node: %v", err)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper did not die by SIGKILL: %v", err)
	}

	recs, err := readRecords()
	if err != nil {
		t.Fatal(err)
	}
	var stale *nodeRecord
	for _, r := range recs {
		if r.ID == id {
			stale = r
		}
	}
	if stale == nil {
		t.Fatalf("no record for stale node %s", id)
	}
	r := nodeResources{id: id, bridge: stale.Bridge, cgroup: stale.Cgroup, pids: []int{pid}}
	for _, p := range stale.Pods {
		r.netns = append(r.netns, filepath.Join(netnsDir, p.NetNS))
		r.veths = append(r.veths, p.HostVeth)
		if p.MountNS != "" {
			r.mountNS = append(r.mountNS, p.MountNS)
		}
	}
	// The helper's resources outlive it ...
	if !linkExists(r.bridge) || !alive(pid) || len(r.netns) != 2 {
		t.Fatalf("stale node not left behind as expected: bridge %v, pid %d alive %v, pods %d",
			linkExists(r.bridge), pid, alive(pid), len(r.netns))
	}
	for _, p := range append(r.netns, r.mountNS...) {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("stale node not left behind as expected: %v", err)
		}
	}
	// ... until the next NewNode sweeps them.
	NewNode(t)
	checkGone(t, r)
}
