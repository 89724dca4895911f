package ebpfcheck

import (
	"github.com/sluice-mesh/sluice/internal/mountinfo"

	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Host is the machine the local checks look at. Tests point its roots at
// fixture directories.
type Host struct {
	// ProcRoot is where procfs is mounted, normally /proc.
	ProcRoot string
	// SysRoot is where sysfs is mounted, normally /sys.
	SysRoot string
	// Uname returns the running kernel's release, as `uname -r` prints it.
	// Nil reads ProcRoot/sys/kernel/osrelease.
	Uname func() (string, error)
}

// DefaultHost is the machine meshctl runs on.
func DefaultHost() Host { return Host{ProcRoot: "/proc", SysRoot: "/sys"} }

func (h Host) release() (string, error) {
	if h.Uname != nil {
		return h.Uname()
	}
	b, err := os.ReadFile(filepath.Join(h.ProcRoot, "sys/kernel/osrelease"))
	if err != nil {
		return "", fmt.Errorf("read kernel release: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// mount is one line of /proc/self/mountinfo.
type mount = mountinfo.Mount

func (h Host) mounts() ([]mount, error) {
	path := filepath.Join(h.ProcRoot, "self/mountinfo")
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

// parseRelease returns the major and minor version of a kernel release such
// as "6.18.44-fc-v669" or "5.10.0-28-amd64".
func parseRelease(release string) (major, minor int, err error) {
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
