package cgroup

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// Modes, as Manager.Mode reports them.
const (
	ModeHybrid = "hybrid"
	ModeV1     = "v1"
	ModeV2     = "v2"
)

// isV1Controller reports whether a cgroup mount's superblock option names a
// v1 subsystem or a named hierarchy ("name=<name>"); the other options (rw,
// xattr, clone_children, release_agent=...) are not controllers.
func isV1Controller(opt string) bool {
	switch opt {
	case "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "hugetlb",
		"memory", "misc", "net_cls", "net_prio", "perf_event", "pids", "rdma":
		return true
	}
	return strings.HasPrefix(opt, "name=")
}

// hierarchy is one mounted cgroup v1 hierarchy.
type hierarchy struct {
	// mountpoint is where the hierarchy's root is mounted.
	mountpoint string
	// controllers are the subsystems bound to it, and "name=<name>" for a
	// named hierarchy.
	controllers []string
}

// has reports whether the hierarchy has the controller c.
func (h hierarchy) has(c string) bool { return slices.Contains(h.controllers, c) }

// layout is the machine's set of cgroup hierarchies.
type layout struct {
	// v1 are the cgroup v1 hierarchies, one per distinct controller set
	// (the first mount of each), in mountinfo order.
	v1 []hierarchy
	// v2 is the mountpoint of the unified hierarchy, "" without one.
	v2 string
}

// mode is "hybrid" with v1 controllers and a v2 hierarchy, "v1" without a v2
// hierarchy, and "v2" when no v1 controller is mounted (a named v1
// hierarchy alone does not make a machine hybrid: its limits are in v2).
func (l layout) mode() string {
	controllers := slices.ContainsFunc(l.v1, func(h hierarchy) bool {
		return slices.ContainsFunc(h.controllers, func(c string) bool { return !strings.HasPrefix(c, "name=") })
	})
	switch {
	case l.v2 == "":
		return ModeV1
	case controllers:
		return ModeHybrid
	default:
		return ModeV2
	}
}

// controller returns the v1 hierarchy holding controller c.
func (l layout) controller(c string) (hierarchy, bool) {
	for _, h := range l.v1 {
		if h.has(c) {
			return h, true
		}
	}
	return hierarchy{}, false
}

// parseLayout reads the cgroup hierarchies from a mountinfo file.
func parseLayout(r io.Reader) (layout, error) {
	mounts, err := mountinfo.GetMountsFromReader(r, mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return layout{}, fmt.Errorf("parse mountinfo: %w", err)
	}
	var l layout
	seen := map[string]bool{}
	for _, mnt := range mounts {
		if mnt.FSType == "cgroup2" {
			if l.v2 == "" {
				l.v2 = mnt.Mountpoint
			}
			continue
		}
		var ctrls []string
		for opt := range strings.SplitSeq(mnt.VFSOptions, ",") {
			if isV1Controller(opt) {
				ctrls = append(ctrls, opt)
			}
		}
		if len(ctrls) == 0 {
			continue
		}
		slices.Sort(ctrls)
		key := strings.Join(ctrls, ",")
		if seen[key] {
			continue
		}
		seen[key] = true
		l.v1 = append(l.v1, hierarchy{mountpoint: mnt.Mountpoint, controllers: ctrls})
	}
	if len(l.v1) == 0 && l.v2 == "" {
		return layout{}, errors.New("find cgroup hierarchies: no cgroup or cgroup2 mount")
	}
	return l, nil
}
