package benchkit

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ClockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat and
// /proc/stat: 100 on every Linux architecture Go supports.
const ClockTicks = 100

// Memory is a process's resident set from /proc/<pid>/status, in KiB.
type Memory struct {
	RSS, HWM int64 // VmRSS and VmHWM (peak VmRSS since start)
	Anon     int64 // RssAnon: the part of VmRSS that is not file-backed (the executable's pages are)
}

// KiBToMB converts KiB to MB (10^6 bytes).
func KiBToMB(k int64) float64 { return float64(k) * 1024 / 1e6 }

// ParseStatCPU returns utime+stime, in clock ticks, from the text of
// /proc/<pid>/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func ParseStatCPU(stat string) (uint64, error) {
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

// ParseStatus returns VmRSS, VmHWM and RssAnon from the text of
// /proc/<pid>/status.
func ParseStatus(status string) (Memory, error) {
	var m Memory
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

// ParseCgroupCPU returns usage_usec from the text of a cgroup v2 cpu.stat.
func ParseCgroupCPU(stat string) (time.Duration, error) {
	for line := range strings.SplitSeq(stat, "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse cpu.stat: %w", err)
			}
			return time.Duration(n) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("parse cpu.stat: no usage_usec")
}

// TotalRSS sums the VmRSS of ms, KiB.
func TotalRSS(ms []Memory) int64 {
	var s int64
	for _, m := range ms {
		s += m.RSS
	}
	return s
}
