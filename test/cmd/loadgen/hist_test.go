package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// Every value lands in a bucket whose range holds it, buckets are
// contiguous, and a bucket is at most 1/128 of its values wide.
func TestBucketsCoverValues(t *testing.T) {
	values := []int64{0, 1, 127, 128, 255, 256, 257, 511, 512, 1000, 4095, 4096, 123456789, 1 << 40, math.MaxInt64 - 1, math.MaxInt64}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		values = append(values, rng.Int64N(1<<uint(rng.IntN(62)+1)))
	}
	for _, v := range values {
		i := bucketOf(v)
		lo, hi := bucketRange(i)
		if v < lo || v > hi {
			t.Fatalf("value %d in bucket %d = [%d, %d]", v, i, lo, hi)
		}
		if i >= numBuckets {
			t.Fatalf("value %d: bucket %d ≥ %d buckets", v, i, numBuckets)
		}
		if float64(hi-lo) > float64(lo)/128 {
			t.Fatalf("value %d: bucket [%d, %d] wider than 1/128 of its values", v, lo, hi)
		}
	}
	for i := 1; i < numBuckets; i++ {
		_, prevHi := bucketRange(i - 1)
		lo, _ := bucketRange(i)
		if lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ends at %d", i, lo, prevHi)
		}
	}
}

// Quantiles agree with the exact order statistics to within the bucket
// precision and never understate them.
func TestQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tests := []struct {
		name string
		gen  func(i int) int64
	}{
		{"1..10000", func(i int) int64 { return int64(i + 1) }},
		{"constant", func(int) int64 { return 250_000 }},
		{"exponential µs", func(int) int64 { return int64(rng.ExpFloat64() * 100_000) }},
		{"bimodal with tail", func(i int) int64 {
			if i%1000 == 0 {
				return 50_000_000
			}
			return 80_000 + rng.Int64N(40_000)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h hist
			var vs []int64
			for i := range 10000 {
				v := tt.gen(i)
				h.record(v)
				vs = append(vs, v)
			}
			slices.Sort(vs)
			if h.count() != uint64(len(vs)) {
				t.Fatalf("count %d, want %d", h.count(), len(vs))
			}
			for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
				rank := max(int(math.Ceil(q*float64(len(vs)))), 1)
				exact := vs[rank-1]
				got := h.quantile(q)
				if got < exact || float64(got-exact) > float64(exact)/128+1 {
					t.Errorf("quantile %v = %d, exact %d", q, got, exact)
				}
			}
			if h.quantile(1) != vs[len(vs)-1] {
				t.Errorf("quantile 1 = %d, want the maximum %d", h.quantile(1), vs[len(vs)-1])
			}
		})
	}
}

// Merging per-worker histograms gives the histogram of all values.
func TestMerge(t *testing.T) {
	var a, b, all, empty hist
	for i := range 5000 {
		v := int64(i * 37 % 100_003)
		if i%3 == 0 {
			a.record(v)
		} else {
			b.record(v)
		}
		all.record(v)
	}
	var m hist
	m.merge(&a)
	m.merge(&empty)
	m.merge(&b)
	if m.count() != all.count() || m.mean() != all.mean() || m.min != all.min || m.max != all.max {
		t.Fatalf("merged n=%d mean=%v min=%d max=%d, want n=%d mean=%v min=%d max=%d",
			m.count(), m.mean(), m.min, m.max, all.count(), all.mean(), all.min, all.max)
	}
	for _, q := range []float64{0.5, 0.99, 0.999} {
		if m.quantile(q) != all.quantile(q) {
			t.Errorf("merged quantile %v = %d, want %d", q, m.quantile(q), all.quantile(q))
		}
	}
	if empty.quantile(0.5) != 0 || empty.mean() != 0 {
		t.Errorf("empty histogram: quantile %d, mean %v, want 0", empty.quantile(0.5), empty.mean())
	}
}
