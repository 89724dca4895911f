package netns

import (
	"github.com/sluice-mesh/sluice/internal/mountinfo"

	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// State shared by every test process on the machine.
const (
	stateDir  = "/run/sluice-test"
	lockFile  = stateDir + "/alloc.lock"
	nodesDir  = stateDir + "/nodes"
	mountNSes = stateDir + "/mnt" // private bind mount holding persisted mount namespaces
	netnsDir  = "/run/netns"      // where `ip netns add` bind-mounts network namespaces
)

// nodeRecord is what /run/sluice-test/nodes/<id>.json holds about a node: enough
// to tear it down from another process once its owner is dead. Resources are
// recorded before they are created.
type nodeRecord struct {
	ID     string      `json:"id"`
	N      int         `json:"n"`
	PID    int         `json:"pid"`
	Start  uint64      `json:"start"` // owner's start time (clock ticks after boot), against pid reuse
	Bridge string      `json:"bridge"`
	Cgroup string      `json:"cgroup"`
	Pods   []podRecord `json:"pods,omitempty"`
}

// podRecord is the part of a nodeRecord about one pod.
type podRecord struct {
	Name     string `json:"name"`
	NetNS    string `json:"netns"`   // name under /run/netns
	HostVeth string `json:"veth"`    // host end of the veth pair
	Cgroup   string `json:"cgroup"`  // absolute path
	MountNS  string `json:"mountns"` // persisted mount namespace file, if any
}

func recordPath(id string) string { return filepath.Join(nodesDir, id+".json") }

// write stores the record atomically.
func (r *nodeRecord) write() error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := recordPath(r.ID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write node record: %w", err)
	}
	if err := os.Rename(tmp, recordPath(r.ID)); err != nil {
		return fmt.Errorf("write node record: %w", err)
	}
	return nil
}

// lockState creates the state directories and takes the allocation lock; the
// returned function releases it.
func lockState() (func(), error) {
	for _, d := range []string{stateDir, nodesDir, mountNSes} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
	}
	f, err := os.OpenFile(lockFile, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", lockFile, err)
	}
	return func() { f.Close() }, nil
}

// processStart returns the start time of pid in clock ticks after boot (field 22
// of /proc/<pid>/stat).
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// ownerAlive reports whether the process that recorded r still runs.
func (r *nodeRecord) ownerAlive() bool {
	start, err := processStart(r.PID)
	if err != nil {
		return false
	}
	return r.Start == 0 || start == r.Start
}

// readRecords returns every node record on the machine.
func readRecords() ([]*nodeRecord, error) {
	paths, err := filepath.Glob(filepath.Join(nodesDir, "*.json"))
	if err != nil {
		return nil, err
	}
	var recs []*nodeRecord
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		r := new(nodeRecord)
		if err := json.Unmarshal(b, r); err != nil || r.ID == "" || r.ID+".json" != filepath.Base(p) {
			return nil, fmt.Errorf("read node record %s: malformed (remove it by hand)", p)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// sweepStale tears down the nodes whose owner process is dead. It must be called
// with the allocation lock held. It returns the IDs swept and the records still
// present (live ones and those whose teardown failed).
func sweepStale() (swept []string, remaining []*nodeRecord, err error) {
	recs, err := readRecords()
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	for _, r := range recs {
		if r.ownerAlive() {
			remaining = append(remaining, r)
			continue
		}
		if err := r.destroy(); err != nil {
			errs = append(errs, fmt.Errorf("sweep stale node %s (pid %d): %w", r.ID, r.PID, err))
			remaining = append(remaining, r)
			continue
		}
		swept = append(swept, r.ID)
	}
	return swept, remaining, errors.Join(errs...)
}

// destroy removes everything the record names, tolerating what is already gone,
// and finally the record itself: processes in the node's cgroups, network
// namespaces, mount namespaces, veths, the bridge and the cgroups.
func (r *nodeRecord) destroy() error {
	var errs []error
	if r.Cgroup != "" {
		if err := killCgroup(r.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range r.Pods {
		if p.Cgroup != "" {
			if err := killCgroup(p.Cgroup); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, p := range r.Pods {
		if p.NetNS != "" {
			if _, err := os.Lstat(filepath.Join(netnsDir, p.NetNS)); err == nil {
				if err := run("ip", "netns", "del", p.NetNS); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if p.MountNS != "" {
			if err := removeNSFile(p.MountNS); err != nil {
				errs = append(errs, err)
			}
		}
		if p.HostVeth != "" && linkExists(p.HostVeth) {
			if err := run("ip", "link", "del", p.HostVeth); err != nil && linkExists(p.HostVeth) {
				errs = append(errs, err)
			}
		}
	}
	if r.Bridge != "" && linkExists(r.Bridge) {
		if err := run("ip", "link", "del", r.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range r.Pods {
		if p.Cgroup != "" {
			if err := removeCgroup(p.Cgroup); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if r.Cgroup != "" {
		if err := removeCgroup(r.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.Remove(recordPath(r.ID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove node record: %w", err)
	}
	return nil
}

// removeNSFile unmounts a persisted namespace file and removes it.
func removeNSFile(path string) error {
	for {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err != nil {
			break // EINVAL once nothing is mounted there any more
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove namespace file: %w", err)
	}
	return nil
}

// linkExists reports whether a network interface of that name exists in the host
// network namespace.
func linkExists(name string) bool {
	_, err := os.Lstat(filepath.Join("/sys/class/net", name))
	return err == nil
}

// run runs a command and returns an error that includes its output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// runStdin is run with the given standard input (for `ip -batch -`).
func runStdin(stdin string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// ensurePrivateMount makes dir a mount point with private propagation, which a
// bind-mounted mount namespace file requires (see unshare(1)).
func ensurePrivateMount(dir string) error {
	mounted, err := isMountPoint(dir)
	if err != nil {
		return err
	}
	if !mounted {
		if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", dir, err)
		}
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

// isMountPoint reports whether dir is a mount point in this mount namespace.
func isMountPoint(dir string) (bool, error) {
	ms, err := mountinfo.Self()
	if err != nil {
		return false, err
	}
	_, ok := mountinfo.At(ms, dir)
	return ok, nil
}
