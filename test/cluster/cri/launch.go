package cri

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// validateContainer rejects what procri cannot do for a container, saying
// exactly what it is; the kubelet turns the error into a pod event.
func validateContainer(cfg *runtimeapi.ContainerConfig, sbCfg *runtimeapi.PodSandboxConfig) error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if cfg.GetMetadata().GetName() == "" {
		add("the container config has no name")
	}
	if cfg.GetImage().GetImage() == "" {
		add("the container config has no image")
	}
	if len(cfg.GetDevices()) > 0 {
		add("devices are not supported: procri does not pass host devices into containers (%d requested)", len(cfg.GetDevices()))
	}
	if len(cfg.GetCDIDevices()) > 0 {
		add("CDI devices are not supported by procri (%d requested)", len(cfg.GetCDIDevices()))
	}
	if cfg.GetWindows() != nil {
		add("procri runs Linux processes only: the container has a Windows config")
	}
	if cfg.GetStdin() || cfg.GetTty() {
		add("stdin and tty are not supported: procri has no attach (streaming) server")
	}
	for _, m := range cfg.GetMounts() {
		switch {
		case m.GetImage() != nil:
			add("image volume %s at %s is not supported: procri images are programs, they have no contents to mount", m.GetImage().GetImage(), m.GetContainerPath())
		case len(m.GetUidMappings()) > 0 || len(m.GetGidMappings()) > 0:
			add("id-mapped mount at %s is not supported: procri has no user namespaces", m.GetContainerPath())
		case m.GetRecursiveReadOnly():
			add("recursive read-only mount at %s is not supported by procri", m.GetContainerPath())
		case !filepath.IsAbs(m.GetContainerPath()):
			add("mount container path %q is not absolute", m.GetContainerPath())
		}
	}
	sc := cfg.GetLinux().GetSecurityContext()
	if sc.GetRunAsUsername() != "" {
		add("runAsUsername %q is not supported: procri has no image /etc/passwd to look user names up in; use a numeric runAsUser", sc.GetRunAsUsername())
	}
	if sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil {
		add("runAsGroup is set without runAsUser")
	}
	if se := sc.GetSelinuxOptions(); se.GetUser() != "" || se.GetRole() != "" || se.GetType() != "" || se.GetLevel() != "" {
		add("SELinux options are not supported: procri applies no SELinux labels")
	}
	if p := sc.GetSeccomp(); p.GetProfileType() == runtimeapi.SecurityProfile_Localhost {
		add("seccomp profile %s is not supported: procri applies no seccomp filters", p.GetLocalhostRef())
	}
	if p := sc.GetApparmor(); p.GetProfileType() == runtimeapi.SecurityProfile_Localhost {
		add("AppArmor profile %s is not supported: procri applies no AppArmor profiles", p.GetLocalhostRef())
	}
	if ns := sc.GetNamespaceOptions(); ns != nil {
		if ns.GetPid() == runtimeapi.NamespaceMode_TARGET {
			add("PID namespace mode TARGET (an ephemeral container sharing a container's processes) is not supported: procri has no PID namespaces")
		}
		sbNS := namespaceOptions(sbCfg)
		if ns.GetNetwork() != sbNS.GetNetwork() {
			add("the container's network namespace mode %s differs from its pod's %s: procri runs containers in their pod's network namespace", ns.GetNetwork(), sbNS.GetNetwork())
		}
		if ns.GetIpc() != sbNS.GetIpc() {
			add("the container's IPC namespace mode %s differs from its pod's %s: procri runs containers in their pod's IPC namespace", ns.GetIpc(), sbNS.GetIpc())
		}
	}
	if _, err := containerCaps(sc); err != nil {
		errs = append(errs, err)
	}
	res := cfg.GetLinux().GetResources()
	for _, h := range res.GetHugepageLimits() {
		if h.GetLimit() > 0 {
			add("hugepage limit %s=%d is not supported by procri", h.GetPageSize(), h.GetLimit())
		}
	}
	if len(res.GetUnified()) > 0 {
		add("unified (cgroup v2) resources %v are not supported: procri applies cpu, memory and cpuset limits", res.GetUnified())
	}
	if _, err := stopSignal(cfg.GetStopSignal()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stopSignal maps a CRI stop signal to the signal; the default is SIGTERM.
func stopSignal(sig runtimeapi.Signal) (unix.Signal, error) {
	if sig == runtimeapi.Signal_RUNTIME_DEFAULT {
		return unix.SIGTERM, nil
	}
	if n := unix.SignalNum(sig.String()); n != 0 {
		return n, nil
	}
	return 0, fmt.Errorf("stop signal %s is not supported by procri", sig)
}

// mergeEnv returns base with over applied: a key of over replaces base's
// value in place, new keys are appended in order.
func mergeEnv(base, over []string) []string {
	out := slices.Clone(base)
	index := map[string]int{}
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		index[k] = i
	}
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := index[k]; ok {
			out[i] = kv
			continue
		}
		index[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// commandLine applies Docker's rules: the container's command (Kubernetes
// "command") replaces the image's program and its default args; the
// container's args (Kubernetes "args") replace the image's default args.
func commandLine(cfg *runtimeapi.ContainerConfig, img image) []string {
	if len(cfg.GetCommand()) > 0 {
		return slices.Concat(cfg.GetCommand(), cfg.GetArgs())
	}
	if len(cfg.GetArgs()) > 0 {
		return slices.Concat([]string{img.entry.Program}, cfg.GetArgs())
	}
	return slices.Concat([]string{img.entry.Program}, img.entry.Args)
}

// containerUser is the container's uid, gid and supplementary groups: the
// security context's, else the image's user, else root. A runAsUser
// without runAsGroup runs with the image's group when the image's user is
// the same uid, else group 0 (as Docker does for a uid the image does not
// know).
func containerUser(sc *runtimeapi.LinuxContainerSecurityContext, img image) (uid, gid uint32, groups []uint32) {
	if img.entry.hasUser {
		uid, gid = img.entry.uid, img.entry.gid
	}
	if u := sc.GetRunAsUser(); u != nil {
		if !img.entry.hasUser || uint32(u.GetValue()) != img.entry.uid {
			gid = 0
		}
		uid = uint32(u.GetValue())
	}
	if g := sc.GetRunAsGroup(); g != nil {
		gid = uint32(g.GetValue())
	}
	for _, g := range sc.GetSupplementalGroups() {
		if !slices.Contains(groups, uint32(g)) {
			groups = append(groups, uint32(g))
		}
	}
	return uid, gid, groups
}

// propagation maps the CRI mount propagation.
func propagation(p runtimeapi.MountPropagation) container.Propagation {
	switch p {
	case runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
		return container.HostToContainer
	case runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL:
		return container.Bidirectional
	}
	return container.Private
}

// containerMounts are the kubelet's mounts (host paths resolved through
// symlinks, which must exist) plus the sandbox's /etc/resolv.conf and
// /etc/hostname unless the kubelet mounts those paths itself.
func containerMounts(cfg *runtimeapi.ContainerConfig, sandboxDir string, readOnlyRoot bool) ([]container.Mount, error) {
	var mounts []container.Mount
	targets := map[string]bool{}
	for _, m := range cfg.GetMounts() {
		src, err := filepath.EvalSymlinks(m.GetHostPath())
		if err != nil {
			return nil, fmt.Errorf("mount %s at %s: the host path cannot be used: %w", m.GetHostPath(), m.GetContainerPath(), err)
		}
		target := filepath.Clean(m.GetContainerPath())
		targets[target] = true
		mounts = append(mounts, container.Mount{
			Source:      src,
			Target:      target,
			ReadOnly:    m.GetReadonly(),
			Propagation: propagation(m.GetPropagation()),
		})
	}
	var own []container.Mount
	for _, f := range []string{"resolv.conf", "hostname"} {
		target := "/etc/" + f
		if targets[target] {
			continue
		}
		own = append(own, container.Mount{Source: filepath.Join(sandboxDir, f), Target: target, ReadOnly: readOnlyRoot})
	}
	return append(own, mounts...), nil
}

// containerLaunch computes how a container runs from its config, its
// sandbox's and its image.
func containerLaunch(cfg *runtimeapi.ContainerConfig, sbCfg *runtimeapi.PodSandboxConfig, sandboxDir string, img image) (launch, error) {
	sc := cfg.GetLinux().GetSecurityContext()
	caps, err := containerCaps(sc)
	if err != nil {
		return launch{}, err
	}
	sig, err := stopSignal(cfg.GetStopSignal())
	if err != nil {
		return launch{}, err
	}
	mounts, err := containerMounts(cfg, sandboxDir, sc.GetReadonlyRootfs())
	if err != nil {
		return launch{}, err
	}
	var env []string
	for _, kv := range cfg.GetEnvs() {
		env = append(env, kv.GetKey()+"="+kv.GetValue())
	}
	env = mergeEnv(img.entry.Env, env)
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "HOSTNAME=") }) {
		hostname := sbCfg.GetHostname()
		if hostname == "" {
			hostname, _ = os.Hostname()
		}
		env = append(env, "HOSTNAME="+hostname)
	}
	dir := cfg.GetWorkingDir()
	if dir == "" {
		dir = img.entry.WorkingDir
	}
	if dir == "" {
		dir = "/"
	}
	uid, gid, groups := containerUser(sc, img)
	return launch{
		Args:         commandLine(cfg, img),
		Env:          env,
		Dir:          dir,
		UID:          uid,
		GID:          gid,
		Groups:       groups,
		Caps:         caps,
		NoNewPrivs:   sc.GetNoNewPrivs(),
		ReadOnlyRoot: sc.GetReadonlyRootfs(),
		OOMScoreAdj:  int(cfg.GetLinux().GetResources().GetOomScoreAdj()),
		Mounts:       mounts,
		StopSignal:   int(sig),
	}, nil
}

// cgroupResources maps the CRI resources to the cgroup limits.
func cgroupResources(r *runtimeapi.LinuxContainerResources) cgroup.Resources {
	return cgroup.Resources{
		CPUShares:   r.GetCpuShares(),
		CPUQuota:    r.GetCpuQuota(),
		CPUPeriod:   r.GetCpuPeriod(),
		MemoryLimit: r.GetMemoryLimitInBytes(),
		CpusetCpus:  r.GetCpusetCpus(),
		CpusetMems:  r.GetCpusetMems(),
	}
}
