// Package cgroup manages the cgroups of the process container runtime's pods
// and containers on hybrid (cgroup v1 controllers plus the v2 unified
// hierarchy), pure v1 and pure v2 machines.
//
// Paths are the kubelet's cgroupfs-driver paths, such as
// "/kubepods/besteffort/pod<uid>/<id>", relative to each hierarchy's
// mountpoint (as the kubelet's own cgroup manager resolves them). Every
// process the runtime starts goes into its path in every v1 hierarchy
// (including named ones such as name=systemd) and in the v2 hierarchy: on a
// hybrid machine the kubelet creates its cgroups in the v1 hierarchies only,
// so this package creates the whole path in v2 itself (the Sluice agent
// attaches eBPF programs to v2 cgroups and finds pods there).
//
// Limits go where the machine's controllers are: the v1 hierarchies on
// hybrid and v1 machines, the unified hierarchy on v2 machines. The
// resource files are written with github.com/opencontainers/cgroups (the
// library the kubelet uses), per directory, since its managers do not
// handle a hybrid layout with the unified hierarchy at a non-default place.
package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/cgroups"
	cgroupsfs "github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
	"github.com/opencontainers/cgroups/fscommon"
	"golang.org/x/sys/unix"
)

// Manager creates, fills, limits, kills and removes cgroups in every
// hierarchy of the machine. It keeps no state besides the layout, so
// several Managers (or processes) may work on the same cgroups.
type Manager struct {
	log    *slog.Logger
	layout layout
}

// New detects the machine's cgroup hierarchies from /proc/self/mountinfo.
// log may be nil.
func New(log *slog.Logger) (*Manager, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("open mountinfo: %w", err)
	}
	defer f.Close()
	l, err := parseLayout(f)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{log: log.With("component", "cgroup"), layout: l}
	m.log.Debug("cgroup hierarchies", "mode", l.mode(), "v1", len(l.v1), "v2", l.v2)
	return m, nil
}

// Resources are the limits of a cgroup, in the kubelet's (CRI's) terms; a
// zero field is left as it is. -1 means unlimited for CPUQuota,
// MemoryLimit and PidsLimit. On a v2 machine CPUShares becomes cpu.weight
// (with the kubelet's conversion), CPUQuota and CPUPeriod cpu.max.
type Resources struct {
	CPUShares, CPUQuota, CPUPeriod, MemoryLimit, PidsLimit int64
	CpusetCpus, CpusetMems                                 string
}

// libResources converts r to the library's form.
func (r Resources) libResources(mode string) *cgroups.Resources {
	res := &cgroups.Resources{
		CpuQuota:   r.CPUQuota,
		Memory:     r.MemoryLimit,
		PidsLimit:  r.PidsLimit,
		CpusetCpus: r.CpusetCpus,
		CpusetMems: r.CpusetMems,
	}
	if r.CPUPeriod > 0 {
		res.CpuPeriod = uint64(r.CPUPeriod)
	}
	if r.CPUShares > 0 {
		res.CpuShares = uint64(r.CPUShares)
		if mode == ModeV2 {
			res.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(res.CpuShares)
		}
	}
	return res
}

// Mode is "hybrid", "v1" or "v2".
func (m *Manager) Mode() string { return m.layout.mode() }

// V2Path is path's absolute directory in the v2 hierarchy, "" on a machine
// without one.
func (m *Manager) V2Path(path string) string {
	if m.layout.v2 == "" {
		return ""
	}
	return filepath.Join(m.layout.v2, path)
}

// checkPath rejects paths that are not clean absolute non-root paths: the
// root cgroup is never created, limited, killed or removed.
func checkPath(path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || path == "/" {
		return fmt.Errorf("check cgroup path %q: want a clean absolute path below the root", path)
	}
	return nil
}

// dirs lists path's directory in every hierarchy, v1 first.
func (m *Manager) dirs(path string) []string {
	var ds []string
	for _, h := range m.layout.v1 {
		ds = append(ds, filepath.Join(h.mountpoint, path))
	}
	if m.layout.v2 != "" {
		ds = append(ds, filepath.Join(m.layout.v2, path))
	}
	return ds
}

// Create makes path in every hierarchy (mkdir -p; in the cpuset hierarchy
// every new level inherits cpuset.cpus and cpuset.mems from its parent) and
// applies r. It is fine if path exists already.
func (m *Manager) Create(path string, r Resources) error {
	if err := checkPath(path); err != nil {
		return err
	}
	if err := m.ensure(path, r); err != nil {
		return err
	}
	if err := m.Update(path, r); err != nil {
		return err
	}
	m.log.Debug("created cgroup", "path", path)
	return nil
}

// ensure makes path in every hierarchy; r only matters for the cpuset
// hierarchy, where cpus and mems must be set before a task can join.
func (m *Manager) ensure(path string, r Resources) error {
	for _, h := range m.layout.v1 {
		dir := filepath.Join(h.mountpoint, path)
		var err error
		if h.has("cpuset") {
			// ApplyDir creates the missing levels copying cpus and mems
			// from each parent, then sets r's (pid -1: adds no task).
			err = (&cgroupsfs.CpusetGroup{}).ApplyDir(dir, r.libResources(ModeV1), -1)
		} else {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
	}
	if m.layout.v2 != "" {
		if err := m.ensureV2(path); err != nil {
			return err
		}
	}
	return nil
}

// ensureV2 makes path in the unified hierarchy level by level. On a v2
// machine each parent first delegates its controllers to its children
// (cgroup.subtree_control), which limits need; on a hybrid machine the
// unified hierarchy holds no controller the runtime uses.
func (m *Manager) ensureV2(path string) error {
	dir := m.layout.v2
	for elem := range strings.SplitSeq(strings.Trim(path, "/"), "/") {
		if m.Mode() == ModeV2 {
			m.delegate(dir)
		}
		dir = filepath.Join(dir, elem)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// delegate enables in dir's cgroup.subtree_control the controllers the
// runtime limits that dir has and has not enabled yet. A failure (dir holds
// processes itself, say) is logged: setting a limit below then fails with a
// message naming the missing file.
func (m *Manager) delegate(dir string) {
	avail, err := cgroups.ReadFile(dir, "cgroup.controllers")
	if err != nil {
		m.log.Debug("read cgroup controllers", "dir", dir, "err", err)
		return
	}
	enabled, err := cgroups.ReadFile(dir, "cgroup.subtree_control")
	if err != nil {
		m.log.Debug("read cgroup subtree_control", "dir", dir, "err", err)
		return
	}
	var add []string
	for _, c := range strings.Fields(avail) {
		if slices.Contains([]string{"cpu", "cpuset", "memory", "pids"}, c) && !slices.Contains(strings.Fields(enabled), c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return
	}
	if err := cgroups.WriteFile(dir, "cgroup.subtree_control", strings.Join(add, " ")); err != nil {
		m.log.Warn("enable cgroup controllers", "dir", dir, "controllers", add, "err", err)
	}
}

// Update applies r to path, which must exist. Limits go to the v1
// hierarchies on hybrid and v1 machines, to the unified one on v2 machines.
func (m *Manager) Update(path string, r Resources) error {
	if err := checkPath(path); err != nil {
		return err
	}
	mode := m.Mode()
	res := r.libResources(mode)
	if mode == ModeV2 {
		dir := m.V2Path(path)
		mgr, err := fs2.NewManager(&cgroups.Cgroup{Resources: res}, dir)
		if err != nil {
			return fmt.Errorf("update cgroup %s: %w", dir, err)
		}
		if err := mgr.Set(res); err != nil {
			return fmt.Errorf("update cgroup %s: %w", dir, err)
		}
		return nil
	}
	type setter interface {
		Set(path string, r *cgroups.Resources) error
	}
	for _, c := range []struct {
		controller string
		wanted     bool
		group      setter
	}{
		{"cpu", r.CPUShares != 0 || r.CPUQuota != 0 || r.CPUPeriod != 0, &cgroupsfs.CpuGroup{}},
		{"memory", r.MemoryLimit != 0, &cgroupsfs.MemoryGroup{}},
		{"pids", r.PidsLimit != 0, &cgroupsfs.PidsGroup{}},
		{"cpuset", r.CpusetCpus != "" || r.CpusetMems != "", &cgroupsfs.CpusetGroup{}},
	} {
		if !c.wanted {
			continue
		}
		h, ok := m.layout.controller(c.controller)
		if !ok {
			return fmt.Errorf("update cgroup %s: no %s controller mounted", path, c.controller)
		}
		dir := filepath.Join(h.mountpoint, path)
		if err := c.group.Set(dir, res); err != nil {
			return fmt.Errorf("update cgroup %s: set %s: %w", dir, c.controller, err)
		}
	}
	return nil
}

// Add moves the process pid into path in every hierarchy, creating path
// where it is missing (the kubelet creates pod cgroups in the v1
// hierarchies only).
func (m *Manager) Add(path string, pid int) error {
	if err := checkPath(path); err != nil {
		return err
	}
	if pid <= 0 {
		return fmt.Errorf("add process %d to cgroup %s: invalid pid", pid, path)
	}
	if err := m.ensure(path, Resources{}); err != nil {
		return err
	}
	for _, dir := range m.dirs(path) {
		if err := cgroups.WriteCgroupProc(dir, pid); err != nil {
			return fmt.Errorf("add process %d to cgroup %s: %w", pid, dir, err)
		}
	}
	return nil
}

// Pids lists every process under path (path and its descendants) in any
// hierarchy, sorted; a path that exists nowhere has none.
func (m *Manager) Pids(path string) ([]int, error) {
	if err := checkPath(path); err != nil {
		return nil, err
	}
	return pidsIn(m.dirs(path))
}

// pidsIn lists the processes under the directories dirs (recursively),
// sorted and without duplicates; missing directories have none.
func pidsIn(dirs []string) ([]int, error) {
	var all []int
	for _, dir := range dirs {
		pids, err := cgroups.GetAllPids(dir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("list processes of cgroup %s: %w", dir, err)
		}
		all = append(all, pids...)
	}
	slices.Sort(all)
	return slices.Compact(all), nil
}

// killPoll is how often Kill checks whether the processes are gone, and
// killRepeat how many checks pass before it signals again.
const (
	killPoll   = 10 * time.Millisecond
	killRepeat = 20
)

// Kill sends SIGKILL to every process under path and waits until none is
// left, or until ctx is done. With a v2 hierarchy holding path it uses
// cgroup.kill there (every process the runtime starts is in v2 too);
// otherwise, or for processes found only in v1 hierarchies, it freezes the
// v1 freezer cgroup, signals every process and thaws it, so that no
// process forks away meanwhile.
func (m *Manager) Kill(ctx context.Context, path string) error {
	if err := checkPath(path); err != nil {
		return err
	}
	tick := time.NewTicker(killPoll)
	defer tick.Stop()
	for i := 0; ; i++ {
		pids, err := m.Pids(path)
		if err != nil {
			return fmt.Errorf("kill cgroup %s: %w", path, err)
		}
		if len(pids) == 0 {
			return nil
		}
		if i%killRepeat == 0 {
			if err := m.signal(path); err != nil {
				return fmt.Errorf("kill cgroup %s: %w", path, err)
			}
			m.log.Debug("killed cgroup", "path", path, "processes", len(pids))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kill cgroup %s: %d processes left (%v): %w", path, len(pids), pids, ctx.Err())
		case <-tick.C:
		}
	}
}

// signal sends SIGKILL once to everything under path.
func (m *Manager) signal(path string) error {
	var v2pids []int
	if m.layout.v2 != "" {
		dir := m.V2Path(path)
		err := cgroups.WriteFile(dir, "cgroup.kill", "1")
		switch {
		case err == nil:
			if v2pids, err = pidsIn([]string{dir}); err != nil {
				return err
			}
		case errors.Is(err, fs.ErrNotExist):
			// Not in v2 (or a kernel before 5.14): v1 only.
		default:
			return fmt.Errorf("write %s/cgroup.kill: %w", dir, err)
		}
	}
	var v1dirs []string
	for _, h := range m.layout.v1 {
		v1dirs = append(v1dirs, filepath.Join(h.mountpoint, path))
	}
	v1pids, err := pidsIn(v1dirs)
	if err != nil {
		return err
	}
	// Processes cgroup.kill has signalled may still be listed while they
	// exit: signal by pid only those it did not reach.
	if slices.ContainsFunc(v1pids, func(p int) bool { return !slices.Contains(v2pids, p) }) {
		return m.freezeKill(path, v1dirs)
	}
	return nil
}

// freezeKill freezes path in the v1 freezer hierarchy (when there is one
// and path is in it), sends SIGKILL to every process listed under path in
// the v1 hierarchies, and thaws path.
func (m *Manager) freezeKill(path string, v1dirs []string) (err error) {
	if h, ok := m.layout.controller("freezer"); ok {
		dir := filepath.Join(h.mountpoint, path)
		freezer := &cgroupsfs.FreezerGroup{}
		if ferr := freezer.Set(dir, &cgroups.Resources{Freezer: cgroups.Frozen}); ferr == nil {
			defer func() {
				if terr := freezer.Set(dir, &cgroups.Resources{Freezer: cgroups.Thawed}); terr != nil {
					err = errors.Join(err, fmt.Errorf("thaw %s: %w", dir, terr))
				}
			}()
		} else if !errors.Is(ferr, fs.ErrNotExist) {
			// Signal anyway: a process that forks meanwhile is
			// caught by the next round.
			m.log.Warn("freeze cgroup", "dir", dir, "err", ferr)
		}
	}
	pids, err := pidsIn(v1dirs)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill process %d: %w", pid, err)
		}
	}
	return nil
}

// Remove removes path and its descendants from every hierarchy, deepest
// first; a path that does not exist is fine. The cgroups must hold no
// process (Kill first).
func (m *Manager) Remove(path string) error {
	if err := checkPath(path); err != nil {
		return err
	}
	var errs []error
	for _, dir := range m.dirs(path) {
		if err := cgroups.RemovePath(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// Stats is a sample of a cgroup's usage (of path and its descendants).
type Stats struct {
	// At is when the sample was taken.
	At time.Time
	// CPUUsageNanos is the CPU time used, in nanoseconds.
	CPUUsageNanos uint64
	// MemoryUsage is the memory charged (v1 memory.usage_in_bytes, v2
	// memory.current), MemoryWorkingSet that minus the inactive file
	// cache (as the kubelet computes it), MemoryRSS the anonymous memory.
	MemoryUsage, MemoryWorkingSet, MemoryRSS uint64
	// Pids is the number of tasks.
	Pids uint64
	// OOMKills is how many processes the OOM killer killed in the cgroup.
	OOMKills uint64
}

// Stats samples path's usage. A controller that is not mounted leaves its
// fields zero.
func (m *Manager) Stats(path string) (Stats, error) {
	if err := checkPath(path); err != nil {
		return Stats{}, err
	}
	if m.Mode() == ModeV2 {
		return m.statsV2(path)
	}
	st := Stats{At: time.Now()}
	var inactive uint64
	for _, f := range []struct {
		controller, file, key string
		dst                   *uint64
	}{
		{"cpuacct", "cpuacct.usage", "", &st.CPUUsageNanos},
		{"memory", "memory.usage_in_bytes", "", &st.MemoryUsage},
		{"memory", "memory.stat", "total_inactive_file", &inactive},
		{"memory", "memory.stat", "total_rss", &st.MemoryRSS},
		{"memory", "memory.oom_control", "oom_kill", &st.OOMKills},
		{"pids", "pids.current", "", &st.Pids},
	} {
		h, ok := m.layout.controller(f.controller)
		if !ok {
			continue
		}
		v, err := readUint(filepath.Join(h.mountpoint, path), f.file, f.key)
		if err != nil {
			return Stats{}, fmt.Errorf("read cgroup stats of %s: %w", path, err)
		}
		*f.dst = v
	}
	st.MemoryWorkingSet = workingSet(st.MemoryUsage, inactive)
	return st, nil
}

// statsV2 samples path's usage in the unified hierarchy.
func (m *Manager) statsV2(path string) (Stats, error) {
	dir := m.V2Path(path)
	mgr, err := fs2.NewManager(&cgroups.Cgroup{Resources: &cgroups.Resources{}}, dir)
	if err != nil {
		return Stats{}, fmt.Errorf("read cgroup stats of %s: %w", dir, err)
	}
	s, err := mgr.GetStats()
	if err != nil {
		return Stats{}, fmt.Errorf("read cgroup stats of %s: %w", dir, err)
	}
	st := Stats{
		At:            time.Now(),
		CPUUsageNanos: s.CpuStats.CpuUsage.TotalUsage,
		MemoryUsage:   s.MemoryStats.Usage.Usage,
		MemoryRSS:     s.MemoryStats.Stats["anon"],
		Pids:          s.PidsStats.Current,
	}
	st.MemoryWorkingSet = workingSet(st.MemoryUsage, s.MemoryStats.Stats["inactive_file"])
	if st.OOMKills, err = readUint(dir, "memory.events", "oom_kill"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Stats{}, fmt.Errorf("read cgroup stats of %s: %w", dir, err)
	}
	return st, nil
}

// readUint reads a number from a cgroup file: the whole file when key is
// "", else the value of its "key value" line (0 without one).
func readUint(dir, file, key string) (uint64, error) {
	if key == "" {
		return fscommon.GetCgroupParamUint(dir, file)
	}
	return fscommon.GetValueByKey(dir, file, key)
}

// workingSet is usage minus the inactive file cache, floored at zero.
func workingSet(usage, inactiveFile uint64) uint64 {
	if inactiveFile > usage {
		return 0
	}
	return usage - inactiveFile
}
