package netns

import (
	"github.com/sluice-mesh/sluice/internal/mountinfo"

	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

var cgroup2Mount = sync.OnceValues(func() (string, error) {
	ms, err := mountinfo.Self()
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	if m, ok := mountinfo.FirstOfType(ms, "cgroup2"); ok {
		return m.Point, nil
	}
	return "", errors.New("find cgroup2 mount: no cgroup2 file system mounted")
})

// Cgroup2Mount returns the mount point of the cgroup v2 hierarchy (for example
// /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one), found
// by parsing /proc/self/mountinfo for a mount of file system type cgroup2.
func Cgroup2Mount() (string, error) { return cgroup2Mount() }

// killCgroup kills every process in the cgroup dir and its descendants and waits
// until none is left. It uses cgroup.kill (Linux 5.14) when present and otherwise
// sends SIGKILL to each pid listed in cgroup.procs.
func killCgroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	useKill := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) == nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := cgroupPids(dir)
		if err != nil {
			return fmt.Errorf("kill cgroup %s: %w", dir, err)
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill cgroup %s: processes %v still running", dir, pids)
		}
		if !useKill {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cgroupPids lists the processes in dir and all its descendants.
func cgroupPids(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, l := range bytes.Fields(b) {
			if pid, err := strconv.Atoi(string(l)); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}

// removeCgroup removes dir and its descendant cgroups, deepest first, retrying
// while the kernel still reports them busy (exiting processes).
func removeCgroup(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := syscall.Rmdir(dirs[i])
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}
