package loader

import (
	"github.com/sluice-mesh/sluice/internal/mountinfo"

	"strings"
	"testing"
)

func TestFindCgroup2(t *testing.T) {
	tests := []struct {
		name, mountinfo, want string
	}{
		{"unified", "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup"},
		{"hybrid", "25 23 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n" +
			"26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:7 - cgroup2 cgroup2 rw\n" +
			"27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "/sys/fs/cgroup/unified"},
		{"v1 only", "27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", ""},
	}
	for _, tc := range tests {
		ms, err := mountinfo.Parse(strings.NewReader(tc.mountinfo))
		if err != nil {
			t.Fatal(err)
		}
		got, err := findCgroup2(ms)
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), "no cgroup2") {
				t.Errorf("%s: got %q %v, want an error", tc.name, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: got %q %v, want %q", tc.name, got, err, tc.want)
		}
	}
}
