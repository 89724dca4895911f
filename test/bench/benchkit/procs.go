package benchkit

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Procs is the processes of one program: nginx has a master and a worker,
// sluice-proxy one process.
type Procs []int

// CPU returns the CPU time the processes have used so far.
func (ps Procs) CPU() (time.Duration, error) {
	var ticks uint64
	for _, pid := range ps {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, fmt.Errorf("read CPU time: %w", err)
		}
		t, err := ParseStatCPU(string(b))
		if err != nil {
			return 0, fmt.Errorf("read CPU time of %d: %w", pid, err)
		}
		ticks += t
	}
	return time.Duration(ticks) * time.Second / ClockTicks, nil
}

// Memory returns each process's memory, in the order of ps.
func (ps Procs) Memory() ([]Memory, error) {
	ms := make([]Memory, len(ps))
	for i, pid := range ps {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return nil, fmt.Errorf("read memory: %w", err)
		}
		if ms[i], err = ParseStatus(string(b)); err != nil {
			return nil, fmt.Errorf("read memory of %d: %w", pid, err)
		}
	}
	return ms, nil
}

// RSSSampler records the largest VmRSS and RssAnon of each process,
// sampled every interval until finished.
type RSSSampler struct {
	stop chan struct{}
	done sync.WaitGroup
	max  []Memory // KiB, per process; HWM unused
	err  error
}

// SampleRSS starts sampling ps every interval.
func SampleRSS(ps Procs, interval time.Duration) *RSSSampler {
	s := &RSSSampler{stop: make(chan struct{}), max: make([]Memory, len(ps))}
	s.done.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			ms, err := ps.Memory()
			if err != nil {
				s.err = err
				return
			}
			for i, m := range ms {
				s.max[i].RSS = max(s.max[i].RSS, m.RSS)
				s.max[i].Anon = max(s.max[i].Anon, m.Anon)
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	})
	return s
}

// Finish stops sampling and returns the peak VmRSS and RssAnon per
// process (KiB).
func (s *RSSSampler) Finish() ([]Memory, error) {
	close(s.stop)
	s.done.Wait()
	return s.max, s.err
}

// Children returns the pids whose parent is pid.
func Children(pid int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue // gone
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out, nil
}

// CgroupCPU returns the CPU time used so far by the processes of the cgroup
// v2 directories dirs (cpu.stat usage_usec, which counts each task's exact
// run time, unlike /proc/stat's tick samples).
func CgroupCPU(dirs ...string) (time.Duration, error) {
	var sum time.Duration
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cpu.stat"))
		if err != nil {
			return 0, fmt.Errorf("read cgroup CPU time: %w", err)
		}
		t, err := ParseCgroupCPU(string(b))
		if err != nil {
			return 0, fmt.Errorf("read CPU time of %s: %w", d, err)
		}
		sum += t
	}
	return sum, nil
}
