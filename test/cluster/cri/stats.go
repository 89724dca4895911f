package cri

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"context"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
)

// rateWindow is how long apart two CPU samples are taken when a cgroup has
// no earlier sample to compute usage_nano_cores from.
const rateWindow = 100 * time.Millisecond

// sample is a cgroup's usage with its CPU rate.
type sample struct {
	st cgroup.Stats
	// nanoCores is the CPU rate since the previous sample, nil without one.
	nanoCores *uint64
	err       error
}

// sampleCgroups samples the cgroups at paths. The CPU rate comes from each
// path's previous sample when that is at least rateWindow old; the other
// paths are sampled again rateWindow later (once for all of them).
func (s *Server) sampleCgroups(paths []string) map[string]sample {
	out := make(map[string]sample, len(paths))
	var again []string
	for _, p := range paths {
		st, err := s.opts.Cgroups.Stats(p)
		if err != nil {
			out[p] = sample{err: err}
			continue
		}
		s.mu.Lock()
		prev, ok := s.cpu[p]
		fresh := ok && st.At.Sub(prev.At) >= rateWindow && st.CPUUsageNanos >= prev.CPUUsageNanos
		if fresh || !ok {
			s.cpu[p] = st
		}
		s.mu.Unlock()
		smp := sample{st: st}
		if fresh {
			smp.nanoCores = cpuRate(prev, st)
		} else {
			again = append(again, p)
		}
		out[p] = smp
	}
	if len(again) == 0 {
		return out
	}
	time.Sleep(rateWindow)
	for _, p := range again {
		st, err := s.opts.Cgroups.Stats(p)
		if err != nil {
			continue
		}
		prev := out[p].st
		s.mu.Lock()
		s.cpu[p] = st
		s.mu.Unlock()
		out[p] = sample{st: st, nanoCores: cpuRate(prev, st)}
	}
	return out
}

// cpuRate is the CPU use between two samples in nanocores.
func cpuRate(prev, cur cgroup.Stats) *uint64 {
	d := cur.At.Sub(prev.At)
	if d <= 0 || cur.CPUUsageNanos < prev.CPUUsageNanos {
		return nil
	}
	r := uint64(float64(cur.CPUUsageNanos-prev.CPUUsageNanos) / d.Seconds())
	return &r
}

// u64 wraps a value for the CRI.
func u64(v uint64) *runtimeapi.UInt64Value { return &runtimeapi.UInt64Value{Value: v} }

// containerStats is the CRI stats of c from its cgroup sample (none for a
// container that does not run); s.mu must be held.
func (s *Server) containerStats(c *ctr, smp *sample) *runtimeapi.ContainerStats {
	ts := time.Now().UnixNano()
	out := &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{
			Id:          c.rec.ID,
			Metadata:    c.config.GetMetadata(),
			Labels:      c.config.GetLabels(),
			Annotations: c.config.GetAnnotations(),
		},
	}
	if smp != nil && smp.err == nil {
		st := smp.st
		ts = st.At.UnixNano()
		out.Cpu = &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(st.CPUUsageNanos)}
		if smp.nanoCores != nil {
			out.Cpu.UsageNanoCores = u64(*smp.nanoCores)
		}
		out.Memory = &runtimeapi.MemoryUsage{
			Timestamp:       ts,
			WorkingSetBytes: u64(st.MemoryWorkingSet),
			UsageBytes:      u64(st.MemoryUsage),
			RssBytes:        u64(st.MemoryRSS),
		}
		if limit := uint64(c.resources.GetMemoryLimitInBytes()); limit > 0 {
			avail := uint64(0)
			if limit > st.MemoryWorkingSet {
				avail = limit - st.MemoryWorkingSet
			}
			out.Memory.AvailableBytes = u64(avail)
		}
	}
	// Containers have no writable layer of their own: procri writes
	// nothing for them but their state under the state directory.
	out.WritableLayer = &runtimeapi.FilesystemUsage{
		Timestamp:  ts,
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: s.opts.StateDir},
		UsedBytes:  u64(0),
		InodesUsed: u64(0),
	}
	return out
}

// ContainerStats answers a container's CPU, memory and writable layer use.
func (s *Server) ContainerStats(_ context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	c, err := s.getContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	running := c.state() == runtimeapi.ContainerState_CONTAINER_RUNNING
	s.mu.Unlock()
	var smp *sample
	if running {
		m := s.sampleCgroups([]string{c.rec.Cgroup})
		v := m[c.rec.Cgroup]
		if v.err != nil {
			return nil, status.Errorf(codes.Unknown, "stats of container %s: %v", c.rec.ID, v.err)
		}
		smp = &v
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &runtimeapi.ContainerStatsResponse{Stats: s.containerStats(c, smp)}, nil
}

// runningContainers lists the running containers matching a filter.
func (s *Server) runningContainers(id, sandboxID string, labels map[string]string) []*ctr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*ctr
	for _, k := range sortedKeys(s.containers) {
		c := s.containers[k]
		if c.state() == runtimeapi.ContainerState_CONTAINER_RUNNING && matchID(k, id) &&
			matchID(c.rec.SandboxID, sandboxID) && matchLabels(c.config.GetLabels(), labels) {
			out = append(out, c)
		}
	}
	return out
}

// ListContainerStats answers the stats of the running containers matching
// the filter.
func (s *Server) ListContainerStats(_ context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	ctrs := s.runningContainers(f.GetId(), f.GetPodSandboxId(), f.GetLabelSelector())
	paths := make([]string, len(ctrs))
	for i, c := range ctrs {
		paths[i] = c.rec.Cgroup
	}
	samples := s.sampleCgroups(paths)
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &runtimeapi.ListContainerStatsResponse{}
	for _, c := range ctrs {
		smp := samples[c.rec.Cgroup]
		if smp.err != nil {
			// The container exited between listing and sampling.
			continue
		}
		resp.Stats = append(resp.Stats, s.containerStats(c, &smp))
	}
	return resp, nil
}

// podStats is the CRI stats of a sandbox from its pod cgroup, its holder's
// network interfaces and its running containers.
func (s *Server) podStats(sb *sandbox) (*runtimeapi.PodSandboxStats, error) {
	ctrs := s.runningContainers("", sb.rec.ID, nil)
	paths := []string{sb.rec.CgroupParent}
	for _, c := range ctrs {
		paths = append(paths, c.rec.Cgroup)
	}
	samples := s.sampleCgroups(paths)
	pod := samples[sb.rec.CgroupParent]
	if pod.err != nil {
		return nil, fmt.Errorf("stats of pod cgroup %s: %w", sb.rec.CgroupParent, pod.err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := pod.st.At.UnixNano()
	linux := &runtimeapi.LinuxPodSandboxStats{
		Cpu: &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(pod.st.CPUUsageNanos)},
		Memory: &runtimeapi.MemoryUsage{
			Timestamp:       ts,
			WorkingSetBytes: u64(pod.st.MemoryWorkingSet),
			UsageBytes:      u64(pod.st.MemoryUsage),
			RssBytes:        u64(pod.st.MemoryRSS),
		},
		Process: &runtimeapi.ProcessUsage{Timestamp: ts, ProcessCount: u64(pod.st.Pids)},
	}
	if pod.nanoCores != nil {
		linux.Cpu.UsageNanoCores = u64(*pod.nanoCores)
	}
	if !sb.rec.HostNetwork && sb.holder != nil {
		if ifs, err := netDev(sb.rec.HolderPID); err == nil {
			linux.Network = &runtimeapi.NetworkUsage{Timestamp: ts}
			for _, i := range ifs {
				if i.Name == "lo" {
					continue
				}
				if i.Name == "eth0" {
					linux.Network.DefaultInterface = i
					continue
				}
				linux.Network.Interfaces = append(linux.Network.Interfaces, i)
			}
		}
	}
	for _, c := range ctrs {
		if smp := samples[c.rec.Cgroup]; smp.err == nil {
			linux.Containers = append(linux.Containers, s.containerStats(c, &smp))
		}
	}
	return &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{
			Id:          sb.rec.ID,
			Metadata:    sb.config.GetMetadata(),
			Labels:      sb.config.GetLabels(),
			Annotations: sb.config.GetAnnotations(),
		},
		Linux: linux,
	}, nil
}

// netDev reads the interface counters of a process's network namespace.
func netDev(pid int) ([]*runtimeapi.NetworkInterfaceUsage, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/net/dev")
	if err != nil {
		return nil, fmt.Errorf("read interface counters: %w", err)
	}
	var out []*runtimeapi.NetworkInterfaceUsage
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue // the two header lines
		}
		f := strings.Fields(rest)
		if len(f) < 16 {
			continue
		}
		n := func(i int) *runtimeapi.UInt64Value {
			v, _ := strconv.ParseUint(f[i], 10, 64)
			return u64(v)
		}
		// Receive: bytes packets errs ...; transmit from field 8: bytes packets errs.
		out = append(out, &runtimeapi.NetworkInterfaceUsage{
			Name: strings.TrimSpace(name), RxBytes: n(0), RxErrors: n(2), TxBytes: n(8), TxErrors: n(10),
		})
	}
	return out, nil
}

// PodSandboxStats answers a sandbox's CPU, memory, process, network and
// container stats.
func (s *Server) PodSandboxStats(_ context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	sb, err := s.getSandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	st, err := s.podStats(sb)
	if err != nil {
		return nil, status.Errorf(codes.Unknown, "pod sandbox %s: %v", sb.rec.ID, err)
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: st}, nil
}

// ListPodSandboxStats answers the stats of the ready sandboxes matching the
// filter.
func (s *Server) ListPodSandboxStats(_ context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := req.GetFilter()
	s.mu.Lock()
	var sbs []*sandbox
	for _, id := range sortedKeys(s.sandboxes) {
		sb := s.sandboxes[id]
		if sb.ready() && matchID(id, f.GetId()) && matchLabels(sb.config.GetLabels(), f.GetLabelSelector()) {
			sbs = append(sbs, sb)
		}
	}
	s.mu.Unlock()
	resp := &runtimeapi.ListPodSandboxStatsResponse{}
	for _, sb := range sbs {
		st, err := s.podStats(sb)
		if err != nil {
			continue // stopped meanwhile
		}
		resp.Stats = append(resp.Stats, st)
	}
	return resp, nil
}
