package cri

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// capNames are the Linux capabilities by number (linux/capability.h).
var capNames = [...]string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
	"CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
	"CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
	"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
	"CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
	"CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// allCaps is every capability procri itself has (its effective set): what
// privileged containers get. A root procri in a restricted environment may
// lack some (CAP_SYS_RESOURCE in some VMs), and no process it starts can
// have more.
func allCaps() []string {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return slices.Clone(capNames[:])
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		bits, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			break
		}
		var out []string
		for i, name := range capNames {
			if bits&(1<<i) != 0 {
				out = append(out, name)
			}
		}
		return out
	}
	return slices.Clone(capNames[:])
}

// normalizeCap turns "net_admin" or "NET_ADMIN" into "CAP_NET_ADMIN";
// "ALL" stays "ALL".
func normalizeCap(name string) (string, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if n == "ALL" {
		return n, nil
	}
	if !strings.HasPrefix(n, "CAP_") {
		n = "CAP_" + n
	}
	if !slices.Contains(capNames[:], n) {
		return "", fmt.Errorf("unknown capability %q", name)
	}
	return n, nil
}

// containerCaps is a container's capability set, computed as containerd
// does: every capability when privileged; else the runtime defaults, all of
// them when add holds "ALL", none when drop holds "ALL", then each named
// add, then each named drop.
func containerCaps(sc *runtimeapi.LinuxContainerSecurityContext) ([]string, error) {
	if sc.GetPrivileged() {
		return allCaps(), nil
	}
	var add, drop []string
	for _, list := range []struct {
		names []string
		out   *[]string
	}{
		{sc.GetCapabilities().GetAddCapabilities(), &add},
		{sc.GetCapabilities().GetAddAmbientCapabilities(), &add},
		{sc.GetCapabilities().GetDropCapabilities(), &drop},
	} {
		for _, name := range list.names {
			n, err := normalizeCap(name)
			if err != nil {
				return nil, err
			}
			*list.out = append(*list.out, n)
		}
	}
	caps := slices.Clone(container.DefaultCaps())
	if slices.Contains(add, "ALL") {
		caps = allCaps()
	}
	if slices.Contains(drop, "ALL") {
		caps = nil
	}
	for _, c := range add {
		if c != "ALL" && !slices.Contains(caps, c) {
			caps = append(caps, c)
		}
	}
	caps = slices.DeleteFunc(caps, func(c string) bool { return slices.Contains(drop, c) })
	slices.Sort(caps)
	return caps, nil
}
