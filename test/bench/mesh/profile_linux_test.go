package mesh

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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
		"with the kernel's BPF run-time statistics enabled (BPF_ENABLE_STATS, what `bpftool prog show` reports as run_time_ns/run_cnt). "+
		"Without a PMU, perf samples from the timer interrupt: time in the kernel is then charged to where it re-enables interrupts "+
		"(finish_task_switch, _raw_spin_unlock_irqrestore), so the kernel's share below is trustworthy but not its split by function; "+
		"the proxy's own functions are listed with the time of what they call (Go keeps frame pointers, so perf follows its stacks).\n\n", w.Title)
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

// report renders the top of the profile: the share of samples by object
// (kernel, the proxy's binary) and the proxy's own functions by inclusive
// time (with what they call).
func (r *perfRecord) report() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "**%s proxy**", r.who)
	if r.err != nil {
		fmt.Fprintf(&sb, ": perf failed: %v %s\n\n", r.err, r.stderr.String())
		return sb.String()
	}
	dso, err := perfReport(r.file, "--no-children", "--sort", "dso", "--percent-limit", "1")
	if err != nil {
		fmt.Fprintf(&sb, ": %v\n\n", err)
		return sb.String()
	}
	var parts []string
	for _, e := range dso {
		parts = append(parts, e.pcts[0]+" "+e.name)
	}
	fmt.Fprintf(&sb, ", samples by object: %s.\n\n", strings.Join(parts, "; "))
	self, err := perfReport(r.file, "--no-children", "--sort", "sym", "--percent-limit", "0")
	if err != nil {
		fmt.Fprintf(&sb, "%v\n\n", err)
		return sb.String()
	}
	sb.WriteString("| Go package (or the kernel) | self % |\n|---|---:|\n")
	for _, g := range byPackage(self, maxProfileRows/2) {
		fmt.Fprintf(&sb, "| %s | %.1f%% |\n", g.name, g.pct)
	}
	sb.WriteString("\n")
	syms, err := perfReport(r.file, "--children", "--sort", "sym", "--percent-limit", "4")
	if err != nil {
		fmt.Fprintf(&sb, "%v\n\n", err)
		return sb.String()
	}
	sb.WriteString("| with callees % | self % | proxy function |\n|---:|---:|---|\n")
	n := 0
	for _, e := range syms {
		if e.kernel || len(e.pcts) < 2 || n == maxProfileRows || isWrapper(e.name) {
			continue
		}
		n++
		fmt.Fprintf(&sb, "| %s | %s | `%s` |\n", e.pcts[0], e.pcts[1], strings.ReplaceAll(e.name, "|", "\\|"))
	}
	sb.WriteString("\n")
	return sb.String()
}

// isWrapper reports functions at the bottom of every goroutine's or
// thread's stack, which say nothing about where the time goes.
func isWrapper(name string) bool {
	for _, p := range []string{"runtime.goexit", "runtime.mstart", "runtime.main", "runtime.rt0_go"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return strings.Contains(name, ".gowrap") || strings.HasSuffix(name, ".func1")
}

// pkgShare is the self time of one Go package (or the kernel).
type pkgShare struct {
	name string
	pct  float64
}

// byPackage sums self percentages by Go package ("net/http",
// "github.com/sluice-mesh/sluice/proxy/httpproxy"), the kernel's under
// "kernel", and returns the n largest.
func byPackage(es []perfEntry, n int) []pkgShare {
	sums := map[string]float64{}
	for _, e := range es {
		if len(e.pcts) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSuffix(e.pcts[0], "%"), 64)
		if err != nil {
			continue
		}
		sums[goPackage(e)] += v
	}
	out := make([]pkgShare, 0, len(sums))
	for k, v := range sums {
		out = append(out, pkgShare{k, v})
	}
	slices.SortFunc(out, func(a, b pkgShare) int {
		if a.pct != b.pct {
			return cmp.Compare(b.pct, a.pct)
		}
		return strings.Compare(a.name, b.name)
	})
	return out[:min(n, len(out))]
}

// goPackage is the package of a Go symbol: the text up to the first '.'
// after the last '/'.
func goPackage(e perfEntry) string {
	if e.kernel {
		return "kernel"
	}
	name := e.name
	slash := strings.LastIndexByte(name, '/')
	if i := strings.IndexByte(name[slash+1:], '.'); i >= 0 {
		return name[:slash+1+i]
	}
	return name
}

// maxProfileRows bounds the functions listed per proxy.
const maxProfileRows = 16

// perfEntry is a line of perf report: its percentages, whether the symbol
// is the kernel's, and the name.
type perfEntry struct {
	pcts   []string
	kernel bool
	name   string
}

// perfReport runs perf report on file with args (call graphs folded) and
// parses its lines.
func perfReport(file string, args ...string) ([]perfEntry, error) {
	out, err := exec.Command("perf", append([]string{"report", "-i", file, "--stdio", "-g", "none"}, args...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("perf report %v: %w", args, err)
	}
	var entries []perfEntry
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		var e perfEntry
		for len(f) > 0 && strings.HasSuffix(f[0], "%") {
			e.pcts, f = append(e.pcts, f[0]), f[1:]
		}
		if len(e.pcts) == 0 || len(f) == 0 {
			continue
		}
		switch f[0] {
		case "[k]":
			e.kernel, f = true, f[1:]
		case "[.]":
			f = f[1:]
		}
		e.name = strings.Join(f, " ")
		entries = append(entries, e)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("perf report %v: no samples", args)
	}
	return entries, nil
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
