package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// node is one kubelet of the cluster with its runtime and its addresses.
// Node i's addresses live on a link of its own (a dummy link, or a bridge
// without ports where the kernel has no dummy driver), so that the cluster
// does not depend on the machine's network and a second node could be added
// beside the first.
type node struct {
	index int
	// name is the Node's name and its link's name.
	name string
	// ipv4 and ipv6 are the node's addresses (on its link).
	ipv4, ipv6 netip.Addr
	// bridge is the pods' CNI bridge; podSubnets are the pods' ranges.
	bridge     string
	podSubnets []netip.Prefix
}

// newNode returns node i's names and addresses.
func newNode(i int) node {
	return node{
		index:  i,
		name:   fmt.Sprintf("sluice-node%d", i),
		ipv4:   netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}),
		ipv6:   netip.MustParseAddr(fmt.Sprintf("fd00:99::%x", i+1)),
		bridge: fmt.Sprintf("sluice%d", i),
		podSubnets: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i)),
		},
	}
}

// clusterNodes are the cluster's nodes: one, for now.
func clusterNodes() []node { return []node{newNode(0)} }

// suffix is "" for node 0 and "-<name>" for the others: the first node's
// daemons are plainly "kubelet", "procri", "kube-proxy".
func (n node) suffix() string {
	if n.index == 0 {
		return ""
	}
	return "-" + n.name
}

func (n node) ips() []netip.Addr { return []netip.Addr{n.ipv4, n.ipv6} }

// setupLink creates the node's link with its addresses, up: a dummy link,
// or a bridge without ports when the kernel has no dummy driver (this
// machine's kernel is built without CONFIG_DUMMY). Either is up without a
// cable, and its addresses are local addresses of the machine.
func (n node) setupLink() error {
	link, err := netlink.LinkByName(n.name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return fmt.Errorf("look up link %s: %w", n.name, err)
		}
		attrs := netlink.LinkAttrs{Name: n.name}
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
		if errors.Is(err, unix.EOPNOTSUPP) {
			err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		}
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add link %s: %w", n.name, err)
		}
		if link, err = netlink.LinkByName(n.name); err != nil {
			return fmt.Errorf("look up link %s: %w", n.name, err)
		}
	}
	if t := link.Type(); t != "dummy" && t != "bridge" {
		return fmt.Errorf("link %s exists and is a %s link, not the node's dummy link or bridge: remove it", n.name, t)
	}
	for _, ip := range n.ips() {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(ip.BitLen(), ip.BitLen())}}
		if ip.Is6() {
			// No duplicate address detection: the address is usable at once.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add address %s to %s: %w", ip, n.name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", n.name, err)
	}
	// The Service range is routed to the node's own link, where nothing
	// answers. kube-proxy translates a ClusterIP only once its rules for the
	// Service exist; until then (a few hundred milliseconds after a Service
	// is created) a connection to it would otherwise leave by the default
	// route, and on this machine the network beyond answers any TLS port:
	// the API server's aggregator once kept such a connection to a
	// stranger for a new APIService and got 404s from it for good. Routed
	// here, that early connection fails instead, and is retried.
	svc := &net.IPNet{IP: ServiceCIDR.Addr().AsSlice(), Mask: net.CIDRMask(ServiceCIDR.Bits(), ServiceCIDR.Addr().BitLen())}
	route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: svc, Scope: netlink.SCOPE_LINK, Src: n.ipv4.AsSlice()}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("route %s to %s: %w", ServiceCIDR, n.name, err)
	}
	return nil
}

// deleteLink removes a link by name; a missing link is fine.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// linkExists reports whether a link of that name exists.
func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// sysctl reads a sysctl such as "net.bridge.bridge-nf-call-iptables".
func sysctl(name string) (string, error) {
	data, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(data)), nil
}

// setSysctl writes a sysctl.
func setSysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/"+strings.ReplaceAll(name, ".", "/"), []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
