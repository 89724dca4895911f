package mountinfo

import (
	"strings"
	"testing"
)

const hybrid = `25 23 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:7 - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
40 22 0:40 / /sys/fs/bpf rw - tmpfs tmpfs rw
41 22 0:41 / /sys/fs/bpf rw shared:9 master:1 - bpf bpf rw,mode=700
50 23 0:50 / /mnt/with\040space rw - ext4 /dev/vda rw
`

func TestParse(t *testing.T) {
	ms, err := Parse(strings.NewReader(hybrid))
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := FirstOfType(ms, "cgroup2"); !ok || m.Point != "/sys/fs/cgroup/unified" {
		t.Errorf("cgroup2: %+v %v", m, ok)
	}
	if m, ok := At(ms, "/sys/fs/bpf"); !ok || m.FSType != "bpf" {
		t.Errorf("visible at /sys/fs/bpf: %+v, want the later bpf mount", m)
	}
	if _, ok := At(ms, "/mnt/with space"); !ok {
		t.Errorf("escaped mount point not unescaped: %+v", ms)
	}
	if _, ok := FirstOfType(ms, "nfs"); ok {
		t.Error("found a type that is not there")
	}
	if _, err := Parse(strings.NewReader("1 2 3\n")); err == nil {
		t.Error("malformed line accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(hybrid)
	f.Add("1 2 0:1 / /x rw - - -\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := Parse(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.FSType == "" {
				t.Fatalf("mount without type from %q", s)
			}
		}
	})
}
