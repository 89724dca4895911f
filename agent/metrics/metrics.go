// Package metrics exports the agent's Prometheus metrics: the steering
// programs' per-CPU counters, map fill levels and the enrollment count.
package metrics

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/bpf"
)

// Source is what the collector reads at each scrape.
type Source interface {
	// Counters are the summed counters indexed as bpf.Counter, or nil in
	// iptables mode.
	Counters() ([]uint64, error)
	// MapUsage is the fill level of each map (none in iptables mode).
	MapUsage() []api.MapUsage
	// Enrollments is the number of enrolled pods.
	Enrollments() int
}

var (
	eventsDesc = prometheus.NewDesc("sluice_agent_steering_events_total",
		"Decisions of the steering programs, by event (steered, skipped by reason, sk_msg redirect ok/failed, ...).",
		[]string{"event"}, nil)
	entriesDesc = prometheus.NewDesc("sluice_agent_map_entries",
		"Entries in each eBPF map.", []string{"map"}, nil)
	maxDesc = prometheus.NewDesc("sluice_agent_map_max_entries",
		"Capacity of each eBPF map.", []string{"map"}, nil)
	enrolledDesc = prometheus.NewDesc("sluice_agent_enrolled_pods",
		"Pods whose traffic the agent steers.", nil, nil)
)

// Collector is a prometheus.Collector over a Source.
type Collector struct {
	src Source
	log *slog.Logger
}

// New returns a collector reading src.
func New(src Source, log *slog.Logger) *Collector { return &Collector{src: src, log: log} }

var _ prometheus.Collector = (*Collector)(nil)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- eventsDesc
	ch <- entriesDesc
	ch <- maxDesc
	ch <- enrolledDesc
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(enrolledDesc, prometheus.GaugeValue, float64(c.src.Enrollments()))
	counters, err := c.src.Counters()
	if err != nil {
		c.log.Warn("read counters", "err", err)
	}
	for i, v := range counters {
		if i < len(bpf.Counter) {
			ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(v), bpf.Counter[i])
		}
	}
	for _, m := range c.src.MapUsage() {
		if m.Entries >= 0 {
			ch <- prometheus.MustNewConstMetric(entriesDesc, prometheus.GaugeValue, float64(m.Entries), m.Name)
		}
		ch <- prometheus.MustNewConstMetric(maxDesc, prometheus.GaugeValue, float64(m.MaxEntries), m.Name)
	}
}
