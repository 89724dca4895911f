package cgroup

import (
	"slices"
	"strings"
	"testing"
)

// Sample mountinfo files of the three layouts (trimmed to the cgroup mounts
// and a few others).
const (
	// mountinfoHybrid is this CI machine's: every v1 controller on its own
	// (cpu and cpuacct apart), a named systemd hierarchy and cgroup2 at
	// /sys/fs/cgroup/unified.
	mountinfoHybrid = `23 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	// mountinfoV1 is a systemd machine without the unified hierarchy
	// (cgroup_no_v1 unset, systemd.legacy_systemd_cgroup_controller): cpu
	// and cpuacct share a mount, the memory hierarchy is bind-mounted twice.
	mountinfoV1 = `19 24 0:18 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 19 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpuset,clone_children
32 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
33 25 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
34 25 0:31 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,freezer
35 25 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,net_cls,net_prio
90 24 0:29 / /mnt/memory rw,relatime shared:15 - cgroup cgroup rw,memory
`
	// mountinfoV2 is a pure cgroup v2 machine.
	mountinfoV2 = `22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
24 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
26 24 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
)

func TestParseLayout(t *testing.T) {
	tests := []struct {
		name      string
		mountinfo string
		mode      string
		v2        string
		// controllers maps a controller to the mountpoint of its v1
		// hierarchy ("" when there is none).
		controllers map[string]string
		// hierarchies is how many distinct v1 hierarchies there are.
		hierarchies int
	}{
		{
			name:      "hybrid",
			mountinfo: mountinfoHybrid,
			mode:      ModeHybrid,
			v2:        "/sys/fs/cgroup/unified",
			controllers: map[string]string{
				"cpu":          "/sys/fs/cgroup/cpu",
				"cpuacct":      "/sys/fs/cgroup/cpuacct",
				"memory":       "/sys/fs/cgroup/memory",
				"name=systemd": "/sys/fs/cgroup/systemd",
				"hugetlb":      "",
			},
			hierarchies: 9,
		},
		{
			name:      "v1",
			mountinfo: mountinfoV1,
			mode:      ModeV1,
			controllers: map[string]string{
				"cpu":          "/sys/fs/cgroup/cpu,cpuacct",
				"cpuacct":      "/sys/fs/cgroup/cpu,cpuacct",
				"cpuset":       "/sys/fs/cgroup/cpuset",
				"memory":       "/sys/fs/cgroup/memory",
				"net_prio":     "/sys/fs/cgroup/net_cls,net_prio",
				"name=systemd": "/sys/fs/cgroup/systemd",
				"devices":      "",
			},
			hierarchies: 7,
		},
		{
			name:        "v2",
			mountinfo:   mountinfoV2,
			mode:        ModeV2,
			v2:          "/sys/fs/cgroup",
			controllers: map[string]string{"cpu": "", "memory": ""},
		},
		{
			name:      "v2 with a named v1 hierarchy",
			mountinfo: mountinfoV2 + "27 24 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
			mode:      ModeV2,
			v2:        "/sys/fs/cgroup",
			controllers: map[string]string{
				"cpu":          "",
				"name=systemd": "/sys/fs/cgroup/systemd",
			},
			hierarchies: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := parseLayout(strings.NewReader(tt.mountinfo))
			if err != nil {
				t.Fatalf("parseLayout: %v", err)
			}
			if got := l.mode(); got != tt.mode {
				t.Errorf("mode = %q, want %q", got, tt.mode)
			}
			if l.v2 != tt.v2 {
				t.Errorf("v2 = %q, want %q", l.v2, tt.v2)
			}
			if len(l.v1) != tt.hierarchies {
				t.Errorf("%d v1 hierarchies, want %d: %+v", len(l.v1), tt.hierarchies, l.v1)
			}
			for c, want := range tt.controllers {
				h, ok := l.controller(c)
				if ok != (want != "") || h.mountpoint != want {
					t.Errorf("controller(%q) = %q, %v; want %q", c, h.mountpoint, ok, want)
				}
			}
			for _, h := range l.v1 {
				if slices.ContainsFunc(h.controllers, func(c string) bool { return c == "rw" || c == "xattr" || c == "clone_children" }) {
					t.Errorf("hierarchy %s: mount options taken for controllers: %v", h.mountpoint, h.controllers)
				}
			}
		})
	}
}

func TestParseLayoutNoCgroups(t *testing.T) {
	if l, err := parseLayout(strings.NewReader("23 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")); err == nil {
		t.Fatalf("parseLayout without cgroup mounts = %+v, want an error", l)
	}
}

func TestCheckPath(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"/kubepods/besteffort/pod1/abc", true},
		{"/a", true},
		{"/", false},
		{"", false},
		{"kubepods/pod1", false},
		{"/kubepods/../etc", false},
		{"/kubepods/", false},
	}
	for _, tt := range tests {
		if err := checkPath(tt.path); (err == nil) != tt.ok {
			t.Errorf("checkPath(%q) = %v, want ok=%v", tt.path, err, tt.ok)
		}
	}
}
