package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// bucketsMs are the upper bounds, in milliseconds, of response_latency_ms
// and tcp_connection_duration_ms: Linkerd 2.x's latency bounds (its
// latency::BOUNDS, which both histograms used), followed by +Inf. Never
// written.
var bucketsMs = [...]float64{
	1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
	1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
}

// bucketBounds are bucketsMs as durations, for observing without floats.
// Never written.
var bucketBounds = func() (b [len(bucketsMs)]time.Duration) {
	for i, ms := range bucketsMs {
		b[i] = time.Duration(ms) * time.Millisecond
	}
	return b
}()

// histogram is a lock-free histogram over bucketsMs. counts holds
// per-bucket (not cumulative) counts, the last one for +Inf; the sum is
// kept in nanoseconds and exposed in milliseconds.
type histogram struct {
	counts [len(bucketsMs) + 1]atomic.Uint64
	sumNs  atomic.Uint64
}

// observe records d; negative durations count as zero. A value equal to a
// bound falls in that bound's bucket (le means "less or equal").
func (h *histogram) observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	lo, hi := 0, len(bucketBounds)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if bucketBounds[mid] < d {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	h.counts[lo].Add(1)
	h.sumNs.Add(uint64(d))
}

// metric returns the histogram's current value as a const metric of d.
func (h *histogram) metric(d *prometheus.Desc) prometheus.Metric {
	buckets := make(map[float64]uint64, len(bucketsMs))
	var n uint64
	for i, ms := range bucketsMs {
		n += h.counts[i].Load()
		buckets[ms] = n
	}
	n += h.counts[len(bucketsMs)].Load()
	sum := float64(h.sumNs.Load()) / float64(time.Millisecond)
	m, err := prometheus.NewConstHistogram(d, n, sum, buckets)
	return orInvalid(d, m, err)
}

// value returns a const counter or gauge of d.
func value(d *prometheus.Desc, t prometheus.ValueType, v float64) prometheus.Metric {
	m, err := prometheus.NewConstMetric(d, t, v)
	return orInvalid(d, m, err)
}

// orInvalid passes m on, or an invalid metric carrying err, so that a bug
// in label building fails the scrape visibly instead of panicking.
func orInvalid(d *prometheus.Desc, m prometheus.Metric, err error) prometheus.Metric {
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}
