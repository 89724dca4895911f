package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
)

// podsCgroup is the kubelet's cgroup of all pods (cgroupRoot "/",
// cgroupsPerQOS), in every hierarchy.
const podsCgroup = "/kubepods"

// daemonPrograms are the programs the cluster runs as daemons, in the
// order they are stopped: a process of one of these with the state root in
// its command line is the cluster's, pid file or not.
var daemonPrograms = []string{"kube-proxy", "kubelet", "procri", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"}

// stopOrder stops the node daemons before the control plane, and the
// kubelet before the runtime (so it does not restart what the runtime
// stops).
func stopOrder(nodes []node) []string {
	var names []string
	for _, n := range nodes {
		names = append(names, "kube-proxy"+n.suffix(), "kubelet"+n.suffix())
	}
	for _, n := range nodes {
		names = append(names, "procri"+n.suffix())
	}
	return append(names, "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
}

// Down stops the cluster and removes everything it left on the machine:
// its daemons (SIGTERM from their pid files, SIGKILL after a grace period),
// the pods (through the runtime while it runs, then every process left in
// the kubepods cgroups), mounts under the state root, kube-proxy's and the
// CNI plugins' iptables chains, the bridge and the node's dummy link, the
// kubepods cgroups in every hierarchy, /var/log/containers links into the
// state root, and the state root itself. It also puts back the kernel
// settings the kubelet changed, and the files the kubelet writes outside
// its root directory (its device plugin socket). Down works from what is on the machine, so
// it cleans up after a crash as well, and a second Down does nothing.
// While another cluster's node (a kubelet, procri or kube-proxy of another
// state root) runs, Down leaves the machine-wide part (pods, iptables
// chains, links, kubepods cgroups, kernel settings) to it and says so.
func Down(ctx context.Context, cfg Config) error {
	l := layout{dir: cfg.dir()}
	log := cfg.log()
	out := cfg.out()
	nodes := clusterNodes()
	ds := daemons{l: l, log: log}
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
			log.Warn("down", "err", err)
		}
	}
	step := func(what string, f func()) {
		start := time.Now()
		f()
		fmt.Fprintf(out, "%s (%.1fs)\n", what, time.Since(start).Seconds())
	}

	step("stopped daemons", func() {
		order := stopOrder(nodes)
		for _, name := range order {
			if strings.HasPrefix(name, "procri") {
				// The kubelet is stopped: stop the pods through the runtime,
				// which tears their networks down properly.
				for _, n := range nodes {
					if "procri"+n.suffix() == name {
						note(stopPods(ctx, l.node(n).socket))
					}
				}
			}
			note(ds.stop(ctx, name, 15*time.Second))
		}
		note(killStrays(ctx, l, log))
	})
	// Pods, chains, links and cgroups are the machine's, not the state
	// root's: another cluster's node (another state root) running now owns
	// them.
	foreign, err := foreign(l.dir, nodePrograms)
	note(err)
	if len(foreign) > 0 {
		fmt.Fprintf(out, "another cluster's node runs: its pods, iptables chains, links and cgroups stay:\n  %s\n", strings.Join(foreign, "\n  "))
	} else {
		step("removed pods", func() {
			note(killPods(ctx, log))
			note(unmountUnder(l.dir))
		})
		step("removed network", func() {
			note(kubeProxyCleanup(ctx, cfg.Cache))
			note(sweepIptables())
			for _, n := range nodes {
				note(deleteLink(n.bridge))
				note(deleteLink(n.name))
			}
		})
	}
	step("removed cgroups and files", func() {
		note(removeContainerLogLinks(l.dir)) // before their directory goes
		if len(foreign) == 0 {
			if m, err := cgroup.New(log); err != nil {
				note(err)
			} else {
				note(m.Remove(podsCgroup))
			}
			note(removeKubeletHostFiles())
			note(restoreKernelSettings(l))
		}
		if err := unmountUnder(l.dir); err != nil {
			note(err)
		} else if err := os.RemoveAll(l.dir); err != nil {
			note(fmt.Errorf("remove %s: %w", l.dir, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cluster down: %w", err)
	}
	return nil
}

// stopPods stops and removes every pod sandbox through the runtime at
// socket, if it answers; the sweep that follows catches the rest.
func stopPods(ctx context.Context, socket string) error {
	if _, err := os.Stat(socket); err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	vctx, vcancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = rs.Version(vctx, &runtimeapi.VersionRequest{})
	vcancel()
	if err != nil {
		return nil // not running: nothing to ask
	}
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, sb := range list.Items {
		if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod sandbox %s (%s/%s): %w", sb.Id, sb.Metadata.GetNamespace(), sb.Metadata.GetName(), err))
			continue
		}
		if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod sandbox %s: %w", sb.Id, err))
		}
	}
	return errors.Join(errs...)
}

// daemonProc is a running process of one of daemonPrograms.
type daemonProc struct {
	pid  int
	args []string
	// rank is the program's index in daemonPrograms.
	rank int
}

// uses reports whether the process's arguments name a path under dir.
func (p daemonProc) uses(dir string) bool {
	return slices.ContainsFunc(p.args[1:], func(a string) bool {
		return strings.Contains(a, "="+dir+"/") || strings.HasPrefix(a, dir+"/") || strings.HasSuffix(a, "="+dir)
	})
}

// daemonProcs lists the processes of daemonPrograms, in daemonPrograms'
// order.
func daemonProcs() ([]daemonProc, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []daemonProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if r := slices.Index(daemonPrograms, filepath.Base(args[0])); r >= 0 {
			out = append(out, daemonProc{pid: pid, args: args, rank: r})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].rank < out[j].rank })
	return out, nil
}

// strays lists the cluster's daemon processes: a daemon program with the
// state root in its arguments, in daemonPrograms' order (the API server
// stops promptly only while etcd runs).
func strays(dir string) ([]int, error) {
	procs, err := daemonProcs()
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		if p.uses(dir) {
			pids = append(pids, p.pid)
		}
	}
	return pids, nil
}

// nodePrograms own machine-wide state: the pods in the kubepods cgroups,
// KUBE-* chains, the bridge and the node link.
var nodePrograms = []string{"kube-proxy", "kubelet", "procri"}

// foreign describes the processes of programs running that are not the
// cluster's at dir: another cluster's (another state root). Down leaves
// the machine-wide state of another cluster's node programs (pods,
// chains, links, cgroups) alone; Up does not start beside one.
func foreign(dir string, programs []string) ([]string, error) {
	procs, err := daemonProcs()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range procs {
		if slices.Contains(programs, filepath.Base(p.args[0])) && !p.uses(dir) {
			cmd := strings.Join(p.args, " ")
			if len(cmd) > 160 {
				cmd = cmd[:160] + "…"
			}
			out = append(out, fmt.Sprintf("process %d: %s", p.pid, cmd))
		}
	}
	return out, nil
}

// killStrays kills the cluster's daemons that no pid file records (a
// crash, a removed run directory).
func killStrays(ctx context.Context, l layout, log *slog.Logger) error {
	pids, err := strays(l.dir)
	if err != nil {
		return err
	}
	ds := daemons{l: l, log: log}
	var errs []error
	for _, pid := range pids {
		if slices.ContainsFunc(stopOrder(clusterNodes()), func(name string) bool {
			st, ok := ds.running(name)
			return ok && st.PID == pid
		}) {
			continue
		}
		start, _, err := procStat(pid)
		if err != nil {
			continue
		}
		begin := time.Now()
		errs = append(errs, killWait(ctx, pid, start, 5*time.Second))
		log.Info("stopped a daemon without pid file", "pid", pid, "took", time.Since(begin))
	}
	return errors.Join(errs...)
}

// killPods kills every process in the kubepods cgroups (in every
// hierarchy: containers, sandbox holders, exec'd commands).
func killPods(ctx context.Context, log *slog.Logger) error {
	m, err := cgroup.New(log)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.Kill(ctx, podsCgroup); err != nil {
		return fmt.Errorf("kill pod processes: %w", err)
	}
	return nil
}

// mountsUnder lists mount points under dir (or dir itself), deepest first.
func mountsUnder(dir string) ([]string, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var points []string
	for _, m := range infos {
		points = append(points, m.Mountpoint)
	}
	sort.Slice(points, func(i, j int) bool {
		if a, b := strings.Count(points[i], "/"), strings.Count(points[j], "/"); a != b {
			return a > b
		}
		return points[i] > points[j]
	})
	return slices.Compact(points), nil
}

// unmountUnder detaches every mount under dir (the kubelet's secret and
// projected volumes, namespace files), deepest first.
func unmountUnder(dir string) error {
	points, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// kubeProxyCleanup runs `kube-proxy --cleanup`, which removes the rules and
// chains of every proxy mode it knows, when kube-proxy is built.
func kubeProxyCleanup(ctx context.Context, cache build.Cache) error {
	dir := cache.Dir
	if dir == "" {
		dir = build.DefaultDir()
	}
	path := filepath.Join(dir, "kubernetes-"+build.KubernetesVersion, "kube-proxy")
	if _, err := os.Stat(path); err != nil {
		return nil // never built: the sweep does it
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// It reports errors for modes this machine lacks (nftables without the
	// nft program); the iptables sweep after it checks the outcome.
	exec.CommandContext(ctx, path, "--cleanup").Run() //nolint:errcheck
	return nil
}

// containerLogLinks lists the kubelet's links in /var/log/containers that
// point into dir.
func containerLogLinks(dir string) ([]string, error) {
	entries, err := os.ReadDir("/var/log/containers")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list /var/log/containers: %w", err)
	}
	var out []string
	for _, e := range entries {
		p := filepath.Join("/var/log/containers", e.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			out = append(out, p)
		}
	}
	return out, nil
}

// The kubelet writes outside its root directory: the device plugin
// registration socket (a constant path) and /var/log/containers. Down
// removes the socket, then these directories when they are empty.
var (
	kubeletHostFiles = []string{"/var/lib/kubelet/device-plugins/kubelet.sock"}
	kubeletHostDirs  = []string{"/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/containers"}
)

// kubeletHostLeftovers lists the files of kubeletHostFiles that exist and
// the directories of kubeletHostDirs that are empty.
func kubeletHostLeftovers() []string {
	var out []string
	for _, f := range kubeletHostFiles {
		if _, err := os.Lstat(f); err == nil {
			out = append(out, "file "+f)
		}
	}
	for _, d := range kubeletHostDirs {
		if entries, err := os.ReadDir(d); err == nil && len(entries) == 0 {
			out = append(out, "dir "+d)
		}
	}
	return out
}

// removeKubeletHostFiles removes kubeletHostFiles, then kubeletHostDirs
// that are empty.
func removeKubeletHostFiles() error {
	var errs []error
	for _, f := range kubeletHostFiles {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", f, err))
		}
	}
	for _, d := range kubeletHostDirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

func removeContainerLogLinks(dir string) error {
	links, err := containerLogLinks(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range links {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupDirs lists podsCgroup's directory in every cgroup hierarchy where
// it exists.
func cgroupDirs() ([]string, error) {
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup" && m.FSType != "cgroup2", false
	})
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var out []string
	for _, m := range infos {
		d := filepath.Join(m.Mountpoint, podsCgroup)
		if _, err := os.Stat(d); err == nil {
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return slices.Compact(out), nil
}

// Leftovers lists what Down removes and is still on the machine, one
// string each: "process 123 (kubelet)", "mount /var/lib/...", "iptables
// chain KUBE-SERVICES (table nat)", "link sluice0", "cgroup
// /sys/fs/cgroup/cpu/kubepods", "log link /var/log/containers/...", "file
// /var/lib/kubelet/device-plugins/kubelet.sock", "dir
// /var/lib/sluice-cluster". Empty after a successful Down. While another
// cluster's node runs, the machine-wide part (pods, chains, links,
// cgroups) is its, and not listed.
func Leftovers(cfg Config) ([]string, error) {
	l := layout{dir: cfg.dir()}
	nodes := clusterNodes()
	var out []string
	var errs []error
	add := func(items []string, err error) {
		out = append(out, items...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	comm := func(pid int) string {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return strings.TrimSpace(string(data))
	}
	ds := daemons{l: l, log: cfg.log()}
	for _, name := range stopOrder(nodes) {
		if st, ok := ds.running(name); ok {
			out = append(out, fmt.Sprintf("process %d (%s, pid file %s)", st.PID, comm(st.PID), name))
		}
	}
	pids, err := strays(l.dir)
	for _, pid := range pids {
		out = append(out, fmt.Sprintf("process %d (%s)", pid, comm(pid)))
	}
	add(nil, err)
	add(prefixed("mount ")(mountsUnder(l.dir)))
	add(prefixed("log link ")(containerLogLinks(l.dir)))
	// The machine-wide part is another cluster's while its node runs.
	foreign, err := foreign(l.dir, nodePrograms)
	add(nil, err)
	if len(foreign) == 0 {
		if m, err := cgroup.New(cfg.log()); err != nil {
			add(nil, err)
		} else if pids, err := m.Pids(podsCgroup); err != nil && !errors.Is(err, os.ErrNotExist) {
			add(nil, err)
		} else {
			for _, pid := range pids {
				out = append(out, fmt.Sprintf("process %d (%s, in %s)", pid, comm(pid), podsCgroup))
			}
		}
		add(iptablesLeftovers())
		for _, n := range nodes {
			for _, link := range []string{n.bridge, n.name} {
				if linkExists(link) {
					out = append(out, "link "+link)
				}
			}
		}
		add(prefixed("cgroup ")(cgroupDirs()))
		out = append(out, kubeletHostLeftovers()...)
	}
	if _, err := os.Lstat(l.dir); err == nil {
		out = append(out, "dir "+l.dir)
	}
	return out, errors.Join(errs...)
}

// prefixed returns a function that prefixes each of a list's items.
func prefixed(prefix string) func([]string, error) ([]string, error) {
	return func(items []string, err error) ([]string, error) {
		out := make([]string, len(items))
		for i, it := range items {
			out[i] = prefix + it
		}
		return out, err
	}
}
