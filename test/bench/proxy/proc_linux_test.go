package proxy

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// parseStatCPU returns utime+stime, in clock ticks, from the text of
// /proc/<pid>/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStatCPU(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse stat: %d fields after the command name", len(f))
	}
	var sum uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse stat: %w", err)
		}
		sum += v
	}
	return sum, nil
}

// parseStatus returns VmRSS, VmHWM and RssAnon from the text of
// /proc/<pid>/status.
func parseStatus(status string) (memory, error) {
	var m memory
	found := 0
	for line := range strings.SplitSeq(status, "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok || (name != "VmRSS" && name != "VmHWM" && name != "RssAnon") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("parse status: %s: %q", name, val)
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("parse status: %w", err)
		}
		switch name {
		case "VmRSS":
			m.RSS = v
		case "VmHWM":
			m.HWM = v
		case "RssAnon":
			m.Anon = v
		}
		found++
	}
	if found != 3 {
		return m, fmt.Errorf("parse status: VmRSS, VmHWM or RssAnon missing")
	}
	return m, nil
}

// procs is a proxy's processes: nginx has a master and a worker,
// sluice-proxy one process.
type procs []int

// cpu returns the CPU time the processes have used so far.
func (ps procs) cpu() (time.Duration, error) {
	var ticks uint64
	for _, pid := range ps {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, fmt.Errorf("read CPU time: %w", err)
		}
		t, err := parseStatCPU(string(b))
		if err != nil {
			return 0, fmt.Errorf("read CPU time of %d: %w", pid, err)
		}
		ticks += t
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// memory returns each process's memory, in the order of ps.
func (ps procs) memory() ([]memory, error) {
	ms := make([]memory, len(ps))
	for i, pid := range ps {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return nil, fmt.Errorf("read memory: %w", err)
		}
		if ms[i], err = parseStatus(string(b)); err != nil {
			return nil, fmt.Errorf("read memory of %d: %w", pid, err)
		}
	}
	return ms, nil
}

// rssSampler records the largest VmRSS and RssAnon of each process,
// sampled every interval until stopped.
type rssSampler struct {
	stop chan struct{}
	done sync.WaitGroup
	max  []memory // KiB, per process; HWM unused
	err  error
}

func sampleRSS(ps procs, interval time.Duration) *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), max: make([]memory, len(ps))}
	s.done.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			ms, err := ps.memory()
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

// finish stops sampling and returns the peak VmRSS and RssAnon per
// process (KiB).
func (s *rssSampler) finish() ([]memory, error) {
	close(s.stop)
	s.done.Wait()
	return s.max, s.err
}

// children returns the pids whose parent is pid.
func children(pid int) ([]int, error) {
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
