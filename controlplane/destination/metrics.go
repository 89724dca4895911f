package destination

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of updates, the kind label of destination_updates_sent_total.
const (
	kindAdd         = "add"
	kindRemove      = "remove"
	kindNoEndpoints = "no_endpoints"
)

// metrics are the service's Prometheus metrics.
type metrics struct {
	streams   prometheus.Gauge
	updates   *prometheus.CounterVec
	overflows prometheus.Counter
	watched   prometheus.GaugeFunc
}

func newMetrics(watched func() float64) *metrics {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "destination_streams",
			Help: "Open Destination.Get streams.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "destination_updates_sent_total",
			Help: "Updates sent on Destination.Get streams, by kind (add, remove, no_endpoints).",
		}, []string{"kind"}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "destination_queue_overflows_total",
			Help: "Streams ended because their client read updates more slowly than they came and the update queue overflowed.",
		}),
		watched: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "destination_watched_targets",
			Help: "Destinations (service ports, pod and cluster IPs) watched for at least one stream.",
		}, watched),
	}
	for _, k := range []string{kindAdd, kindRemove, kindNoEndpoints} {
		m.updates.WithLabelValues(k)
	}
	return m
}

// register registers m on reg.
func (m *metrics) register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.streams, m.updates, m.overflows, m.watched} {
		errs = append(errs, reg.Register(c))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("register destination metrics: %w", err)
	}
	return nil
}
