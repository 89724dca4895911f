// Package mountinfo parses /proc/<pid>/mountinfo: the mounts a process sees,
// so the agent, meshctl and the tests find cgroup v2 and the BPF filesystem
// the same way on unified and hybrid cgroup layouts.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of mountinfo.
type Mount struct {
	// Point is where it is mounted, unescaped.
	Point string
	// FSType is the file system type, such as cgroup2 or bpf.
	FSType string
}

// Parse reads mountinfo lines (see proc(5)). Malformed lines are an error.
func Parse(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		// id parent major:minor root point options [optional...] - fstype source superoptions
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			return nil, fmt.Errorf("mountinfo line %d: malformed: %q", n, sc.Text())
		}
		out = append(out, Mount{Point: unescape(fields[4]), FSType: fields[sep+1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// Self returns the mounts of the calling process.
func Self() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	return Parse(f)
}

// FirstOfType returns the first mount of the given file system type.
func FirstOfType(ms []Mount, fstype string) (Mount, bool) {
	for _, m := range ms {
		if m.FSType == fstype {
			return m, true
		}
	}
	return Mount{}, false
}

// At returns the mount visible at point: the last one listed there, since
// later mounts hide earlier ones.
func At(ms []Mount, point string) (Mount, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Point == point {
			return ms[i], true
		}
	}
	return Mount{}, false
}

// unescape undoes the kernel's \ooo escaping of space, tab, newline and
// backslash in mount points.
func unescape(s string) string {
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
