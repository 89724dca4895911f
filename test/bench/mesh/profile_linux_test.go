package mesh

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// profileWorkload is the workload the profile runs: HTTP/1.1 keep-alive
// at 1000 req/s.
func (f *fixture) profileWorkload() (Workload, bool) {
	for _, w := range f.cfg.Workloads() {
		if w.Kind == FixedRate && w.Proto == "http" && !w.NewConn && w.Rate == 1000 {
			return w, true
		}
	}
	return Workload{}, false
}

// profile runs the HTTP/1.1 workload at 1000 req/s once more for each
// Sluice case with perf sampling both proxies, and for the eBPF cases with
// the kernel's BPF run-time statistics on, and returns the report's
// section on where the time goes.
func (f *fixture) profile() string {
	w, ok := f.profileWorkload()
	if !ok {
		return "Not profiled: the run has no HTTP/1.1 workload at 1000 req/s.\n"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "After the rounds, the %s workload ran once more per Sluice case with `perf record -e cpu-clock -F 1999 -g` "+
		"attached to each proxy (the VM has no hardware PMU: `perf stat -e cycles` reports it as not supported, so "+
		"`bpftool prog profile`, which needs the cycles and instructions counters, cannot run here) and, for the eBPF cases, "+
		"with the kernel's BPF run-time statistics enabled (BPF_ENABLE_STATS, what `bpftool prog show` reports as run_time_ns/run_cnt).\n\n", w.Title)
	if _, err := exec.LookPath("perf"); err != nil {
		fmt.Fprintf(&sb, "perf is not installed (%v): no CPU profile.\n", err)
	}
	for _, p := range f.pairs {
		if !p.sluice {
			continue
		}
		fmt.Fprintf(&sb, "### %s\n\n", p.Name)
		var stats io.Closer
		if p.agent != nil {
			var err error
			if stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
				fmt.Fprintf(&sb, "BPF statistics could not be enabled: %v.\n\n", err)
			}
		}
		before := bpfStats()
		perfDir := f.tb.TempDir()
		recs := []*perfRecord{startPerf(perfDir, "client", p.cliProxy[0]), startPerf(perfDir, "server", p.srvProxy[0])}
		res, err := f.load(p, w, f.cfg.Args(w)...)
		for _, r := range recs {
			r.stop()
		}
		after := bpfStats()
		if stats != nil {
			stats.Close()
		}
		if err == nil {
			err = Validate(w, res)
		}
		if err != nil {
			fmt.Fprintf(&sb, "The profiling run failed: %v.\n\n", err)
			continue
		}
		fmt.Fprintf(&sb, "%d requests, p50 %.0f µs, p99 %.0f µs.\n\n", res.Requests, float64(res.P50Ns)/1e3, float64(res.P99Ns)/1e3)
		for _, r := range recs {
			sb.WriteString(r.report())
		}
		if p.agent != nil {
			sb.WriteString(bpfTable(before, after, res.Requests))
		}
	}
	return sb.String()
}

// perfRecord is perf sampling one process.
type perfRecord struct {
	who, file string
	cmd       *exec.Cmd
	err       error
	stderr    strings.Builder
}

func startPerf(dir, who string, pid int) *perfRecord {
	r := &perfRecord{who: who, file: filepath.Join(dir, who+".data")}
	r.cmd = exec.Command("perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-p", fmt.Sprint(pid), "-o", r.file)
	r.cmd.Stderr = &r.stderr
	r.err = r.cmd.Start()
	return r
}

// stop ends the recording (perf writes its file on SIGINT).
func (r *perfRecord) stop() {
	if r.err != nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			r.err = err
		}
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		r.err = fmt.Errorf("perf did not stop")
	}
}

// report renders the top of the profile: the share of samples in the
// kernel and in the proxy's own code, and the hottest symbols.
func (r *perfRecord) report() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "**%s proxy**", r.who)
	if r.err != nil {
		fmt.Fprintf(&sb, ": perf failed: %v %s\n\n", r.err, r.stderr.String())
		return sb.String()
	}
	dso, err := perfReport(r.file, "dso", "1")
	if err != nil {
		fmt.Fprintf(&sb, ": %v\n\n", err)
		return sb.String()
	}
	fmt.Fprintf(&sb, ", samples by object: %s.\n\n", strings.Join(dso, "; "))
	syms, err := perfReport(r.file, "sym", "1.5")
	if err != nil {
		fmt.Fprintf(&sb, "%v\n\n", err)
		return sb.String()
	}
	sb.WriteString("| self % | symbol |\n|---:|---|\n")
	for _, s := range syms {
		pct, sym, _ := strings.Cut(s, " ")
		fmt.Fprintf(&sb, "| %s | `%s` |\n", pct, strings.ReplaceAll(sym, "|", "\\|"))
	}
	sb.WriteString("\n")
	return sb.String()
}

// perfReport returns "pct name" lines of perf report sorted by key, above
// limit percent of the samples (self time).
func perfReport(file, key, limit string) ([]string, error) {
	out, err := exec.Command("perf", "report", "-i", file, "--stdio", "--no-children", "-g", "none",
		"--sort", key, "--percent-limit", limit).Output()
	if err != nil {
		return nil, fmt.Errorf("perf report --sort %s: %w", key, err)
	}
	var lines []string
	for line := range strings.SplitSeq(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasSuffix(f[0], "%") {
			continue
		}
		name := strings.Join(f[1:], " ")
		name = strings.TrimPrefix(strings.TrimPrefix(name, "[k] "), "[.] ")
		lines = append(lines, f[0]+" "+name)
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("perf report --sort %s: no samples", key)
	}
	return lines, nil
}

// progStat is one BPF program's run-time statistics.
type progStat struct {
	runs uint64
	time time.Duration
}

// bpfStats reads the statistics of every loaded Sluice program, by name.
func bpfStats() map[string]progStat {
	out := map[string]progStat{}
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return out
		}
		id = next
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, ierr := prog.Info()
		st, serr := prog.Stats()
		prog.Close()
		if ierr != nil || serr != nil || !strings.HasPrefix(info.Name, "sluice_") {
			continue
		}
		s := out[info.Name]
		s.runs += st.RunCount
		s.time += st.Runtime
		out[info.Name] = s
	}
}

// bpfTable renders the programs' runs and time between two readings.
func bpfTable(before, after map[string]progStat, requests int64) string {
	var sb strings.Builder
	sb.WriteString("| BPF program | runs | runs per request | ns per run | ns per request |\n|---|---:|---:|---:|---:|\n")
	var total time.Duration
	for _, name := range slices.Sorted(maps.Keys(after)) {
		runs := after[name].runs - before[name].runs
		t := after[name].time - before[name].time
		if runs == 0 {
			continue
		}
		total += t
		fmt.Fprintf(&sb, "| `%s` | %d | %.2f | %.0f | %.0f |\n", name, runs, float64(runs)/float64(requests),
			float64(t.Nanoseconds())/float64(runs), float64(t.Nanoseconds())/float64(requests))
	}
	fmt.Fprintf(&sb, "| all | | | | %.0f |\n\n", float64(total.Nanoseconds())/float64(max(requests, 1)))
	return sb.String()
}
