package main

import (
	"math"
	"math/bits"
)

// subBits sets the histogram's precision: each power of two is split into
// 2^subBits linear sub-buckets, so a recorded value is known to within
// 1/2^subBits (under 0.8 %) of itself, as HdrHistogram with two to three
// significant digits. Values below 2^(subBits+1) are counted exactly.
const subBits = 7

// numBuckets covers every non-negative int64.
const numBuckets = (64 - subBits) << subBits

// hist is a log-linear histogram of non-negative values (latencies in
// nanoseconds here). The zero value is empty and ready to use; it is not
// safe for concurrent use (give each goroutine its own and merge).
type hist struct {
	counts   []uint64 // allocated on first record
	n        uint64
	sum      float64
	min, max int64
}

// bucketOf returns the index of the bucket that holds v (v ≥ 0).
func bucketOf(v int64) int {
	u := uint64(v)
	if u < 1<<(subBits+1) {
		return int(u)
	}
	exp := bits.Len64(u) - subBits - 1 // u >> exp is in [2^subBits, 2^(subBits+1))
	return (exp+1)<<subBits + int(u>>exp) - 1<<subBits
}

// bucketRange returns the smallest and the largest value of bucket i.
func bucketRange(i int) (lo, hi int64) {
	if i < 1<<(subBits+1) {
		return int64(i), int64(i)
	}
	exp := i>>subBits - 1
	m := uint64(i&(1<<subBits-1) + 1<<subBits)
	lo64 := m << exp
	hi64 := (m+1)<<exp - 1
	if hi64 > math.MaxInt64 {
		hi64 = math.MaxInt64
	}
	return int64(lo64), int64(hi64)
}

// record adds one value; negative values count as 0.
func (h *hist) record(v int64) {
	v = max(v, 0)
	if h.counts == nil {
		h.counts = make([]uint64, numBuckets)
	}
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if h.n == 0 || v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// merge adds every value of o to h.
func (h *hist) merge(o *hist) {
	if o.n == 0 {
		return
	}
	if h.counts == nil {
		h.counts = make([]uint64, numBuckets)
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	if h.n == 0 || o.max > h.max {
		h.max = o.max
	}
	h.n += o.n
	h.sum += o.sum
}

// count returns the number of recorded values.
func (h *hist) count() uint64 { return h.n }

// mean returns the exact mean of the recorded values (0 when empty).
func (h *hist) mean() float64 {
	if h.n == 0 {
		return 0
	}
	return h.sum / float64(h.n)
}

// quantile returns the value at quantile q (0 ≤ q ≤ 1): the largest value of
// the bucket that holds the ceil(q·n)-th smallest value, capped at the
// recorded maximum, so it never understates (as HdrHistogram's
// highest-equivalent value). It is 0 when empty.
func (h *hist) quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketRange(i)
			return min(max(hi, h.min), h.max)
		}
	}
	return h.max
}
