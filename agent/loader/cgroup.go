package loader

import (
	"fmt"

	"github.com/sluice-mesh/sluice/internal/mountinfo"
)

// FindCgroup2 returns the mount point of the cgroup v2 hierarchy, on unified
// (/sys/fs/cgroup) and hybrid (/sys/fs/cgroup/unified) layouts alike.
func FindCgroup2() (string, error) {
	ms, err := mountinfo.Self()
	if err != nil {
		return "", fmt.Errorf("find cgroup v2: %w", err)
	}
	return findCgroup2(ms)
}

func findCgroup2(ms []mountinfo.Mount) (string, error) {
	if m, ok := mountinfo.FirstOfType(ms, "cgroup2"); ok {
		return m.Point, nil
	}
	return "", fmt.Errorf("find cgroup v2: no cgroup2 filesystem is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
}
