package proxytest

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is a parsed Prometheus text exposition, by family name.
type Metrics map[string]*dto.MetricFamily

// Labels are a sample's labels, or the labels a query matches.
type Labels map[string]string

// Absent, as a value in a query's Labels, matches samples without that
// label (or with it empty).
const Absent = "\x00absent"

// Sample is one sample of a series.
type Sample struct {
	Labels Labels
	Value  float64
}

// ParseMetrics parses the Prometheus text format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return Metrics(fams), nil
}

// Samples returns the samples named name whose labels match: every label in
// match has that value (or, for Absent, is missing). Names are the ones a
// PromQL query uses: a counter or gauge by its name; a histogram by
// name_bucket (with an le label; +Inf written "+Inf"), name_count or
// name_sum. Samples are sorted by their labels.
func (m Metrics) Samples(name string, match Labels) []Sample {
	var out []Sample
	add := func(labels Labels, v float64) {
		if matches(labels, match) {
			out = append(out, Sample{Labels: labels, Value: v})
		}
	}
	if f, ok := m[name]; ok && f.GetType() != dto.MetricType_HISTOGRAM {
		for _, s := range f.GetMetric() {
			add(labelsOf(s), value(s))
		}
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		base, ok := strings.CutSuffix(name, suffix)
		f := m[base]
		if !ok || f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, s := range f.GetMetric() {
			h := s.GetHistogram()
			switch suffix {
			case "_count":
				add(labelsOf(s), float64(h.GetSampleCount()))
			case "_sum":
				add(labelsOf(s), h.GetSampleSum())
			case "_bucket":
				inf := false
				for _, b := range h.GetBucket() {
					l := labelsOf(s)
					l["le"] = formatLE(b.GetUpperBound())
					inf = inf || math.IsInf(b.GetUpperBound(), 1)
					add(l, float64(b.GetCumulativeCount()))
				}
				if !inf { // implicit in some expositions
					l := labelsOf(s)
					l["le"] = "+Inf"
					add(l, float64(h.GetSampleCount()))
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b Sample) int { return strings.Compare(a.Labels.String(), b.Labels.String()) })
	return out
}

// Sum adds up the values of the samples Samples(name, match) returns.
func (m Metrics) Sum(name string, match Labels) float64 {
	var sum float64
	for _, s := range m.Samples(name, match) {
		sum += s.Value
	}
	return sum
}

// Format lists the samples of name matching match, one per line, for
// failure messages.
func (m Metrics) Format(name string, match Labels) string {
	var b strings.Builder
	for _, s := range m.Samples(name, match) {
		fmt.Fprintf(&b, "%s%s %g\n", name, s.Labels, s.Value)
	}
	if b.Len() == 0 {
		return fmt.Sprintf("(no %s%s)\n", name, match)
	}
	return b.String()
}

// String writes l as PromQL does: {a="1",b="2"}, sorted by name.
func (l Labels) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		v := l[k]
		if v == Absent {
			parts = append(parts, k+`=""`)
			continue
		}
		parts = append(parts, k+"="+strconv.Quote(v))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func matches(labels, match Labels) bool {
	for k, want := range match {
		got, ok := labels[k]
		if want == Absent {
			if ok && got != "" {
				return false
			}
			continue
		}
		if !ok || got != want {
			return false
		}
	}
	return true
}

func labelsOf(s *dto.Metric) Labels {
	l := make(Labels, len(s.GetLabel())+1)
	for _, p := range s.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}

func value(s *dto.Metric) float64 {
	switch {
	case s.Counter != nil:
		return s.GetCounter().GetValue()
	case s.Gauge != nil:
		return s.GetGauge().GetValue()
	default:
		return s.GetUntyped().GetValue()
	}
}

// formatLE writes a bucket bound as the exposition does: "50", "0.5",
// "+Inf".
func formatLE(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
