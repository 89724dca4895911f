// Package nodefacts reads what Sluice's eBPF data plane needs from a node:
// the kernel's release, its BTF, the BPF filesystem and the cgroup v2
// mount. meshctl's local checks read them on the machine it runs on; the
// node agent prints them (`sluice-agent node-facts`) and serves them on its
// admin port, so that `meshctl check --pre` learns them for every node of a
// cluster. It imports nothing eBPF-specific.
package nodefacts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sluice-mesh/sluice/internal/mountinfo"
)

// The oldest kernel Sluice's eBPF mode supports.
const (
	MinKernelMajor = 5
	MinKernelMinor = 10
)

// Where things are expected on a node.
const (
	// BPFFSPath is where the BPF filesystem is mounted.
	BPFFSPath = "/sys/fs/bpf"
	// BTFVmlinux is the kernel's BTF, under the sysfs root.
	BTFVmlinux = "kernel/btf/vmlinux"
)

// Facts are one node's kernel facts, as `sluice-agent node-facts` prints
// them. Each Error field says why the fact beside it is missing; it is
// empty when the fact was read.
type Facts struct {
	// Kernel is the release, as `uname -r` prints it.
	Kernel      string `json:"kernel"`
	KernelError string `json:"kernelError,omitempty"`
	// BTF says whether the kernel's type information is present.
	BTF      bool   `json:"btf"`
	BTFError string `json:"btfError,omitempty"`
	// Cgroup2Mount is where the cgroup v2 hierarchy is mounted; empty when
	// it is not.
	Cgroup2Mount string `json:"cgroup2Mount"`
	Cgroup2Error string `json:"cgroup2Error,omitempty"`
	// BPFFSMounted says whether a BPF filesystem is mounted at BPFFSPath.
	BPFFSMounted bool   `json:"bpffsMounted"`
	BPFFSError   string `json:"bpffsError,omitempty"`
}

// CheckKernel returns why the kernel is too old or unknown, or nil.
func (f Facts) CheckKernel() error {
	if f.KernelError != "" {
		return errors.New(f.KernelError)
	}
	return CheckRelease(f.Kernel)
}

// CheckBTF returns why the kernel has no BTF, or nil.
func (f Facts) CheckBTF() error {
	switch {
	case f.BTFError != "":
		return errors.New(f.BTFError)
	case !f.BTF:
		return errors.New("no kernel BTF")
	}
	return nil
}

// CheckBPFFS returns why the BPF filesystem is not mounted, or nil.
func (f Facts) CheckBPFFS() error {
	switch {
	case f.BPFFSError != "":
		return errors.New(f.BPFFSError)
	case !f.BPFFSMounted:
		return fmt.Errorf("nothing is mounted at %s", BPFFSPath)
	}
	return nil
}

// CheckCgroup2 returns why cgroup v2 is not mounted, or nil.
func (f Facts) CheckCgroup2() error {
	switch {
	case f.Cgroup2Error != "":
		return errors.New(f.Cgroup2Error)
	case f.Cgroup2Mount == "":
		return errors.New("no cgroup2 mount")
	}
	return nil
}

// CheckRelease fails when release is older than MinKernelMajor.MinKernelMinor
// or does not parse.
func CheckRelease(release string) error {
	major, minor, err := ParseRelease(release)
	if err != nil {
		return err
	}
	if major < MinKernelMajor || major == MinKernelMajor && minor < MinKernelMinor {
		return fmt.Errorf("kernel %s is older than %d.%d", release, MinKernelMajor, MinKernelMinor)
	}
	return nil
}

// ParseRelease returns the major and minor version of a kernel release such
// as "6.18.44-fc-v669" or "5.10.0-28-amd64".
func ParseRelease(release string) (major, minor int, err error) {
	maj, rest, ok := strings.Cut(release, ".")
	if !ok {
		return 0, 0, fmt.Errorf("parse kernel release %q: no minor version", release)
	}
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	major, err1 := strconv.Atoi(maj)
	minor, err2 := strconv.Atoi(rest[:end])
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("parse kernel release %q: not major.minor", release)
	}
	return major, minor, nil
}

// Host is the machine whose facts are read. Tests point its roots at
// fixture directories; a probe pod points them at the node's /proc and /sys
// mounted into it.
type Host struct {
	// ProcRoot is where procfs is mounted, normally /proc.
	ProcRoot string
	// SysRoot is where sysfs is mounted, normally /sys.
	SysRoot string
	// MountsOf is the process, under ProcRoot, whose mount table is read:
	// "" means "self"; "1" reads the node's init's, the node's own mounts,
	// when ProcRoot is the node's procfs.
	MountsOf string
	// Uname returns the running kernel's release, as `uname -r` prints it.
	// Nil reads ProcRoot/sys/kernel/osrelease.
	Uname func() (string, error)
}

// DefaultHost is the machine the caller runs on, seen from its own mount
// namespace.
func DefaultHost() Host { return Host{ProcRoot: "/proc", SysRoot: "/sys"} }

// Gather reads every fact; what cannot be read is said in its Error field.
func (h Host) Gather() Facts {
	var f Facts
	var err error
	if f.Kernel, err = h.Release(); err != nil {
		f.KernelError = err.Error()
	}
	if err := h.BTF(); err != nil {
		f.BTFError = err.Error()
	} else {
		f.BTF = true
	}
	if err := h.BPFFS(); err != nil {
		f.BPFFSError = err.Error()
	} else {
		f.BPFFSMounted = true
	}
	if f.Cgroup2Mount, err = h.Cgroup2(); err != nil {
		f.Cgroup2Error = err.Error()
	}
	return f
}

// Release returns the running kernel's release.
func (h Host) Release() (string, error) {
	if h.Uname != nil {
		return h.Uname()
	}
	b, err := os.ReadFile(filepath.Join(h.ProcRoot, "sys/kernel/osrelease"))
	if err != nil {
		return "", fmt.Errorf("read kernel release: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// BTF fails when the kernel's BTF is missing.
func (h Host) BTF() error {
	if _, err := os.Stat(filepath.Join(h.SysRoot, BTFVmlinux)); err != nil {
		return fmt.Errorf("find kernel BTF: %w", err)
	}
	return nil
}

// BPFFS fails unless the mount visible at BPFFSPath is a BPF filesystem.
func (h Host) BPFFS() error {
	ms, err := h.Mounts()
	if err != nil {
		return err
	}
	m, ok := mountinfo.At(ms, BPFFSPath)
	if !ok {
		return fmt.Errorf("nothing is mounted at %s", BPFFSPath)
	}
	if m.FSType != "bpf" {
		return fmt.Errorf("%s is a %s filesystem, not bpf", BPFFSPath, m.FSType)
	}
	return nil
}

// Cgroup2 returns where the cgroup v2 hierarchy is mounted.
func (h Host) Cgroup2() (string, error) {
	ms, err := h.Mounts()
	if err != nil {
		return "", err
	}
	return Cgroup2Mount(ms)
}

// Mounts returns the mount table of the process MountsOf.
func (h Host) Mounts() ([]mountinfo.Mount, error) {
	pid := h.MountsOf
	if pid == "" {
		pid = "self"
	}
	path := filepath.Join(h.ProcRoot, pid, "mountinfo")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	ms, err := mountinfo.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return ms, nil
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted: at
// /sys/fs/cgroup on unified layouts, usually /sys/fs/cgroup/unified on
// hybrid ones. A cgroup2 mount hidden by a later mount does not count.
func Cgroup2Mount(ms []mountinfo.Mount) (string, error) {
	var v1 []string
	for i, m := range ms {
		switch m.FSType {
		case "cgroup2":
			if top, _ := mountinfo.At(ms[i:], m.Point); top.FSType == "cgroup2" {
				return m.Point, nil
			}
		case "cgroup":
			v1 = append(v1, m.Point)
		}
	}
	if len(v1) > 0 {
		return "", fmt.Errorf("no cgroup2 mount; only cgroup v1 hierarchies (%s)", strings.Join(v1, ", "))
	}
	return "", errors.New("no cgroup2 mount")
}
