// Package nodefactstest makes fixture nodes for tests that read node facts:
// mount tables seen on real machines, and a nodefacts.Host over fixture
// /proc and /sys directories.
package nodefactstest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

// Mount tables seen on real machines.
const (
	// HybridMounts is the build machines' layout: cgroup v1 controllers
	// with cgroup2 at /sys/fs/cgroup/unified, and bpffs mounted.
	HybridMounts = `22 1 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 22 0:39 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:9 - bpf bpf rw,mode=700
`
	// UnifiedMounts has cgroup2 at /sys/fs/cgroup and no bpffs.
	UnifiedMounts = `22 1 0:20 / /sys rw - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate
`
	// V1Mounts has only cgroup v1, and a tmpfs hiding an earlier bpffs.
	V1Mounts = `22 1 0:20 / /sys rw - sysfs sysfs rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
42 22 0:39 / /sys/fs/bpf rw - bpf bpf rw
43 22 0:40 / /sys/fs/bpf rw - tmpfs tmpfs rw
`
)

// Node is a fixture node.
type Node struct {
	// Release is written to /proc/sys/kernel/osrelease, unless empty.
	Release string
	// Mounts is the mount table of process MountsOf ("" is self).
	Mounts   string
	MountsOf string
	// BTF writes /sys/kernel/btf/vmlinux.
	BTF bool
}

// Host writes n under a new temporary directory and returns a Host that
// reads it.
func (n Node) Host(t testing.TB) nodefacts.Host {
	t.Helper()
	root := t.TempDir()
	h := nodefacts.Host{ProcRoot: filepath.Join(root, "proc"), SysRoot: filepath.Join(root, "sys"), MountsOf: n.MountsOf}
	pid := n.MountsOf
	if pid == "" {
		pid = "self"
	}
	WriteFile(t, filepath.Join(h.ProcRoot, pid, "mountinfo"), n.Mounts)
	if n.Release != "" {
		WriteFile(t, filepath.Join(h.ProcRoot, "sys/kernel/osrelease"), n.Release+"\n")
	}
	if n.BTF {
		WriteFile(t, filepath.Join(h.SysRoot, nodefacts.BTFVmlinux), "BTF")
	}
	return h
}

// WriteFile writes content to path, making its directories.
func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
