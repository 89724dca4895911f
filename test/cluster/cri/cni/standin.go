package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// standIn makes a network namespace, pinned at a new file in dir, holding a
// interface ifname with the addresses addrs, for a DEL whose pod
// namespace is gone. The bridge plugin learns which masquerading rules to
// delete from the addresses of the interface it removes: without a
// namespace it would only release the addresses and leave the rules. The
// returned cleanup unpins and removes the namespace.
func standIn(dir, ifname string, addrs []netip.Prefix) (path string, cleanup func(), err error) {
	f, err := os.CreateTemp(dir, "del-netns-")
	if err != nil {
		return "", nil, fmt.Errorf("create netns pin: %w", err)
	}
	path = f.Name()
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, left in the new namespace, ends
		// with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		if err := unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("pin netns at %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", nil, err
	}
	cleanup = func() {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
	}
	if err := fillStandIn(path, ifname, addrs); err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}

// fillStandIn adds the interface with addrs to the namespace at path.
func fillStandIn(path, ifname string, addrs []netip.Prefix) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("open netlink in %s: %w", path, err)
	}
	defer h.Close()
	// A veth pair (both ends inside) rather than a dummy link: the
	// bridge plugin needs veth anyway, the dummy driver may be missing.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ifname}, PeerName: ifname + "-peer"}); err != nil {
		return fmt.Errorf("add stand-in %s: %w", ifname, err)
	}
	link, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find stand-in %s: %w", ifname, err)
	}
	var errs []error
	for _, a := range addrs {
		ipn := &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
			errs = append(errs, fmt.Errorf("add %s to stand-in %s: %w", a, ifname, err))
		}
	}
	return errors.Join(errs...)
}
