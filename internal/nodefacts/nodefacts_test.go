package nodefacts_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/internal/nodefacts"
	"github.com/sluice-mesh/sluice/internal/nodefacts/nodefactstest"
)

// hiddenCgroup2Mounts has a cgroup2 mount that a later tmpfs hides.
const hiddenCgroup2Mounts = `31 22 0:28 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
32 22 0:29 / /sys/fs/cgroup rw - tmpfs tmpfs rw
`

// fixtureHost is a node with the mount table of process pid, a release
// and, if btf, BTF.
func fixtureHost(t *testing.T, release, pid, mounts string, btf bool) nodefacts.Host {
	t.Helper()
	if pid == "self" {
		pid = ""
	}
	h := nodefactstest.Node{Release: release, Mounts: mounts, MountsOf: pid, BTF: btf}.Host(t)
	h.MountsOf = ""
	return h
}

func TestGather(t *testing.T) {
	for _, tc := range []struct {
		name     string
		release  string
		mounts   string
		btf      bool
		want     nodefacts.Facts
		wantErrs [4]string // kernel, BTF, bpffs, cgroup2: fragments of the Check errors
	}{
		{
			name: "hybrid", release: "6.18.44-fc-v669", mounts: nodefactstest.HybridMounts, btf: true,
			want: nodefacts.Facts{Kernel: "6.18.44-fc-v669", BTF: true, Cgroup2Mount: "/sys/fs/cgroup/unified", BPFFSMounted: true},
		},
		{
			name: "unified without bpffs", release: "5.10.0-28-amd64", mounts: nodefactstest.UnifiedMounts, btf: true,
			want:     nodefacts.Facts{Kernel: "5.10.0-28-amd64", BTF: true, Cgroup2Mount: "/sys/fs/cgroup", BPFFSError: "nothing is mounted at /sys/fs/bpf"},
			wantErrs: [4]string{"", "", "nothing is mounted at /sys/fs/bpf", ""},
		},
		{
			name: "old v1 kernel", release: "4.19.0-17-amd64", mounts: nodefactstest.V1Mounts,
			wantErrs: [4]string{"kernel 4.19.0-17-amd64 is older than 5.10", "find kernel BTF", "/sys/fs/bpf is a tmpfs filesystem, not bpf",
				"only cgroup v1 hierarchies (/sys/fs/cgroup/cpu)"},
		},
		{
			name: "hidden cgroup2", release: "5.9.16", mounts: hiddenCgroup2Mounts, btf: true,
			wantErrs: [4]string{"older than 5.10", "", "nothing is mounted", "no cgroup2 mount"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fixtureHost(t, tc.release, "self", tc.mounts, tc.btf).Gather()
			if tc.want != (nodefacts.Facts{}) && got != tc.want {
				t.Errorf("Gather = %+v, want %+v", got, tc.want)
			}
			for i, err := range []error{got.CheckKernel(), got.CheckBTF(), got.CheckBPFFS(), got.CheckCgroup2()} {
				want := tc.wantErrs[i]
				switch {
				case want == "" && err != nil:
					t.Errorf("check %d: %v, want none", i, err)
				case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
					t.Errorf("check %d: %v, want it to contain %q", i, err, want)
				}
			}
		})
	}
}

func TestMountsOf(t *testing.T) {
	h := fixtureHost(t, "6.1.0", "1", nodefactstest.HybridMounts, true)
	if f := h.Gather(); f.Cgroup2Error == "" || f.BPFFSError == "" {
		t.Errorf("read mounts of self, which has none: %+v", f)
	}
	h.MountsOf = "1"
	if f := h.Gather(); f.Cgroup2Mount != "/sys/fs/cgroup/unified" || !f.BPFFSMounted {
		t.Errorf("mounts of pid 1 not read: %+v", f)
	}
}

func TestRelease(t *testing.T) {
	h := fixtureHost(t, "6.1.0-18-amd64", "self", nodefactstest.HybridMounts, true)
	if r, err := h.Release(); err != nil || r != "6.1.0-18-amd64" {
		t.Errorf("Release() = %q, %v", r, err)
	}
	h.Uname = func() (string, error) { return "", errors.New("boom") }
	f := h.Gather()
	if err := f.CheckKernel(); err == nil || err.Error() != "boom" {
		t.Errorf("CheckKernel with failing uname = %v", err)
	}
	h = nodefacts.Host{ProcRoot: t.TempDir()}
	if _, err := h.Release(); err == nil || !strings.Contains(err.Error(), "read kernel release") {
		t.Errorf("Release without osrelease = %v", err)
	}
}

func TestZeroFactsFail(t *testing.T) {
	var f nodefacts.Facts
	for i, err := range []error{f.CheckKernel(), f.CheckBTF(), f.CheckBPFFS(), f.CheckCgroup2()} {
		if err == nil {
			t.Errorf("check %d of empty facts passed", i)
		}
	}
}

func TestParseRelease(t *testing.T) {
	for release, want := range map[string][2]int{
		"6.18.44-fc-v669":   {6, 18},
		"5.10.0-28-amd64":   {5, 10},
		"5.4":               {5, 4},
		"6.8.0-rc3+":        {6, 8},
		"4.19.112+-android": {4, 19},
	} {
		major, minor, err := nodefacts.ParseRelease(release)
		if err != nil || major != want[0] || minor != want[1] {
			t.Errorf("nodefacts.ParseRelease(%q) = %d, %d, %v; want %v", release, major, minor, err, want)
		}
	}
	for _, bad := range []string{"", "6", "x.y", "6.x"} {
		if _, _, err := nodefacts.ParseRelease(bad); err == nil {
			t.Errorf("nodefacts.ParseRelease(%q) succeeded", bad)
		}
		if err := nodefacts.CheckRelease(bad); err == nil {
			t.Errorf("nodefacts.CheckRelease(%q) succeeded", bad)
		}
	}
	for release, ok := range map[string]bool{"5.10.0": true, "5.9.16": false, "6.0": true, "4.20": false, "10.1": true} {
		if err := nodefacts.CheckRelease(release); (err == nil) != ok {
			t.Errorf("nodefacts.CheckRelease(%q) = %v, want ok=%v", release, err, ok)
		}
	}
}
