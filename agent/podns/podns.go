// Package podns opens a pod's network namespace by path or pid and reads
// what the agent needs from it: its cookie, its addresses, and the
// processes and listening sockets inside it.
package podns

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrHostNetwork: the namespace is the agent's own (the host's).
var ErrHostNetwork = errors.New("is the host network namespace")

// NS is an open network namespace.
type NS struct {
	// Path is the path it was opened by.
	Path string
	// Ino identifies the namespace on this host (nsfs inode).
	Ino uint64
	// Cookie is the kernel's netns cookie, the key of the eBPF maps.
	Cookie uint64
	f      *os.File
}

// PathOf returns the netns path for a pid.
func PathOf(pid int) string { return fmt.Sprintf("/proc/%d/ns/net", pid) }

// CookieFunc returns the cookie of the namespace ns; it may use ns.Do.
type CookieFunc func(ns *NS) (uint64, error)

// Open opens the network namespace at path and reads its cookie with
// SockoptCookie. It refuses paths that are not a network namespace and the
// agent's own namespace (ErrHostNetwork).
func Open(path string) (*NS, error) { return OpenWith(path, SockoptCookie) }

// OpenWith is Open with another way to learn the cookie.
func OpenWith(path string, cookie CookieFunc) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open netns %s: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	ns := &NS{Path: path, f: f}
	if err := ns.init(); err != nil {
		f.Close()
		return nil, err
	}
	c, err := cookie(ns)
	if err != nil {
		f.Close()
		return nil, err
	}
	ns.Cookie = c
	return ns, nil
}

func (ns *NS) init() error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(ns.f.Fd()), &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("open netns %s: not a namespace file", ns.Path)
	}
	t, err := unix.IoctlRetInt(int(ns.f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || t != unix.CLONE_NEWNET {
		return fmt.Errorf("open netns %s: not a network namespace", ns.Path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.f.Fd()), &st); err != nil {
		return fmt.Errorf("stat netns %s: %w", ns.Path, err)
	}
	ns.Ino = st.Ino
	var self unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self); err == nil && self.Ino == st.Ino && self.Dev == st.Dev {
		return fmt.Errorf("netns %s: %w", ns.Path, ErrHostNetwork)
	}
	return nil
}

// SockoptCookie reads the namespace's cookie with SO_NETNS_COOKIE on a
// socket made inside it (Linux 5.14).
func SockoptCookie(ns *NS) (uint64, error) {
	var c uint64
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket in netns %s: %w", ns.Path, err)
		}
		defer unix.Close(fd)
		if c, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err != nil {
			return fmt.Errorf("netns cookie of %s (SO_NETNS_COOKIE needs Linux 5.14): %w", ns.Path, err)
		}
		return nil
	})
	return c, err
}

// InodeID identifies the namespace by its inode instead of its cookie: the
// ID of iptables-mode enrollments on kernels without SO_NETNS_COOKIE.
func InodeID(ns *NS) (uint64, error) { return ns.Ino, nil }

// FD is the namespace's file descriptor, valid until Close.
func (ns *NS) FD() int { return int(ns.f.Fd()) }

// Close closes the namespace file.
func (ns *NS) Close() error { return ns.f.Close() }

// Do runs fn on a locked OS thread switched into the namespace. Sockets fn
// creates belong to the namespace. If switching back fails the thread stays
// locked, so the runtime discards it.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns.Path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", ns.Path, err))
			return // thread stays locked and dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Addresses returns the global unicast addresses of the namespace's
// interfaces: the pod's IPs.
func (ns *NS) Addresses() ([]netip.Addr, error) {
	var out []netip.Addr
	err := ns.Do(func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return fmt.Errorf("list addresses in netns %s: %w", ns.Path, err)
		}
		for _, a := range addrs {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue
			}
			ip := pfx.Addr().Unmap()
			if ip.IsGlobalUnicast() {
				out = append(out, ip)
			}
		}
		return nil
	})
	return out, err
}

// Pids returns the processes whose network namespace is this one.
func (ns *NS) Pids() []int { return pidsIn(ns.Ino, false) }

// FindByIno returns a /proc path of the network namespace with inode ino,
// through any process in it, or "" when no process is in it.
func FindByIno(ino uint64) string {
	if pids := pidsIn(ino, true); len(pids) > 0 {
		return PathOf(pids[0])
	}
	return ""
}

func pidsIn(ino uint64, first bool) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(PathOf(pid), &st) == nil && st.Ino == ino {
			out = append(out, pid)
			if first {
				break
			}
		}
	}
	return out
}
