package main

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// op performs one request and returns an error if it failed. Each worker has
// its own op, called by one goroutine at a time (one connection per worker
// for HTTP/1.1; gRPC workers share a ClientConn).
type op func() error

// maxErrors ends a run early: a load generator that spins on a refused
// connection measures nothing.
const maxErrors = 1000

// errTooManyErrors is the error of a run that ended early.
var errTooManyErrors = errors.New("too many failed requests")

// stats is what one run measured. Latencies are in nanoseconds.
type stats struct {
	lat     hist          // per measured request: response time from its scheduled send
	lag     hist          // fixed rate: how late each measured send started
	ok      int64         // measured requests that succeeded
	errs    int64         // failed requests (warm-up included)
	first   error         // the first failure
	elapsed time.Duration // the measured phase
}

// worker is one load goroutine's state; merged into stats at the end.
type worker struct {
	lat, lag hist
	ok, errs int64
	first    error
}

// step makes one request for w with do and records it; it returns stop when
// the worker is done, and the request's error.
type step func(w *worker, do op) (stop bool, err error)

// runWorkers runs one goroutine per op, each calling next until it stops or
// the run has failed maxErrors times, and merges what they recorded.
func runWorkers(ops []op, next step, measureStart time.Time, fixedLen time.Duration) *stats {
	var errs atomic.Int64
	ws := make([]worker, len(ops))
	var wg sync.WaitGroup
	for k, do := range ops {
		w := &ws[k]
		wg.Go(func() {
			for errs.Load() < maxErrors {
				stop, err := next(w, do)
				if stop {
					return
				}
				if err != nil {
					w.errs++
					if w.first == nil {
						w.first = err
					}
					errs.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := fixedLen
	if elapsed == 0 {
		elapsed = time.Since(measureStart)
	}
	st := &stats{elapsed: elapsed}
	for i := range ws {
		w := &ws[i]
		st.lat.merge(&w.lat)
		st.lag.merge(&w.lag)
		st.ok += w.ok
		st.errs += w.errs
		if st.first == nil {
			st.first = w.first
		}
	}
	if st.errs >= maxErrors {
		st.first = errors.Join(errTooManyErrors, st.first)
	}
	return st
}

// runFixedRate sends rate requests per second in total, over the workers,
// for warmup (not measured) and then measure. Request i is scheduled at
// start + i/rate whether or not earlier requests have completed, and its
// latency is measured from that scheduled time, not from when a worker got
// to send it (wrk2's correction of coordinated omission): when every worker
// is busy, requests queue, and the queueing counts as latency, as it would
// for a client that does not wait for its previous request. The measured
// phase lasts from the first measured request's schedule to the last answer.
func runFixedRate(rate float64, warmup, measure time.Duration, ops []op) *stats {
	interval := time.Duration(float64(time.Second) / rate)
	warmN := int64(warmup / interval)
	total := warmN + int64(measure/interval)
	start := time.Now().Add(5 * time.Millisecond)
	measureStart := start.Add(time.Duration(warmN) * interval)
	var ticket atomic.Int64
	return runWorkers(ops, func(w *worker, do op) (bool, error) {
		i := ticket.Add(1) - 1
		if i >= total {
			return true, nil
		}
		at := start.Add(time.Duration(i) * interval)
		waitUntil(at)
		sent := time.Now()
		if err := do(); err != nil {
			return false, err
		}
		if i >= warmN {
			w.lat.record(int64(time.Since(at)))
			w.lag.record(int64(sent.Sub(at)))
			w.ok++
		}
		return false, nil
	}, measureStart, 0)
}

// runClosedLoop keeps every worker busy, each sending its next request as
// soon as the previous one is answered, for warmup and then measure; it
// counts the requests that completed within the measured phase. Its
// latencies are those of a closed loop (they omit queueing by design) and
// serve only as a sanity check.
func runClosedLoop(warmup, measure time.Duration, ops []op) *stats {
	measureStart := time.Now().Add(warmup)
	end := measureStart.Add(measure)
	return runWorkers(ops, func(w *worker, do op) (bool, error) {
		t0 := time.Now()
		if !t0.Before(end) {
			return true, nil
		}
		if err := do(); err != nil {
			return false, err
		}
		if done := time.Now(); !done.Before(measureStart) && done.Before(end) {
			w.lat.record(int64(done.Sub(t0)))
			w.ok++
		}
		return false, nil
	}, measureStart, measure)
}
