package ebpfcheck

import (
	"bufio"
	"fmt"
	"io"
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
type mount struct {
	Point  string
	FSType string
}

func (h Host) mounts() ([]mount, error) {
	path := filepath.Join(h.ProcRoot, "self/mountinfo")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	ms, err := parseMountInfo(f)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return ms, nil
}

// parseMountInfo parses the format of proc(5) /proc/self/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// keeping the mount point (field 5) and the filesystem type (the first field
// after the "-" separator, which follows a variable number of optional fields).
func parseMountInfo(r io.Reader) ([]mount, error) {
	var out []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			return nil, fmt.Errorf("line %d: malformed: %q", n, sc.Text())
		}
		out = append(out, mount{Point: unescapeOctal(fields[4]), FSType: fields[sep+1]})
	}
	return out, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escaping of space, tab, newline and
// backslash in mount points.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountAt returns the mount that is visible at point: the last one listed
// there, since later mounts hide earlier ones.
func mountAt(ms []mount, point string) (mount, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Point == point {
			return ms[i], true
		}
	}
	return mount{}, false
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
