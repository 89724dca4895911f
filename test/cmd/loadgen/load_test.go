package main

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// callLog records when ops were called.
type callLog struct {
	mu    sync.Mutex
	times []time.Time
}

func (l *callLog) op(d time.Duration) op {
	return func() error {
		l.mu.Lock()
		l.times = append(l.times, time.Now())
		l.mu.Unlock()
		if d > 0 {
			time.Sleep(d)
		}
		return nil
	}
}

func opsOf(n int, f func() op) []op {
	ops := make([]op, n)
	for i := range ops {
		ops[i] = f()
	}
	return ops
}

// A fixed-rate run sends exactly rate × duration requests, spread over time
// at the rate rather than in a burst, whatever the number of workers.
func TestFixedRateSendsOnSchedule(t *testing.T) {
	for _, workers := range []int{1, 4} {
		var log callLog
		const rate, warm, measure = 1000.0, 50 * time.Millisecond, 300 * time.Millisecond
		// The schedule starts after this instant; the first call's own time
		// is no reference (its goroutine may run late).
		before := time.Now()
		st := runFixedRate(rate, warm, measure, opsOf(workers, func() op { return log.op(0) }))
		if st.ok != 300 || st.errs != 0 || st.lat.count() != 300 || st.lag.count() != 300 {
			t.Fatalf("%d workers: %d ok, %d errors, %d latencies, %d lags; want 300 measured requests", workers, st.ok, st.errs, st.lat.count(), st.lag.count())
		}
		if len(log.times) != 350 {
			t.Fatalf("%d workers: %d calls, want 350 (50 warm-up + 300)", workers, len(log.times))
		}
		slices.SortFunc(log.times, time.Time.Compare)
		for k := 1; k < len(log.times); k += 50 {
			// Call k was scheduled k intervals after the schedule's start and
			// never starts early.
			if got, want := log.times[k].Sub(before), time.Duration(k)*time.Millisecond; got < want {
				t.Fatalf("%d workers: call %d came %v after the run began, before its schedule (%v)", workers, k, got, want)
			}
		}
		if st.elapsed < measure-time.Millisecond {
			t.Errorf("%d workers: measured phase lasted %v, less than its schedule (299 intervals of 1 ms)", workers, st.elapsed)
		}
	}
}

// A stall delays the requests scheduled behind it, and their latency counts
// from when they were due: a 100 ms stall at 1000 req/s leaves dozens of
// requests at ≥ 50 ms, not one (what a closed-loop client would record).
func TestFixedRateCountsQueueing(t *testing.T) {
	var n atomic.Int64
	stall := func() error {
		if n.Add(1) == 100 { // a measured request (50 are warm-up)
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	st := runFixedRate(1000, 50*time.Millisecond, 300*time.Millisecond, []op{stall})
	var slow uint64
	for i, c := range st.lat.counts {
		if lo, _ := bucketRange(i); lo >= int64(50*time.Millisecond) {
			slow += c
		}
	}
	if slow < 50 {
		t.Fatalf("%d requests at ≥ 50 ms, want ≥ 50: the requests queued behind the stall must count their wait", slow)
	}
	if st.lag.quantile(0.99) < int64(50*time.Millisecond) {
		t.Errorf("send lag p99 %v, want ≥ 50 ms: the sends behind the stall were late", time.Duration(st.lag.quantile(0.99)))
	}
	if st.ok != 300 {
		t.Errorf("%d measured requests, want 300", st.ok)
	}
}

// Failures are counted, the first is kept, and a run that fails on and on
// stops early instead of spinning.
func TestFailuresEndTheRun(t *testing.T) {
	boom := errors.New("connection refused")
	var calls atomic.Int64
	fail := func() error { calls.Add(1); return boom }
	tests := []struct {
		name string
		run  func([]op) *stats
	}{
		{"fixed rate", func(ops []op) *stats { return runFixedRate(1e6, 0, 10*time.Second, ops) }},
		{"closed loop", func(ops []op) *stats { return runClosedLoop(0, 10*time.Second, ops) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls.Store(0)
			st := tt.run(opsOf(3, func() op { return fail }))
			if !errors.Is(st.first, boom) || !errors.Is(st.first, errTooManyErrors) {
				t.Errorf("first error %v, want %v and %v", st.first, boom, errTooManyErrors)
			}
			if st.errs < maxErrors || st.errs != calls.Load() || st.errs > maxErrors+3 {
				t.Errorf("%d errors counted for %d calls, want about %d", st.errs, calls.Load(), maxErrors)
			}
			if st.ok != 0 || st.lat.count() != 0 {
				t.Errorf("%d ok, %d latencies, want none", st.ok, st.lat.count())
			}
		})
	}
}

// A closed loop counts only requests that completed in the measured phase:
// never more than the workers could have completed back to back.
func TestClosedLoopCounts(t *testing.T) {
	var log callLog
	const workers, measure = 3, 200 * time.Millisecond
	st := runClosedLoop(50*time.Millisecond, measure, opsOf(workers, func() op { return log.op(time.Millisecond) }))
	if st.ok == 0 || st.errs != 0 || uint64(st.ok) != st.lat.count() {
		t.Fatalf("%d ok, %d errors, %d latencies", st.ok, st.errs, st.lat.count())
	}
	if limit := int64(workers * (measure/time.Millisecond + 1)); st.ok > limit {
		t.Errorf("%d requests counted; 1 ms requests on %d workers allow at most %d in %v", st.ok, workers, limit, measure)
	}
	if int64(len(log.times)) <= st.ok {
		t.Errorf("%d calls, %d counted: the warm-up must not be counted", len(log.times), st.ok)
	}
	if st.lat.min < int64(time.Millisecond) {
		t.Errorf("shortest latency %v, below the op's 1 ms", time.Duration(st.lat.min))
	}
}
