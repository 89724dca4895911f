package podwatch

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-mesh/sluice/internal/mountinfo"
)

const testUID = types.UID("3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b")

func TestFindProcess(t *testing.T) {
	const sysUID = "3f2a9c1e_5b7d_4e8f_9a0b_1c2d3e4f5a6b"
	type cg struct {
		v1   bool // in the v1 hierarchy rather than the v2 one
		rel  string
		pids []int
	}
	cases := []struct {
		name    string
		cgroups []cg
		want    int
		errIs   error
		errHas  string
	}{
		{"cgroupfs guaranteed", []cg{{rel: "kubepods/pod" + string(testUID) + "/c1", pids: []int{200}}}, 200, nil, ""},
		{"cgroupfs burstable", []cg{{rel: "kubepods/burstable/pod" + string(testUID) + "/c1", pids: []int{200}}}, 200, nil, ""},
		{"cgroupfs besteffort", []cg{{rel: "kubepods/besteffort/pod" + string(testUID) + "/c1", pids: []int{200}}}, 200, nil, ""},
		{"systemd guaranteed", []cg{{rel: "kubepods.slice/kubepods-pod" + sysUID + ".slice/cri-containerd-c1.scope", pids: []int{200}}}, 200, nil, ""},
		{"systemd burstable", []cg{{rel: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + sysUID + ".slice/cri-containerd-c1.scope", pids: []int{200}}}, 200, nil, ""},
		{"systemd besteffort", []cg{{rel: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + sysUID + ".slice/docker-c1.scope", pids: []int{200}}}, 200, nil, ""},
		{"processes in the pod cgroup itself and nested deeper", []cg{
			{rel: "kubepods/besteffort/pod" + string(testUID), pids: []int{300}},
			{rel: "kubepods/besteffort/pod" + string(testUID) + "/c1/sub", pids: []int{201}},
		}, 201, nil, ""},
		{"lowest pid of several containers", []cg{
			{rel: "kubepods/besteffort/pod" + string(testUID) + "/c2", pids: []int{250, 240}},
			{rel: "kubepods/besteffort/pod" + string(testUID) + "/sandbox", pids: []int{200}},
		}, 200, nil, ""},
		{"host-network processes are skipped", []cg{{rel: "kubepods/besteffort/pod" + string(testUID) + "/c1", pids: []int{100, 200}}}, 200, nil, ""},
		{"exited processes are skipped", []cg{{rel: "kubepods/besteffort/pod" + string(testUID) + "/c1", pids: []int{150, 200}}}, 200, nil, ""},
		{"v2 before v1", []cg{
			{v1: true, rel: "kubepods/besteffort/pod" + string(testUID) + "/c1", pids: []int{201}},
			{rel: "kubepods/besteffort/pod" + string(testUID) + "/c1", pids: []int{202}},
		}, 202, nil, ""},
		{"v1 when the v2 hierarchy lacks the pod", []cg{{v1: true, rel: "kubepods/besteffort/pod" + string(testUID) + "/c1", pids: []int{201}}}, 201, nil, ""},
		{"v1 when the v2 cgroup is still empty", []cg{
			{rel: "kubepods/besteffort/pod" + string(testUID) + "/c1"},
			{v1: true, rel: "kubepods/besteffort/pod" + string(testUID) + "/c1", pids: []int{201}},
		}, 201, nil, ""},
		{"another pod's cgroup", []cg{{rel: "kubepods/besteffort/pod0000-1111/c1", pids: []int{200}}}, 0, errNoProcess, "no cgroup of pod"},
		{"cgroup without processes", []cg{{rel: "kubepods/burstable/pod" + string(testUID) + "/c1"}}, 0, errNoProcess, "no process outside the host network namespace"},
		{"only host-network processes", []cg{{rel: "kubepods/burstable/pod" + string(testUID) + "/c1", pids: []int{100}}}, 0, errNoProcess, "no process outside the host network namespace"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(t)
			h.process(100, hostNetNS)
			for _, pid := range []int{200, 201, 202, 240, 250, 300} {
				h.process(pid, 4026532000)
			}
			for _, c := range tc.cgroups {
				root := h.v2
				if c.v1 {
					root = h.v1
				}
				h.cgroup(root, c.rel, c.pids...)
			}
			f := procFinder{roots: h.roots(), procRoot: h.proc}
			pid, err := f.find(testUID)
			if tc.errIs != nil {
				if !errors.Is(err, tc.errIs) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("find = %d, %v; want %v saying %q", pid, err, tc.errIs, tc.errHas)
				}
				return
			}
			if err != nil || pid != tc.want {
				t.Fatalf("find = %d, %v; want %d", pid, err, tc.want)
			}
		})
	}
}

func TestFindProcessRefusesStrangeUIDs(t *testing.T) {
	h := newFakeHost(t)
	f := procFinder{roots: h.roots(), procRoot: h.proc}
	for _, uid := range []types.UID{"", "../../etc", "a/b", "pod uid"} {
		if _, err := f.find(uid); err == nil || errors.Is(err, errNoProcess) {
			t.Errorf("find(%q) = %v, want a refusal", uid, err)
		}
	}
}

func TestCgroupRootsV2First(t *testing.T) {
	ms := []mountinfo.Mount{
		{Point: "/sys/fs/cgroup/systemd", FSType: "cgroup"},
		{Point: "/sys/fs/cgroup/memory", FSType: "cgroup"},
		{Point: "/sys/fs/bpf", FSType: "bpf"},
		{Point: "/sys/fs/cgroup/unified", FSType: "cgroup2"},
		{Point: "/sys/fs/cgroup/memory", FSType: "cgroup"},
	}
	want := []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/memory"}
	if got := cgroupRoots(ms); !reflect.DeepEqual(got, want) {
		t.Errorf("cgroupRoots = %v, want %v", got, want)
	}
	if got := cgroupRoots([]mountinfo.Mount{{Point: "/sys/fs/cgroup", FSType: "cgroup2"}}); !reflect.DeepEqual(got, []string{"/sys/fs/cgroup"}) {
		t.Errorf("unified host: cgroupRoots = %v", got)
	}
}
