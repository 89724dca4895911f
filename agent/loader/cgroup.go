package loader

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// FindCgroup2 returns the mount point of the cgroup v2 hierarchy, on unified
// (/sys/fs/cgroup) and hybrid (/sys/fs/cgroup/unified) layouts alike.
func FindCgroup2() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup v2: %w", err)
	}
	defer f.Close()
	return findCgroup2(f)
}

func findCgroup2(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup v2: %w", err)
	}
	return "", fmt.Errorf("find cgroup v2: no cgroup2 filesystem is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}
