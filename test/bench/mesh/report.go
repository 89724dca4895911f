package mesh

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
	"github.com/sluice-mesh/sluice/test/bench/chart"
)

// Env describes the run for the report's header.
type Env struct {
	When, Machine, Versions, Command string
	// ClientCPU and ServerCPU are the CPUs the client pod's and the server
	// pod's processes are pinned to.
	ClientCPU, ServerCPU string
}

// Report is everything the Markdown report shows.
type Report struct {
	Env    Env
	Config Config
	Cases  []*CaseResult // the direct case first
	// Profile and Evidence are Markdown sections written by the fixture:
	// where the time goes, and what proves each case took its path.
	Profile, Evidence string
	// ChartDir is the charts' directory relative to the report.
	ChartDir string
	// Handshakes is the cost of a mutual-TLS handshake; nil: not measured.
	Handshakes *Handshakes
}

// Chart is one chart of the report.
type Chart struct {
	File string // name in ChartDir
	Bars chart.Bars
}

// Charts returns the report's charts: latency percentiles by case for each
// fixed-rate workload, maximum throughput by case, and bulk throughput.
func (r *Report) Charts() []Chart {
	var out []Chart
	var maxWs []Workload
	for _, w := range r.Config.Workloads() {
		switch w.Kind {
		case FixedRate:
			b := chart.Bars{Title: w.Title + ": latency (median of rounds, bars: min – max)", YLabel: "µs (log scale)",
				Groups: []string{"p50", "p90", "p99", "p99.9"}, LogY: true}
			for _, c := range r.Cases {
				s := chart.Series{Name: c.Name}
				for _, f := range []Figure{P50, P90, P99, P999} {
					sp := benchkit.Over(c.Runs[w.Key], f)
					s.Values, s.Lo, s.Hi = append(s.Values, sp.Med), append(s.Lo, sp.Lo), append(s.Hi, sp.Hi)
				}
				b.Series = append(b.Series, s)
			}
			out = append(out, Chart{File: "latency-" + w.Key + ".png", Bars: b})
		case MaxRate:
			maxWs = append(maxWs, w)
		case Bulk:
			b := chart.Bars{Title: w.Title, YLabel: "MB/s", Groups: []string{"bulk TCP"}}
			for _, c := range r.Cases {
				sp := benchkit.Over(c.Runs[w.Key], MBps)
				b.Series = append(b.Series, chart.Series{Name: c.Name, Values: []float64{sp.Med}, Lo: []float64{sp.Lo}, Hi: []float64{sp.Hi}})
			}
			out = append(out, Chart{File: "throughput-bulk.png", Bars: b})
		}
	}
	if len(maxWs) > 0 {
		b := chart.Bars{Title: "HTTP/1.1 keep-alive maximum throughput", YLabel: "requests per second"}
		for _, w := range maxWs {
			b.Groups = append(b.Groups, fmt.Sprintf("%d connections", w.Conns))
		}
		for _, c := range r.Cases {
			s := chart.Series{Name: c.Name}
			for _, w := range maxWs {
				sp := benchkit.Over(c.Runs[w.Key], RPS)
				s.Values, s.Lo, s.Hi = append(s.Values, sp.Med), append(s.Lo, sp.Lo), append(s.Hi, sp.Hi)
			}
			b.Series = append(b.Series, s)
		}
		out = append(out, Chart{File: "throughput-http.png", Bars: b})
	}
	return out
}

// WriteCharts renders the charts into dir.
func (r *Report) WriteCharts(dir string) error {
	for _, c := range r.Charts() {
		if err := c.Bars.WritePNG(filepath.Join(dir, c.File)); err != nil {
			return fmt.Errorf("chart %s: %w", c.File, err)
		}
	}
	return nil
}

// Markdown renders the report.
func (r *Report) Markdown() string {
	var sb strings.Builder
	e, cfg := r.Env, r.Config
	sb.WriteString("# Mesh benchmark\n\n")
	fmt.Fprintf(&sb, "Machine: %s.  \nVersions: %s.  \n", e.Machine, e.Versions)
	fmt.Fprintf(&sb, "Run: %s, %d rounds; each round runs every workload against every case, the order of the cases rotating from round to round.  \n", e.When, cfg.Rounds)
	fmt.Fprintf(&sb, "Reproduce: `%s`\n\n", e.Command)
	fmt.Fprintf(&sb, "Each cell: median over the %d rounds of that round's figure (min – max across rounds). "+
		"\"Added\" is the case's figure minus the no-mesh figure of the same round; \"× no mesh\" the ratio to it in the same round.\n\n", cfg.Rounds)

	r.summary(&sb)
	sb.WriteString("\n## Charts\n\n")
	for _, c := range r.Charts() {
		fmt.Fprintf(&sb, "![%s](%s)\n\n", c.Bars.Title, filepath.ToSlash(filepath.Join(r.ChartDir, c.File)))
	}
	for _, w := range cfg.Workloads() {
		r.table(&sb, w)
	}
	r.mtlsCost(&sb)
	r.memory(&sb)
	if r.Profile != "" {
		sb.WriteString("\n## Where the time goes\n\n")
		sb.WriteString(r.Profile)
	}
	sb.WriteString(r.method())
	if r.Evidence != "" {
		sb.WriteString("\n## Evidence that each case took its path\n\n")
		sb.WriteString(r.Evidence)
	}
	return sb.String()
}

// summary states, per workload, how eBPF+sk_msg compares with iptables and
// with nginx, and the targets.
func (r *Report) summary(sb *strings.Builder) {
	sb.WriteString("## Summary\n\n")
	vs, err := Verdicts(r.Config, r.Cases)
	if err != nil {
		fmt.Fprintf(sb, "Not evaluated: %v.\n", err)
		return
	}
	sb.WriteString("### Targets\n\n| workload | target | " + CaseSKMsg + " | other | better by | met |\n|---|---|---:|---:|---:|---|\n")
	for _, v := range vs {
		if !v.Targeted {
			continue
		}
		target := fmt.Sprintf("%s ≥ %.0f %% better than %s", v.What, 100*v.Target, v.Against)
		if v.Target == 0 {
			target = fmt.Sprintf("%s no worse than %s", v.What, v.Against)
		}
		met := "**no**"
		if v.Met() {
			met = "yes"
		}
		sign := "+"
		if v.Better < 0 {
			sign = "−"
		}
		fmt.Fprintf(sb, "| %s | %s | %.0f | %.0f | %s%s | %s |\n", v.Workload, target, v.Ours, v.Theirs, sign, v.margin(), met)
	}
	sb.WriteString("\n### Per workload\n\n")
	last := ""
	for _, v := range vs {
		if v.Workload != last {
			fmt.Fprintf(sb, "- **%s**\n", v.Workload)
			last = v.Workload
		}
		fmt.Fprintf(sb, "  - %s\n", v.sentence())
	}
}

func (r *Report) table(sb *strings.Builder, w Workload) {
	direct := find(r.Cases, CaseDirect)
	fmt.Fprintf(sb, "\n## %s\n\n", w.Title)
	switch w.Kind {
	case FixedRate:
		sb.WriteString("| case | p50 (µs) | p90 (µs) | p99 (µs) | p99.9 (µs) | added p50 (µs) | added p99 (µs) | p50 × no mesh | CPU s / 1000 req: client proxy | server proxy | both pods | failed |\n")
		sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	case MaxRate:
		sb.WriteString("| case | req/s | × no mesh | p50 (µs) | p99 (µs) | CPU s / 1000 req: client proxy | server proxy | both pods | failed |\n")
		sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	case Bulk:
		sb.WriteString("| case | MB/s | × no mesh | CPU s / GB: client proxy | server proxy | both pods |\n")
		sb.WriteString("|---|---:|---:|---:|---:|---:|\n")
	}
	for _, c := range r.Cases {
		rs := c.Runs[w.Key]
		var base []Run
		if direct != nil {
			base = direct.Runs[w.Key]
		}
		dash := func(s string) string {
			if !c.Proxied() {
				return "—"
			}
			return s
		}
		switch w.Kind {
		case FixedRate:
			fmt.Fprintf(sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", c.Name,
				benchkit.Over(rs, P50).Format(0), benchkit.Over(rs, P90).Format(0), benchkit.Over(rs, P99).Format(0), benchkit.Over(rs, P999).Format(0),
				dash(benchkit.Added(rs, base, P50).Format(0)), dash(benchkit.Added(rs, base, P99).Format(0)), dash(benchkit.Ratio(rs, base, P50).Format(2)),
				dash(benchkit.Over(rs, ClientCPUPer1k).Format(3)), dash(benchkit.Over(rs, ServerCPUPer1k).Format(3)), benchkit.Over(rs, PodsCPUPer1k).Format(3), failed(rs))
		case MaxRate:
			fmt.Fprintf(sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", c.Name,
				benchkit.Over(rs, RPS).Format(0), dash(benchkit.Ratio(rs, base, RPS).Format(2)), benchkit.Over(rs, P50).Format(0), benchkit.Over(rs, P99).Format(0),
				dash(benchkit.Over(rs, ClientCPUPer1k).Format(3)), dash(benchkit.Over(rs, ServerCPUPer1k).Format(3)), benchkit.Over(rs, PodsCPUPer1k).Format(3), failed(rs))
		case Bulk:
			fmt.Fprintf(sb, "| %s | %s | %s | %s | %s | %s |\n", c.Name,
				benchkit.Over(rs, MBps).Format(0), dash(benchkit.Ratio(rs, base, MBps).Format(2)),
				dash(benchkit.Over(rs, ClientCPUPerGB).Format(2)), dash(benchkit.Over(rs, ServerCPUPerGB).Format(2)), benchkit.Over(rs, PodsCPUPerGB).Format(2))
		}
	}
}

// memory tabulates the proxies' resident memory.
func (r *Report) memory(sb *strings.Builder) {
	sb.WriteString("\n## Proxy memory (VmRSS, MB = 10^6 bytes)\n\n")
	ws := r.Config.Workloads()
	sb.WriteString("| case | idle after start: client proxy | server proxy |")
	for _, w := range ws {
		fmt.Fprintf(sb, " peak during %s: client | server |", w.Key)
	}
	sb.WriteString("\n|---|---:|---:|" + strings.Repeat("---:|---:|", len(ws)) + "\n")
	for _, c := range r.Cases {
		if !c.Proxied() {
			continue
		}
		fmt.Fprintf(sb, "| %s | %.1f | %.1f |", c.Name, benchkit.KiBToMB(c.IdleRSS[0]), benchkit.KiBToMB(c.IdleRSS[1]))
		for _, w := range ws {
			fmt.Fprintf(sb, " %.1f | %.1f |", benchkit.Over(c.Runs[w.Key], ClientRSS).Hi, benchkit.Over(c.Runs[w.Key], ServerRSS).Hi)
		}
		sb.WriteString("\n")
	}
	sb.WriteString("\nPeaks are the largest of samples taken every 100 ms during the runs of a workload, over all rounds; for nginx, master + worker.\n")
}

func failed(rs []Run) int64 {
	var n int64
	for _, r := range rs {
		n += r.Res.Errors
	}
	return n
}
