package podwatch

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-mesh/sluice/internal/mountinfo"
)

// errNoProcess: no process of the pod, outside the host's network
// namespace, is visible (yet) under the cgroup roots.
var errNoProcess = errors.New("no process of the pod found")

// FindCgroupRoots returns the directories under which the kubelet's pod
// cgroups are looked for: the cgroup v2 mount first (/sys/fs/cgroup, or
// /sys/fs/cgroup/unified on a hybrid host), then every cgroup v1 hierarchy
// (/sys/fs/cgroup/memory, ...), as /proc/self/mountinfo lists them.
func FindCgroupRoots() ([]string, error) {
	ms, err := mountinfo.Self()
	if err != nil {
		return nil, fmt.Errorf("find cgroup roots: %w", err)
	}
	roots := cgroupRoots(ms)
	if len(roots) == 0 {
		return nil, fmt.Errorf("find cgroup roots: no cgroup file system is mounted")
	}
	return roots, nil
}

func cgroupRoots(ms []mountinfo.Mount) []string {
	var out []string
	for _, fstype := range []string{"cgroup2", "cgroup"} {
		for _, m := range ms {
			if m.FSType == fstype && !slices.Contains(out, m.Point) {
				out = append(out, m.Point)
			}
		}
	}
	return out
}

// PodCgroupPaths returns where the kubelet puts the cgroup of the pod with
// uid, relative to a cgroup root, for every QoS class: with the cgroupfs
// driver kubepods/pod<uid> (Guaranteed) and kubepods/{burstable,besteffort}/
// pod<uid>; with the systemd driver kubepods.slice/kubepods-pod<uid>.slice and
// kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice, where
// the uid's dashes are underscores.
func PodCgroupPaths(uid types.UID) []string {
	u := string(uid)
	us := strings.ReplaceAll(u, "-", "_")
	return []string{
		"kubepods/pod" + u,
		"kubepods/burstable/pod" + u,
		"kubepods/besteffort/pod" + u,
		"kubepods.slice/kubepods-pod" + us + ".slice",
		"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + us + ".slice",
		"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice",
	}
}

// validUID accepts what the API server makes (a UUID) and refuses anything
// that could leave a cgroup directory.
func validUID(uid types.UID) bool {
	if uid == "" {
		return false
	}
	for _, c := range string(uid) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == '-') {
			return false
		}
	}
	return true
}

// procFinder finds a process of a pod through the kubelet's cgroup layout.
type procFinder struct {
	roots    []string
	procRoot string
}

// find returns the lowest pid among the pod's processes (the oldest, most
// often the sandbox's) whose network namespace is not the host's, looking
// under each root in order. It returns errNoProcess when there is none yet.
func (f procFinder) find(uid types.UID) (int, error) {
	if !validUID(uid) {
		return 0, fmt.Errorf("find processes of pod: uid %q is not a UUID", uid)
	}
	host, err := os.Readlink(filepath.Join(f.procRoot, "self/ns/net"))
	if err != nil {
		return 0, fmt.Errorf("read the host's network namespace: %w", err)
	}
	var looked []string
	for _, root := range f.roots {
		for _, rel := range PodCgroupPaths(uid) {
			dir := filepath.Join(root, rel)
			pids, err := cgroupProcs(dir)
			if err != nil {
				return 0, err
			}
			if pids == nil {
				continue
			}
			looked = append(looked, dir)
			slices.Sort(pids)
			for _, pid := range pids {
				ns, err := os.Readlink(filepath.Join(f.procRoot, strconv.Itoa(pid), "ns/net"))
				if err == nil && ns != host {
					return pid, nil
				}
			}
		}
	}
	if len(looked) == 0 {
		return 0, fmt.Errorf("%w: no cgroup of pod %s under %s", errNoProcess, uid, strings.Join(f.roots, ", "))
	}
	return 0, fmt.Errorf("%w: no process outside the host network namespace in %s", errNoProcess, strings.Join(looked, ", "))
}

// cgroupProcs lists the processes in the cgroup dir and its descendants. A
// missing dir is nil; an existing one with no process is an empty slice.
func cgroupProcs(dir string) ([]int, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	pids := []int{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) {
			return nil // removed while walking
		}
		if err != nil {
			return err
		}
		for _, f := range bytes.Fields(b) {
			if pid, err := strconv.Atoi(string(f)); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list processes of cgroup %s: %w", dir, err)
	}
	return pids, nil
}
