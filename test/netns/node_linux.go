package netns

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Node is a simulated Kubernetes node: a bridge in the host network namespace
// with its own IPv4 /24 and IPv6 /64, and a cgroup v2 directory under which the
// cgroups of its pods live. Create it with NewNode.
type Node struct {
	rec   *nodeRecord
	gw4   netip.Addr
	gw6   netip.Addr
	cgDir *os.File // open cgroup directory, for CLONE_INTO_CGROUP

	vethPrefix string // sl<N><hex suffix>: host veth names are <prefix>p<i>

	mu     sync.Mutex
	pods   []*Pod
	cmds   []*exec.Cmd
	closed bool
}

// Pod is a network namespace with a veth on its node's bridge (eth0 inside), its
// own IPv4 and IPv6 address, a cgroup below the node's and optionally a private
// mount namespace. Create it with Node.AddPod.
type Pod struct {
	node  *Node
	rec   podRecord
	v4    netip.Addr
	v6    netip.Addr
	cgDir *os.File
}

// PodOptions configures Node.AddPod.
type PodOptions struct {
	// MountNS gives the pod a private mount namespace (a copy of the host's mounts
	// with private propagation, persisted through a bind-mounted namespace file)
	// which Pod.Command enters.
	MountNS bool
}

// NewNode creates a node: a bridge in the host network namespace with the
// addresses 10.248.N.1/24 and fd5c:0:0:N::1/64 (nodad), and the cgroup v2
// directory <cgroup2 mount>/sluice-test-<id>. N is allocated under an flock on
// /run/sluice-test/alloc.lock, so parallel test processes never collide, and the
// node is recorded in /run/sluice-test/nodes/<id>.json with the owning pid.
// Before allocating, NewNode tears down the nodes of dead owner processes.
// Everything the node and its pods hold is torn down by t.Cleanup.
//
// NewNode needs root; call RequireRoot first.
func NewNode(t testing.TB) *Node {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("netns: NewNode needs root (euid %d); call RequireRoot first", os.Geteuid())
	}
	for _, c := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("netns: NewNode needs %q on PATH: %v", c, err)
		}
	}
	cgRoot, err := Cgroup2Mount()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	start, err := processStart(os.Getpid())
	if err != nil {
		t.Fatalf("netns: read own start time: %v", err)
	}

	unlock, err := lockState()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	swept, remaining, err := sweepStale()
	if len(swept) > 0 {
		t.Logf("netns: removed stale nodes %v", swept)
	}
	if err != nil {
		t.Logf("netns: %v", err)
	}
	n, err := freeSubnet(remaining)
	if err != nil {
		unlock()
		t.Fatalf("netns: %v", err)
	}
	suffix := rand.N[uint32](0x10000)
	id := fmt.Sprintf("%d-%04x", n, suffix)
	rec := &nodeRecord{
		ID:     id,
		N:      n,
		PID:    os.Getpid(),
		Start:  start,
		Bridge: "slb-" + id,
		Cgroup: filepath.Join(cgRoot, "sluice-test-"+id),
	}
	err = rec.write()
	unlock()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}

	node := &Node{
		rec: rec,
		gw4: netip.AddrFrom4([4]byte{10, 248, byte(n), 1}),
		gw6: v6Addr(n, 1),

		vethPrefix: fmt.Sprintf("sl%d%04x", n, suffix),
	}
	t.Cleanup(func() {
		if err := node.teardown(); err != nil {
			t.Errorf("netns: tear down node %s: %v", id, err)
		}
	})

	if err := os.Mkdir(rec.Cgroup, 0o755); err != nil {
		t.Fatalf("netns: create node cgroup: %v", err)
	}
	if node.cgDir, err = os.Open(rec.Cgroup); err != nil {
		t.Fatalf("netns: open node cgroup: %v", err)
	}
	br := rec.Bridge
	batch := fmt.Sprintf("link add %s type bridge\n"+
		"addr add %s/24 dev %s\n"+
		"addr add %s/64 dev %s nodad\n"+
		"link set %s up\n",
		br, node.gw4, br, node.gw6, br, br)
	if err := runStdin(batch, "ip", "-batch", "-"); err != nil {
		t.Fatalf("netns: create bridge: %v", err)
	}
	return node
}

// v6Addr returns fd5c:0:0:N::H where N and H are written with the same decimal
// digits as in the IPv4 address (10.248.12.10 pairs with fd5c:0:0:12::10).
func v6Addr(n, host int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd5c:0:0:%d::%d", n, host))
}

// freeSubnet picks N in 1..254 used by no recorded node and by no address of the
// host. The caller holds the allocation lock.
func freeSubnet(recs []*nodeRecord) (int, error) {
	used := make(map[int]bool)
	for _, r := range recs {
		used[r.N] = true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("list host addresses: %w", err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip4 := ipn.IP.To4(); ip4 != nil && ip4[0] == 10 && ip4[1] == 248 {
				used[int(ip4[2])] = true
			}
		}
	}
	for n := 1; n <= 254; n++ {
		if !used[n] {
			return n, nil
		}
	}
	return 0, errors.New("allocate node subnet: all of 10.248.1-254.0/24 are in use")
}

// ID returns the node's identifier, unique on the machine while the node exists;
// it appears in the names of the node's bridge, cgroup and namespaces.
func (n *Node) ID() string { return n.rec.ID }

// CgroupPath returns the absolute path of the node's cgroup v2 directory, the
// parent of its pods' cgroups: tests attach cgroup programs here.
func (n *Node) CgroupPath() string { return n.rec.Cgroup }

// Bridge returns the name of the node's bridge in the host network namespace.
func (n *Node) Bridge() string { return n.rec.Bridge }

// GatewayV4 returns the bridge's IPv4 address, 10.248.N.1, the pods' default
// gateway and the address at which pods reach the host.
func (n *Node) GatewayV4() netip.Addr { return n.gw4 }

// GatewayV6 returns the bridge's IPv6 address, fd5c:0:0:N::1, the pods' default
// gateway and the address at which pods reach the host.
func (n *Node) GatewayV6() netip.Addr { return n.gw6 }

// Pods returns the node's pods in the order they were added.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Pod(nil), n.pods...)
}

var podName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// AddPod creates a pod named name (lower-case letters, digits and dashes, at most
// 32 characters, unique on the node): a network namespace bind-mounted at
// /run/netns/sl-<node id>-<name>, a veth pair whose pod end is eth0 (the host end,
// named sl<N><hex>p<i>, on the bridge), lo up, the addresses 10.248.N.(10+i)/24
// and fd5c:0:0:N::(10+i)/64 (nodad, accept_dad=0) where i counts the node's pods
// from 0, default routes via the bridge addresses, and the cgroup
// <node cgroup>/<name>. It fails t on error; teardown belongs to the node.
func (n *Node) AddPod(t testing.TB, name string, opts PodOptions) *Pod {
	t.Helper()
	if !podName.MatchString(name) {
		t.Fatalf("netns: invalid pod name %q", name)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		t.Fatalf("netns: AddPod on node %s after its teardown", n.rec.ID)
	}
	for _, p := range n.pods {
		if p.rec.Name == name {
			n.mu.Unlock()
			t.Fatalf("netns: pod %q already exists on node %s", name, n.rec.ID)
		}
	}
	i := len(n.pods)
	if 10+i > 254 {
		n.mu.Unlock()
		t.Fatalf("netns: node %s is full", n.rec.ID)
	}
	p := &Pod{
		node: n,
		rec: podRecord{
			Name:     name,
			NetNS:    "sl-" + n.rec.ID + "-" + name,
			HostVeth: fmt.Sprintf("%sp%d", n.vethPrefix, i),
			Cgroup:   filepath.Join(n.rec.Cgroup, name),
		},
		v4: netip.AddrFrom4([4]byte{10, 248, byte(n.rec.N), byte(10 + i)}),
		v6: v6Addr(n.rec.N, 10+i),
	}
	if opts.MountNS {
		p.rec.MountNS = filepath.Join(mountNSes, "sl-"+n.rec.ID+"-"+name)
	}
	n.pods = append(n.pods, p)
	n.rec.Pods = append(n.rec.Pods, p.rec)
	err := n.rec.write()
	n.mu.Unlock()
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	if err := p.create(); err != nil {
		t.Fatalf("netns: create pod %s: %v", name, err)
	}
	return p
}

// create makes the pod's resources; they are already recorded.
func (p *Pod) create() error {
	n := p.node
	if err := os.Mkdir(p.rec.Cgroup, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	var err error
	if p.cgDir, err = os.Open(p.rec.Cgroup); err != nil {
		return fmt.Errorf("open cgroup: %w", err)
	}
	if err := run("ip", "netns", "add", p.rec.NetNS); err != nil {
		return err
	}
	if p.rec.MountNS != "" {
		if err := p.createMountNS(); err != nil {
			return err
		}
	}
	if err := run("ip", "link", "add", p.rec.HostVeth, "type", "veth",
		"peer", "name", "eth0", "netns", p.rec.NetNS); err != nil {
		return err
	}
	if err := run("ip", "link", "set", p.rec.HostVeth, "master", n.rec.Bridge, "up"); err != nil {
		return err
	}
	err = p.Do(func() error {
		for _, dev := range []string{"all", "default", "eth0"} {
			f := "/proc/sys/net/ipv6/conf/" + dev + "/accept_dad"
			if err := os.WriteFile(f, []byte("0"), 0); err != nil {
				return fmt.Errorf("set accept_dad: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	batch := fmt.Sprintf("addr add %s/24 dev eth0\n"+
		"addr add %s/64 dev eth0 nodad\n"+
		"link set lo up\n"+
		"link set eth0 up\n"+
		"route add default via %s dev eth0\n"+
		"route add default via %s dev eth0\n",
		p.v4, p.v6, n.gw4, n.gw6)
	return runStdin(batch, "ip", "-n", p.rec.NetNS, "-batch", "-")
}

// createMountNS creates a private mount namespace persisted at p.rec.MountNS.
func (p *Pod) createMountNS() error {
	unlock, err := lockState() // mounting on the shared state dir: one process at a time
	if err != nil {
		return err
	}
	err = ensurePrivateMount(mountNSes)
	unlock()
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.rec.MountNS, nil, 0o644); err != nil {
		return fmt.Errorf("create mount namespace file: %w", err)
	}
	return run("unshare", "--mount="+p.rec.MountNS, "--propagation", "private", "true")
}

// HostCommand returns a command that runs name in the host network namespace but
// inside the node's cgroup (a "host process" for tests), as uid with gid = uid and
// no supplementary groups, in its own process group. Processes started from it
// are killed at cleanup if still running.
func (n *Node) HostCommand(uid int, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)},
		UseCgroupFD: true,
		CgroupFD:    int(n.cgDir.Fd()),
		Setpgid:     true,
	}
	n.track(cmd)
	return cmd
}

func (n *Node) track(cmd *exec.Cmd) {
	n.mu.Lock()
	n.cmds = append(n.cmds, cmd)
	n.mu.Unlock()
}

// teardown kills the process groups of the commands handed out, then removes
// everything recorded for the node (see nodeRecord.destroy).
func (n *Node) teardown() error {
	n.mu.Lock()
	n.closed = true
	cmds := n.cmds
	pods := n.pods
	n.mu.Unlock()
	for _, cmd := range cmds {
		// Signal 0 succeeds only while the process is not yet reaped, so its pid
		// (and group id) cannot have been reused.
		if cmd.Process != nil && cmd.Process.Signal(syscall.Signal(0)) == nil {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	err := n.rec.destroy()
	for _, p := range pods {
		if p.cgDir != nil {
			p.cgDir.Close()
		}
	}
	if n.cgDir != nil {
		n.cgDir.Close()
	}
	return err
}

// Name returns the pod's name.
func (p *Pod) Name() string { return p.rec.Name }

// Node returns the node the pod is on.
func (p *Pod) Node() *Node { return p.node }

// NetNSPath returns the path of the pod's network namespace file,
// /run/netns/sl-<node id>-<name>.
func (p *Pod) NetNSPath() string { return filepath.Join(netnsDir, p.rec.NetNS) }

// NetNSName returns the name of the pod's network namespace for `ip netns` and
// `ip -n`.
func (p *Pod) NetNSName() string { return p.rec.NetNS }

// MountNSPath returns the path of the pod's persisted mount namespace, or "" if
// it was created without PodOptions.MountNS.
func (p *Pod) MountNSPath() string { return p.rec.MountNS }

// IPv4 returns the pod's IPv4 address, 10.248.N.(10+i).
func (p *Pod) IPv4() netip.Addr { return p.v4 }

// IPv6 returns the pod's IPv6 address, fd5c:0:0:N::(10+i).
func (p *Pod) IPv6() netip.Addr { return p.v6 }

// CgroupPath returns the absolute path of the pod's cgroup v2 directory.
func (p *Pod) CgroupPath() string { return p.rec.Cgroup }

// Command returns a command that runs name in the pod's network namespace (and
// mount namespace, if any) and cgroup as uid, with gid = uid and no
// supplementary groups, in its own process group. It runs
// `nsenter --net=<path> [--mount=<path>] --setuid U --setgid U -- name args...`
// started directly into the pod's cgroup (CLONE_INTO_CGROUP), so the process is in
// the cgroup before it enters the namespace. Processes started from it are killed
// (the whole process group, SIGKILL) at cleanup if still running.
func (p *Pod) Command(uid int, name string, args ...string) *exec.Cmd {
	nsArgs := []string{"--net=" + p.NetNSPath()}
	if p.rec.MountNS != "" {
		nsArgs = append(nsArgs, "--mount="+p.rec.MountNS)
	}
	u := strconv.Itoa(uid)
	nsArgs = append(nsArgs, "--setuid", u, "--setgid", u, "--", name)
	cmd := exec.Command("nsenter", append(nsArgs, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(p.cgDir.Fd()),
		Setpgid:     true,
	}
	p.node.track(cmd)
	return cmd
}

// Do runs fn on a locked OS thread inside the pod's network namespace (with the
// test's own credentials and cgroup) and returns its error. Sockets created inside
// fn stay in the pod's network namespace after Do returns; goroutines that fn
// starts do not run in it. If switching back fails, the thread stays locked, so
// the runtime discards it when the goroutine exits.
func (p *Pod) Do(fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(p.NetNSPath())
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open pod netns: %w", err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter pod netns: %w", err)
	}
	defer func() {
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			err = errors.Join(err, fmt.Errorf("leave pod netns: %w", serr))
			return // leave the thread locked: it is in the wrong namespace
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}
