package balance_test

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/balance"
)

// call runs one call on e lasting d on the fake clock.
func call(clk *clock, e *balance.Endpoint[int], d time.Duration, failed bool) {
	c := e.Start()
	clk.Advance(d)
	c.End(failed)
}

// fail runs n failed calls of 1 ms on e.
func fail(clk *clock, e *balance.Endpoint[int], n int) {
	for range n {
		call(clk, e, time.Millisecond, true)
	}
}

func pick(t *testing.T, b *balance.Balancer[int]) *balance.Endpoint[int] {
	t.Helper()
	e, err := b.Pick()
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	return e
}

// get returns the endpoint with key.
func get(t *testing.T, b *balance.Balancer[int], key netip.AddrPort) *balance.Endpoint[int] {
	t.Helper()
	e, ok := b.Endpoint(key)
	if !ok {
		t.Fatalf("no endpoint %v", key)
	}
	return e
}

func near(got, want time.Duration) bool {
	return math.Abs(float64(got-want)) <= float64(time.Microsecond)
}

func TestEstimate(t *testing.T) {
	e1 := math.Exp(-1)
	for _, tc := range []struct {
		name  string
		steps func(clk *clock, e *balance.Endpoint[int])
		want  time.Duration
	}{
		{"new endpoint starts at DefaultRTT", func(*clock, *balance.Endpoint[int]) {}, 30 * time.Millisecond},
		{"higher sample replaces the estimate at once", func(clk *clock, e *balance.Endpoint[int]) {
			call(clk, e, 100*time.Millisecond, false)
		}, 100 * time.Millisecond},
		{"idle estimate decays towards zero", func(clk *clock, e *balance.Endpoint[int]) {
			call(clk, e, 100*time.Millisecond, false)
			clk.Advance(10 * time.Second)
		}, time.Duration(100e6 * e1)},
		{"lower sample is blended in by elapsed time", func(clk *clock, e *balance.Endpoint[int]) {
			call(clk, e, 100*time.Millisecond, false)
			clk.Advance(10*time.Second - 10*time.Millisecond)
			call(clk, e, 10*time.Millisecond, false) // 10 s after the last sample
		}, time.Duration(100e6*e1 + 10e6*(1-e1))},
		{"lower sample right after counts for nothing", func(clk *clock, e *balance.Endpoint[int]) {
			call(clk, e, 100*time.Millisecond, false)
			c := e.Start()
			c2 := e.Start()
			clk.Advance(time.Millisecond)
			c.End(false)
			c2.End(false)
		}, time.Duration(100e6 * math.Exp(-0.001/10))},
		{"failed calls feed the estimate too", func(clk *clock, e *balance.Endpoint[int]) {
			call(clk, e, 200*time.Millisecond, true)
		}, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newBalancer(t, balance.Options{}, 1)
			tc.steps(clk, pick(t, b))
			if got := stats(t, b, addr(1)).RTT; !near(got, tc.want) {
				t.Errorf("RTT = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestOptionsDefaultRTTAndDecay(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{DefaultRTT: 5 * time.Millisecond, Decay: time.Second}, 1)
	if got := stats(t, b, addr(1)).RTT; got != 5*time.Millisecond {
		t.Errorf("initial RTT = %v, want 5ms", got)
	}
	clk.Advance(time.Second)
	if got, want := stats(t, b, addr(1)).RTT, time.Duration(5e6*math.Exp(-1)); !near(got, want) {
		t.Errorf("RTT after one Decay = %v, want %v", got, want)
	}
}

func TestPickCost(t *testing.T) {
	// Two endpoints are always both of the two choices, so Pick is the
	// cheaper one: rtt·(pending+1)/weight.
	for _, tc := range []struct {
		name    string
		weights []uint32
		rtt     [2]time.Duration // set by one call each
		pending [2]int
		want    int // 1 or 2
	}{
		{"lower latency wins", []uint32{1, 1}, [2]time.Duration{50 * time.Millisecond, 40 * time.Millisecond}, [2]int{0, 0}, 2},
		{"pending load steers away", []uint32{1, 1}, [2]time.Duration{40 * time.Millisecond, 40 * time.Millisecond}, [2]int{0, 1}, 1},
		{"load outweighs latency", []uint32{1, 1}, [2]time.Duration{100 * time.Millisecond, 40 * time.Millisecond}, [2]int{0, 3}, 1},
		{"latency outweighs light load", []uint32{1, 1}, [2]time.Duration{100 * time.Millisecond, 40 * time.Millisecond}, [2]int{0, 1}, 2},
		{"weight divides the cost", []uint32{1, 3}, [2]time.Duration{40 * time.Millisecond, 100 * time.Millisecond}, [2]int{0, 0}, 2},
		{"weight and load", []uint32{1, 3}, [2]time.Duration{40 * time.Millisecond, 40 * time.Millisecond}, [2]int{0, 3}, 1},
		{"weight 0 counts as 1", []uint32{0, 2}, [2]time.Duration{40 * time.Millisecond, 40 * time.Millisecond}, [2]int{0, 0}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newBalancer(t, balance.Options{}, tc.weights...)
			for i := range 2 {
				call(clk, get(t, b, addr(i+1)), tc.rtt[i], false)
			}
			for i := range 2 {
				e := get(t, b, addr(i+1))
				for range tc.pending[i] {
					defer e.Start().End(false)
				}
			}
			for range 20 {
				if e := pick(t, b); e.Key() != addr(tc.want) || e.Value() != tc.want {
					t.Fatalf("picked %v (value %d), want endpoint %d; stats %+v", e.Key(), e.Value(), tc.want, b.Snapshot())
				}
			}
		})
	}
}

func TestPendingSteersAway(t *testing.T) {
	// Calls that do not end make their endpoint costlier: with equal
	// latencies, new calls spread so that pending stays even.
	b, _ := newBalancer(t, balance.Options{}, 1, 1, 1)
	var calls []balance.Call
	for range 30 {
		calls = append(calls, pick(t, b).Start())
	}
	for _, st := range b.Snapshot() {
		if st.Pending < 8 || st.Pending > 12 {
			t.Errorf("%v has %d pending of 30, want about 10", st.Key, st.Pending)
		}
	}
	for _, c := range calls {
		c.End(false)
	}
	for _, st := range b.Snapshot() {
		if st.Pending != 0 {
			t.Errorf("%v has %d pending after every End", st.Key, st.Pending)
		}
	}
}

func TestWeightsShare(t *testing.T) {
	// Under steady load, a weight-3 endpoint takes about three times the
	// requests of a weight-1 endpoint of the same latency.
	b, clk := newBalancer(t, balance.Options{}, 1, 3)
	s := &sim{b: b, clk: clk, interval: time.Millisecond,
		latency: func(netip.AddrPort, int) time.Duration { return 20 * time.Millisecond }}
	s.run(t, 2*time.Second)
	picks, _ := s.run(t, 20*time.Second)
	s.drain()
	ratio := float64(picks[addr(2)]) / float64(picks[addr(1)])
	t.Logf("picks %v, ratio %.2f", picks, ratio)
	if ratio < 2.5 || ratio > 3.5 {
		t.Errorf("weight 3 : weight 1 took %.2f : 1 of the requests, want about 3", ratio)
	}
}

func TestFailureAccrual(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{}, 1, 1)
	a := get(t, b, addr(1))
	fail(clk, a, 6)
	if st := stats(t, b, addr(1)); st.Failures != 6 || !st.BackedOffUntil.IsZero() {
		t.Fatalf("after 6 failures: %+v, want 6 failures and available", st)
	}
	call(clk, a, time.Millisecond, false)
	if st := stats(t, b, addr(1)); st.Failures != 0 {
		t.Fatalf("a success did not reset the failures: %+v", st)
	}
	fail(clk, a, 6)
	if st := stats(t, b, addr(1)); !st.BackedOffUntil.IsZero() {
		t.Fatalf("backed off after 6 failures: %+v", st)
	}
	inflight := a.Start()
	call(clk, a, time.Millisecond, true)
	st := stats(t, b, addr(1))
	if st.Failures != 7 || st.BackedOffUntil.IsZero() {
		t.Fatalf("after 7 consecutive failures: %+v, want backed off", st)
	}
	if d := st.BackedOffUntil.Sub(clk.Now()); d < 750*time.Millisecond || d > 1250*time.Millisecond {
		t.Errorf("first backoff %v, want 1s ±25%%", d)
	}
	for range 100 {
		if e := pick(t, b); e.Key() != addr(2) {
			t.Fatalf("picked backed-off endpoint %v", e.Key())
		}
	}
	// A call begun before the backoff does not restore the endpoint.
	inflight.End(false)
	if st := stats(t, b, addr(1)); st.BackedOffUntil.IsZero() {
		t.Errorf("a call that began before the backoff restored the endpoint")
	}
}

func TestFailureLimitOption(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{FailureLimit: 2}, 1)
	e := pick(t, b)
	call(clk, e, time.Millisecond, true)
	if _, err := b.Pick(); err != nil {
		t.Fatalf("Pick after 1 failure: %v", err)
	}
	call(clk, e, time.Millisecond, true)
	if _, err := b.Pick(); !errors.Is(err, balance.ErrUnavailable) {
		t.Fatalf("Pick after 2 failures with FailureLimit 2: %v, want ErrUnavailable", err)
	}
}

// backOff makes the only endpoint of b fail until it is backed off.
func backOff(t *testing.T, b *balance.Balancer[int], clk *clock) {
	t.Helper()
	e := pick(t, b)
	fail(clk, e, 7)
}

func TestBackoffDoublesWithJitterAndCap(t *testing.T) {
	for seed := range uint64(20) {
		b, clk := newBalancer(t, balance.Options{Rand: splitmix(seed)}, 1)
		backOff(t, b, clk)
		var got []time.Duration
		for n := 1; n <= 12; n++ {
			until := stats(t, b, addr(1)).BackedOffUntil
			if until.IsZero() {
				t.Fatalf("seed %d: not backed off after failed probe %d", seed, n-1)
			}
			d := until.Sub(clk.Now())
			got = append(got, d)
			nominal := min(time.Second<<(n-1), 60*time.Second)
			lo, hi := time.Duration(float64(nominal)*0.75), min(time.Duration(float64(nominal)*1.25), 60*time.Second)
			if d < lo || d > hi {
				t.Errorf("seed %d: backoff %d = %v, want in [%v, %v]", seed, n, d, lo, hi)
			}
			// Not yet due: fail fast.
			clk.Set(until.Add(-time.Millisecond))
			if _, err := b.Pick(); !errors.Is(err, balance.ErrUnavailable) {
				t.Fatalf("seed %d: Pick before the backoff ends: %v, want ErrUnavailable", seed, err)
			}
			clk.Set(until)
			probe := pick(t, b)
			call(clk, probe, time.Millisecond, true)
		}
		if seed == 0 {
			t.Logf("backoffs: %v", got)
		}
	}
}

func TestBackoffJitterVaries(t *testing.T) {
	seen := map[time.Duration]bool{}
	for seed := range uint64(10) {
		b, clk := newBalancer(t, balance.Options{Rand: splitmix(seed)}, 1)
		backOff(t, b, clk)
		seen[stats(t, b, addr(1)).BackedOffUntil.Sub(clk.Now())] = true
	}
	if len(seen) < 5 {
		t.Errorf("10 seeds gave %d distinct first backoffs (%v), want jitter", len(seen), seen)
	}
}

func TestBackoffOptions(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{BackoffMin: 100 * time.Millisecond, BackoffMax: 300 * time.Millisecond}, 1)
	backOff(t, b, clk)
	for n, nominal := range []time.Duration{100, 200, 300, 300, 300} {
		nominal *= time.Millisecond
		until := stats(t, b, addr(1)).BackedOffUntil
		d := until.Sub(clk.Now())
		if lo, hi := time.Duration(float64(nominal)*0.75), min(time.Duration(float64(nominal)*1.25), 300*time.Millisecond); d < lo || d > hi {
			t.Errorf("backoff %d = %v, want in [%v, %v]", n+1, d, lo, hi)
		}
		clk.Set(until)
		call(clk, pick(t, b), time.Millisecond, true)
	}
}

func TestProbe(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{}, 1, 1)
	call(clk, get(t, b, addr(2)), 100*time.Millisecond, false) // the other is slower
	a := get(t, b, addr(1))
	fail(clk, a, 7)
	clk.Set(stats(t, b, addr(1)).BackedOffUntil)

	// The first Pick after the backoff is the probe; while it runs the
	// endpoint takes nothing else.
	probe := pick(t, b)
	if probe.Key() != addr(1) {
		t.Fatalf("first Pick after the backoff chose %v, want the probe of %v", probe.Key(), addr(1))
	}
	pc := probe.Start()
	if st := stats(t, b, addr(1)); !st.Probing {
		t.Errorf("probe in flight not shown: %+v", st)
	}
	for range 100 {
		if e := pick(t, b); e.Key() != addr(2) {
			t.Fatalf("picked %v while its probe is in flight", e.Key())
		}
	}
	clk.Advance(5 * time.Millisecond)
	pc.End(false)
	st := stats(t, b, addr(1))
	if !st.BackedOffUntil.IsZero() || st.Failures != 0 || st.Probing {
		t.Fatalf("after a successful probe: %+v, want available", st)
	}
	if e := pick(t, b); e.Key() != addr(1) {
		t.Fatalf("restored endpoint, the faster one, not picked: %+v", b.Snapshot())
	}

	// Restored, it backs off from BackoffMin again.
	fail(clk, a, 7)
	if d := stats(t, b, addr(1)).BackedOffUntil.Sub(clk.Now()); d > 1250*time.Millisecond {
		t.Errorf("backoff after recovery %v, want it to start over at 1s", d)
	}
}

func TestProbeThatNeverEnds(t *testing.T) {
	// A probe picked but never started (or never ended) does not keep the
	// endpoint out for good: after another backoff period, another caller
	// may probe.
	b, clk := newBalancer(t, balance.Options{}, 1)
	backOff(t, b, clk)
	until := stats(t, b, addr(1)).BackedOffUntil
	clk.Set(until)
	backoff := until.Sub(clk.Now())
	pick(t, b) // the probe, abandoned
	if _, err := b.Pick(); !errors.Is(err, balance.ErrUnavailable) {
		t.Fatalf("second Pick while the probe is out: %v, want ErrUnavailable", err)
	}
	clk.Advance(backoff + 2*time.Second)
	call(clk, pick(t, b), time.Millisecond, false)
	if st := stats(t, b, addr(1)); !st.BackedOffUntil.IsZero() {
		t.Errorf("second probe succeeded but endpoint still backed off: %+v", st)
	}
}

func TestAllBackedOff(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{}, 1, 1, 1)
	for i := 1; i <= 3; i++ {
		e := get(t, b, addr(i))
		fail(clk, e, 7)
	}
	for range 10 {
		if e, err := b.Pick(); !errors.Is(err, balance.ErrUnavailable) {
			t.Fatalf("Pick with every endpoint backed off = %v, %v; want ErrUnavailable", e, err)
		}
	}
}

func TestNoEndpoints(t *testing.T) {
	b := balance.New[int](balance.Options{})
	if _, err := b.Pick(); !errors.Is(err, balance.ErrNoEndpoints) {
		t.Fatalf("Pick on a new balancer: %v, want ErrNoEndpoints", err)
	}
	b.Update(entries(1))
	if b.Len() != 1 {
		t.Fatalf("Len = %d, want 1", b.Len())
	}
	b.Update(nil)
	if _, err := b.Pick(); !errors.Is(err, balance.ErrNoEndpoints) || b.Len() != 0 {
		t.Fatalf("Pick after Update(nil): %v (Len %d), want ErrNoEndpoints", err, b.Len())
	}
}

func TestSingleEndpoint(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{}, 5)
	e := pick(t, b)
	call(clk, e, 10*time.Second, false) // however slow, it is the one
	for range 10 {
		if e := pick(t, b); e.Key() != addr(1) || e.Value() != 1 {
			t.Fatalf("picked %v", e.Key())
		}
	}
}

func TestUpdateKeepsState(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{}, 1, 1)
	a, gone := get(t, b, addr(1)), get(t, b, addr(2))
	call(clk, a, 100*time.Millisecond, false)
	fail(clk, a, 3)
	held := a.Start()
	goneCall := gone.Start()
	before := stats(t, b, addr(1))

	b.Update([]balance.Entry[int]{
		{Key: addr(1), Weight: 4, Value: 100},
		{Key: addr(3), Weight: 1, Value: 3},
		{Key: addr(1), Weight: 9, Value: 999}, // duplicate: the first counts
	})
	if b.Len() != 2 {
		t.Fatalf("Len = %d, want 2", b.Len())
	}
	after := stats(t, b, addr(1))
	if after.RTT != before.RTT || after.Pending != 1 || after.Failures != 3 || after.Weight != 4 {
		t.Errorf("kept endpoint: before %+v, after %+v; want latency, load and failures kept, weight 4", before, after)
	}
	if e := get(t, b, addr(1)); e.Value() != 100 {
		t.Errorf("kept endpoint's Value = %d, want the new 100", e.Value())
	}
	if a.Value() != 1 {
		t.Errorf("an Endpoint picked before the Update changed its Value to %d", a.Value())
	}
	fresh := stats(t, b, addr(3))
	if fresh.RTT != 30*time.Millisecond || fresh.Pending != 0 || fresh.Failures != 0 {
		t.Errorf("new endpoint %+v, want fresh", fresh)
	}
	for _, st := range b.Snapshot() {
		if st.Key == addr(2) {
			t.Errorf("removed endpoint still in the snapshot")
		}
	}
	// Calls in flight on kept and removed endpoints may still end.
	clk.Advance(time.Millisecond)
	held.End(true)
	goneCall.End(true)
	if st := stats(t, b, addr(1)); st.Pending != 0 || st.Failures != 4 {
		t.Errorf("kept endpoint after its call ended: %+v, want 0 pending, 4 failures", st)
	}
	// A removed and re-added endpoint starts fresh.
	b.Update(entries(1, 1))
	if st := stats(t, b, addr(2)); st.Pending != 0 || st.RTT != 30*time.Millisecond {
		t.Errorf("re-added endpoint %+v, want fresh", st)
	}
}

func TestUpdateKeepsBackoff(t *testing.T) {
	b, clk := newBalancer(t, balance.Options{}, 1, 1)
	e := get(t, b, addr(1))
	fail(clk, e, 7)
	b.Update(entries(1, 1, 1))
	if st := stats(t, b, addr(1)); st.BackedOffUntil.IsZero() {
		t.Fatalf("Update restored a backed-off endpoint: %+v", st)
	}
	for range 100 {
		if e := pick(t, b); e.Key() == addr(1) {
			t.Fatalf("picked backed-off endpoint after Update")
		}
	}
}

func TestZeroCall(t *testing.T) {
	var c balance.Call
	c.End(true) // no-op, no panic
}

func TestConcurrent(t *testing.T) {
	// Run with -race: picks, calls and updates from many goroutines.
	b := balance.New[int](balance.Options{FailureLimit: 3, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond})
	b.Update(entries(1, 2, 3, 4))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			b.Update(entries(1, 2, 3, uint32(i%5)))
			b.Snapshot()
		}
	})
	var work sync.WaitGroup
	for g := range 8 {
		work.Go(func() {
			for i := range 2000 {
				e, err := b.Pick()
				if err != nil {
					if !errors.Is(err, balance.ErrUnavailable) {
						t.Errorf("Pick: %v", err)
						return
					}
					continue
				}
				c := e.Start()
				_ = e.Value() + int(e.Key().Port())
				c.End((i+g)%4 == 0 && e.Key() == addr(4))
			}
		})
	}
	work.Wait()
	close(stop)
	wg.Wait()
	for _, st := range b.Snapshot() {
		if st.Pending != 0 {
			t.Errorf("%v: %d pending after every call ended", st.Key, st.Pending)
		}
	}
}

func TestPickStartEndAllocs(t *testing.T) {
	b, _ := newBalancer(t, balance.Options{}, 1, 1, 1, 1, 1)
	if n := testing.AllocsPerRun(1000, func() {
		e, _ := b.Pick()
		e.Start().End(false)
	}); n != 0 {
		t.Errorf("Pick+Start+End allocates %v times, want 0", n)
	}
}

func BenchmarkPickStartEnd(b *testing.B) {
	for _, n := range []int{1, 3, 100} {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			bal := balance.New[int](balance.Options{})
			w := make([]uint32, n)
			bal.Update(entries(w...))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					e, err := bal.Pick()
					if err != nil {
						b.Fatal(err)
					}
					e.Start().End(false)
				}
			})
		})
	}
}
