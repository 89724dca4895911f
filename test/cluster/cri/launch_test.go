package cri

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

func TestContainerCaps(t *testing.T) {
	defaults := container.DefaultCaps()
	without := func(drop ...string) []string {
		return slices.DeleteFunc(slices.Clone(defaults), func(c string) bool { return slices.Contains(drop, c) })
	}
	withCaps := func(add ...string) []string {
		out := slices.Clone(defaults)
		for _, c := range add {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
		return out
	}
	sc := func(add, drop []string) *runtimeapi.LinuxContainerSecurityContext {
		return &runtimeapi.LinuxContainerSecurityContext{Capabilities: &runtimeapi.Capability{AddCapabilities: add, DropCapabilities: drop}}
	}
	all := allCaps()
	for _, tc := range []struct {
		name string
		sc   *runtimeapi.LinuxContainerSecurityContext
		want []string
	}{
		{"defaults", nil, defaults},
		{"add", sc([]string{"NET_ADMIN", "cap_sys_admin"}, nil), withCaps("CAP_NET_ADMIN", "CAP_SYS_ADMIN")},
		{"drop", sc(nil, []string{"CHOWN", "CAP_KILL"}), without("CAP_CHOWN", "CAP_KILL")},
		{"drop all add one", sc([]string{"NET_BIND_SERVICE"}, []string{"ALL"}), []string{"CAP_NET_BIND_SERVICE"}},
		{"drop all", sc(nil, []string{"ALL"}), nil},
		{"add all drop one", sc([]string{"ALL"}, []string{"SYS_ADMIN"}), slices.DeleteFunc(slices.Clone(all), func(c string) bool { return c == "CAP_SYS_ADMIN" })},
		{"privileged", &runtimeapi.LinuxContainerSecurityContext{Privileged: true, Capabilities: &runtimeapi.Capability{DropCapabilities: []string{"ALL"}}}, all},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := containerCaps(tc.sc)
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Clone(tc.want)
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("caps = %v\nwant %v", got, want)
			}
		})
	}
	if _, err := containerCaps(sc([]string{"FLY"}, nil)); err == nil || !strings.Contains(err.Error(), "FLY") {
		t.Errorf("unknown capability: %v", err)
	}
	if len(all) < 38 || all[0] != "CAP_CHOWN" {
		t.Errorf("allCaps = %v", all)
	}
}

func TestCommandLine(t *testing.T) {
	img := image{entry: tableEntry{ImageEntry: ImageEntry{Program: "/usr/bin/app", Args: []string{"--default"}}}}
	for _, tc := range []struct {
		name          string
		command, args []string
		want          []string
	}{
		{"image defaults", nil, nil, []string{"/usr/bin/app", "--default"}},
		{"args replace the image args", nil, []string{"--x"}, []string{"/usr/bin/app", "--x"}},
		{"command replaces program and args", []string{"sh", "-c"}, nil, []string{"sh", "-c"}},
		{"command and args", []string{"sh", "-c"}, []string{"echo hi"}, []string{"sh", "-c", "echo hi"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := commandLine(&runtimeapi.ContainerConfig{Command: tc.command, Args: tc.args}, img)
			if !slices.Equal(got, tc.want) {
				t.Errorf("commandLine = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"A=1", "B=2", "PATH=/img"}, []string{"B=3", "C=4", "A=5"})
	want := []string{"A=5", "B=3", "PATH=/img", "C=4"}
	if !slices.Equal(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
}

func TestContainerUser(t *testing.T) {
	withUser := image{entry: tableEntry{uid: 1000, gid: 2000, hasUser: true}}
	noUser := image{}
	i64 := func(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }
	for _, tc := range []struct {
		name     string
		sc       *runtimeapi.LinuxContainerSecurityContext
		img      image
		uid, gid uint32
		groups   []uint32
	}{
		{"root by default", nil, noUser, 0, 0, nil},
		{"image user", nil, withUser, 1000, 2000, nil},
		{"runAsUser over the image's", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(7)}, withUser, 7, 0, nil},
		{"runAsUser same as the image's keeps its group", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(1000)}, withUser, 1000, 2000, nil},
		{"runAsUser and group", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(7), RunAsGroup: i64(8)}, noUser, 7, 8, nil},
		{"supplemental groups", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: i64(7), SupplementalGroups: []int64{3, 4, 3}}, noUser, 7, 0, []uint32{3, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid, gid, groups := containerUser(tc.sc, tc.img)
			if uid != tc.uid || gid != tc.gid || !slices.Equal(groups, tc.groups) {
				t.Errorf("user = %d:%d %v, want %d:%d %v", uid, gid, groups, tc.uid, tc.gid, tc.groups)
			}
		})
	}
}

func TestValidateContainer(t *testing.T) {
	sbCfg := &runtimeapi.PodSandboxConfig{}
	base := func() *runtimeapi.ContainerConfig {
		return &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: "sluice.test/app:v1"},
			Linux: &runtimeapi.LinuxContainerConfig{
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
					MaskedPaths:      []string{"/proc/kcore"},
					NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
				},
				Resources: &runtimeapi.LinuxContainerResources{
					HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "2MB", Limit: 0}},
				},
			},
		}
	}
	if err := validateContainer(base(), sbCfg); err != nil {
		t.Fatalf("a config as the kubelet sends it: %v", err)
	}
	for _, tc := range []struct {
		name   string
		modify func(c *runtimeapi.ContainerConfig)
		want   string
	}{
		{"devices", func(c *runtimeapi.ContainerConfig) {
			c.Devices = []*runtimeapi.Device{{HostPath: "/dev/fuse", ContainerPath: "/dev/fuse"}}
		}, "devices are not supported"},
		{"pid target", func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_TARGET
		}, "PID namespace mode TARGET"},
		{"run as username", func(c *runtimeapi.ContainerConfig) { c.Linux.SecurityContext.RunAsUsername = "nginx" }, "runAsUsername"},
		{"windows", func(c *runtimeapi.ContainerConfig) { c.Windows = &runtimeapi.WindowsContainerConfig{} }, "Windows"},
		{"tty", func(c *runtimeapi.ContainerConfig) { c.Tty = true }, "stdin and tty"},
		{"image volume", func(c *runtimeapi.ContainerConfig) {
			c.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", Image: &runtimeapi.ImageSpec{Image: "x"}}}
		}, "image volume"},
		{"seccomp localhost", func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/p.json"}
		}, "seccomp profile /p.json"},
		{"hugepages", func(c *runtimeapi.ContainerConfig) { c.Linux.Resources.HugepageLimits[0].Limit = 1 << 21 }, "hugepage limit 2MB"},
		{"group without user", func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.RunAsGroup = &runtimeapi.Int64Value{Value: 1}
		}, "runAsGroup is set without runAsUser"},
		{"host network in a pod network", func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
		}, "network namespace mode NODE differs"},
		{"unknown capability", func(c *runtimeapi.ContainerConfig) {
			c.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"FLY"}}
		}, `unknown capability "FLY"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.modify(c)
			err := validateContainer(c, sbCfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validateContainer = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestContainerMounts(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.ContainerConfig{Mounts: []*runtimeapi.Mount{
		{HostPath: link, ContainerPath: "/data/", Readonly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER},
		{HostPath: real, ContainerPath: "/etc/hostname"},
	}}
	got, err := containerMounts(cfg, "/sb", true)
	if err != nil {
		t.Fatal(err)
	}
	want := []container.Mount{
		{Source: "/sb/resolv.conf", Target: "/etc/resolv.conf", ReadOnly: true},
		{Source: real, Target: "/data", ReadOnly: true, Propagation: container.HostToContainer},
		{Source: real, Target: "/etc/hostname"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("mounts = %+v\nwant %+v", got, want)
	}
	cfg.Mounts[0].HostPath = filepath.Join(dir, "missing")
	if _, err := containerMounts(cfg, "/sb", false); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing host path: %v", err)
	}
}

func TestResolvConf(t *testing.T) {
	got, err := resolvConf(&runtimeapi.DNSConfig{
		Servers:  []string{"10.96.0.10", "fd00::a"},
		Searches: []string{"default.svc.cluster.local", "svc.cluster.local"},
		Options:  []string{"ndots:5"},
	})
	want := "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"
	if err != nil || string(got) != want {
		t.Errorf("resolvConf = %q, %v; want %q", got, err, want)
	}
	host, _ := os.ReadFile("/etc/resolv.conf")
	if got, err := resolvConf(nil); err != nil || string(got) != string(host) {
		t.Errorf("resolvConf(nil) = %q, %v; want the host's", got, err)
	}
}

func TestStopSignal(t *testing.T) {
	for _, tc := range []struct {
		in   runtimeapi.Signal
		want unix.Signal
	}{
		{runtimeapi.Signal_RUNTIME_DEFAULT, unix.SIGTERM},
		{runtimeapi.Signal_SIGQUIT, unix.SIGQUIT},
		{runtimeapi.Signal_SIGUSR1, unix.SIGUSR1},
	} {
		if got, err := stopSignal(tc.in); err != nil || got != tc.want {
			t.Errorf("stopSignal(%s) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestSysctlNamespace(t *testing.T) {
	for name, want := range map[string]int{
		"net.ipv4.ip_unprivileged_port_start": unix.CLONE_NEWNET,
		"net/ipv4/tcp_syncookies":             unix.CLONE_NEWNET,
		"kernel.shm_rmid_forced":              unix.CLONE_NEWIPC,
		"fs.mqueue.msg_max":                   unix.CLONE_NEWIPC,
	} {
		if got, err := sysctlNamespace(name); err != nil || got != want {
			t.Errorf("sysctlNamespace(%s) = %v, %v", name, got, err)
		}
	}
	if _, err := sysctlNamespace("vm.swappiness"); err == nil {
		t.Error("vm.swappiness accepted")
	}
	if got := sysctlPath("net.ipv4.ping_group_range"); got != "/proc/sys/net/ipv4/ping_group_range" {
		t.Errorf("sysctlPath = %s", got)
	}
}

func TestFilters(t *testing.T) {
	labels := map[string]string{"app": "echo", "tier": "web"}
	for _, tc := range []struct {
		sel  map[string]string
		want bool
	}{
		{nil, true},
		{map[string]string{"app": "echo"}, true},
		{map[string]string{"app": "echo", "tier": "web"}, true},
		{map[string]string{"app": "other"}, false},
		{map[string]string{"missing": ""}, false},
	} {
		if got := matchLabels(labels, tc.sel); got != tc.want {
			t.Errorf("matchLabels(%v) = %v", tc.sel, got)
		}
	}
	for _, tc := range []struct {
		id, filter string
		want       bool
	}{
		{"abcdef", "", true},
		{"abcdef", "abc", true},
		{"abcdef", "abcdef", true},
		{"abcdef", "abd", false},
		{"abc", "abcdef", false},
	} {
		if got := matchID(tc.id, tc.filter); got != tc.want {
			t.Errorf("matchID(%q, %q) = %v", tc.id, tc.filter, got)
		}
	}
}

func TestProcStartTime(t *testing.T) {
	start, ok := procStartTime(os.Getpid())
	if !ok || start == 0 {
		t.Fatalf("procStartTime(self) = %d, %v", start, ok)
	}
	if !sameProcess(os.Getpid(), start) || sameProcess(os.Getpid(), start+1) {
		t.Error("sameProcess does not tell the start times apart")
	}
	if _, ok := procStartTime(1 << 30); ok {
		t.Error("procStartTime of a pid that cannot exist")
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rec.json")
	if err := writeJSON(p, map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(p, map[string]int{"a": 2}); err != nil {
		t.Fatal(err)
	}
	var got map[string]int
	if err := readJSON(p, &got); err != nil || got["a"] != 2 {
		t.Fatalf("readJSON = %v, %v", got, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}
