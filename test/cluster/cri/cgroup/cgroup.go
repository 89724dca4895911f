// Package cgroup manages the cgroups of the process container runtime's pods
// and containers on hybrid (cgroup v1 controllers plus the v2 unified
// hierarchy), pure v1 and pure v2 machines. Paths are the kubelet's
// cgroupfs-driver paths, such as "/kubepods/besteffort/pod<uid>/<id>"; every
// process the runtime starts goes into its path in every v1 hierarchy
// (including name=systemd) and in the v2 hierarchy.
package cgroup

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

var errNotImplemented = errors.New("not implemented")

// Manager creates, fills, limits, kills and removes cgroups in every
// hierarchy of the machine.
type Manager struct {
	log *slog.Logger
}

// New detects the machine's cgroup hierarchies from /proc/self/mountinfo.
func New(log *slog.Logger) (*Manager, error) {
	return &Manager{log: log}, errNotImplemented
}

// Resources are the limits of a cgroup; a zero field is left unset.
type Resources struct {
	CPUShares, CPUQuota, CPUPeriod, MemoryLimit, PidsLimit int64
	CpusetCpus, CpusetMems                                 string
}

// Create makes path in every hierarchy and applies r.
func (m *Manager) Create(path string, r Resources) error { return errNotImplemented }

// Update applies r to the existing path.
func (m *Manager) Update(path string, r Resources) error { return errNotImplemented }

// Add moves pid into path in every hierarchy.
func (m *Manager) Add(path string, pid int) error { return errNotImplemented }

// Pids lists every process under path, recursively.
func (m *Manager) Pids(path string) ([]int, error) { return nil, errNotImplemented }

// Kill sends SIGKILL to every process under path and waits until none is left.
func (m *Manager) Kill(ctx context.Context, path string) error { return errNotImplemented }

// Remove removes path and its descendants from every hierarchy.
func (m *Manager) Remove(path string) error { return errNotImplemented }

// Stats is a sample of a cgroup's usage.
type Stats struct {
	At                                                      time.Time
	CPUUsageNanos, MemoryUsage, MemoryWorkingSet, MemoryRSS uint64
	Pids                                                    uint64
	OOMKills                                                uint64
}

// Stats samples path's usage.
func (m *Manager) Stats(path string) (Stats, error) { return Stats{}, errNotImplemented }

// Mode is "hybrid", "v1" or "v2".
func (m *Manager) Mode() string { return "" }

// V2Path is path's absolute directory in the v2 hierarchy.
func (m *Manager) V2Path(path string) string { return "" }
