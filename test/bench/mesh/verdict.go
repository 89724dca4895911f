package mesh

import (
	"fmt"
	"math"
	"strings"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

// The targets.
const (
	// TargetP50Cut: eBPF+sk_msg adds at least 20 % less p50 latency than
	// iptables on HTTP/1.1 keep-alive.
	TargetP50Cut = 0.20
	// TargetMaxGain: eBPF+sk_msg sustains at least 15 % more requests per
	// second than iptables on HTTP/1.1 keep-alive.
	TargetMaxGain = 0.15
)

// Verdict is one comparison of the report's summary.
type Verdict struct {
	// Workload is the workload's title.
	Workload string
	// What is being compared, e.g. "added p50 latency (µs)".
	What string
	// Ours and Theirs are the two medians: eBPF+sk_msg's and the other
	// case's (iptables or nginx).
	Ours, Theirs float64
	// Against names the other case.
	Against string
	// Better is how much better ours is, as a fraction of theirs (positive:
	// better; for latency lower, for throughput higher).
	Better float64
	// Target is the fraction Better must reach; Targeted is false for a
	// comparison the issue sets no target for.
	Target   float64
	Targeted bool
}

// Met reports whether a targeted comparison reached its target.
func (v Verdict) Met() bool { return v.Better >= v.Target }

// lowerBetter is how much lower ours is than theirs, as a fraction of
// theirs; a negative or zero baseline (a proxy that adds no latency)
// compares by sign only.
func lowerBetter(ours, theirs float64) float64 {
	if theirs <= 0 {
		if ours <= theirs {
			return 0
		}
		return -1
	}
	return (theirs - ours) / theirs
}

func higherBetter(ours, theirs float64) float64 {
	if theirs <= 0 {
		return 0
	}
	return ours/theirs - 1
}

// find returns the case named name, or nil.
func find(cases []*CaseResult, name string) *CaseResult {
	for _, c := range cases {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Verdicts compares eBPF+sk_msg with iptables and with nginx on every
// workload, marking the targets. It needs the direct, iptables,
// eBPF+sk_msg and nginx cases; without them it returns an error.
func Verdicts(cfg Config, cases []*CaseResult) ([]Verdict, error) {
	direct, ipt, sk, ngx := find(cases, CaseDirect), find(cases, CaseIPTables), find(cases, CaseSKMsg), find(cases, CaseNginx)
	if direct == nil || ipt == nil || sk == nil || ngx == nil {
		return nil, fmt.Errorf("verdicts need the %q, %q, %q and %q cases", CaseDirect, CaseIPTables, CaseSKMsg, CaseNginx)
	}
	var vs []Verdict
	for _, w := range cfg.Workloads() {
		keepAlive := w.Proto == "http" && !w.NewConn
		switch w.Kind {
		case FixedRate:
			for _, other := range []*CaseResult{ipt, ngx} {
				for _, p := range []struct {
					name string
					f    Figure
				}{{"p50", P50}, {"p99", P99}} {
					ours := benchkit.Added(sk.Runs[w.Key], direct.Runs[w.Key], p.f).Med
					theirs := benchkit.Added(other.Runs[w.Key], direct.Runs[w.Key], p.f).Med
					v := Verdict{Workload: w.Title, What: "added " + p.name + " latency (µs)", Ours: ours, Theirs: theirs,
						Against: other.Name, Better: lowerBetter(ours, theirs)}
					switch {
					case other == ipt && p.name == "p50" && keepAlive:
						v.Target, v.Targeted = TargetP50Cut, true
					case other == ngx && p.name == "p99":
						v.Target, v.Targeted = 0, true
					}
					vs = append(vs, v)
				}
			}
		case MaxRate, Bulk:
			f, what := RPS, "requests per second"
			if w.Kind == Bulk {
				f, what = MBps, "MB/s"
			}
			for _, other := range []*CaseResult{ipt, ngx} {
				ours, theirs := benchkit.Over(sk.Runs[w.Key], f).Med, benchkit.Over(other.Runs[w.Key], f).Med
				v := Verdict{Workload: w.Title, What: what, Ours: ours, Theirs: theirs, Against: other.Name, Better: higherBetter(ours, theirs)}
				if other == ipt && keepAlive {
					v.Target, v.Targeted = TargetMaxGain, true
				}
				vs = append(vs, v)
			}
		}
	}
	return vs, nil
}

// sentence says v in words.
func (v Verdict) sentence() string {
	var sb strings.Builder
	word := map[bool]string{true: "better", false: "worse"}[v.Better >= 0]
	fmt.Fprintf(&sb, "%s: %s %.0f against %s %.0f, %s %s", v.What, CaseSKMsg, v.Ours, v.Against, v.Theirs, v.margin(), word)
	if v.Targeted {
		if v.Met() {
			sb.WriteString(" (target met)")
		} else if v.Target > 0 {
			fmt.Fprintf(&sb, " (**target of %.0f %% %s missed**)", 100*v.Target, "better")
		} else {
			sb.WriteString(" (**target missed: worse than nginx**)")
		}
	}
	return sb.String()
}

// margin is how far apart the two figures are: in per cent of theirs, and
// for latencies also in µs (a percentage of a small added latency says
// little on its own).
func (v Verdict) margin() string {
	pct := fmt.Sprintf("%.1f %%", 100*math.Abs(v.Better))
	if strings.Contains(v.What, "latency") {
		return fmt.Sprintf("%.0f µs (%s)", math.Abs(v.Theirs-v.Ours), pct)
	}
	return pct
}
