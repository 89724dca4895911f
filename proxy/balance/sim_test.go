package balance_test

import (
	"container/heap"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/proxy/balance"
)

// clock is a fake clock that moves only when told.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// splitmix returns a deterministic, goroutine-safe source of random numbers.
func splitmix(seed uint64) func() uint64 {
	var s atomic.Uint64
	s.Store(seed)
	return func() uint64 {
		z := s.Add(0x9e3779b97f4a7c15)
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
}

func addr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 8080)
}

func entries(weights ...uint32) []balance.Entry[int] {
	es := make([]balance.Entry[int], len(weights))
	for i, w := range weights {
		es[i] = balance.Entry[int]{Key: addr(i + 1), Weight: w, Value: i + 1}
	}
	return es
}

// newBalancer returns a balancer on a fake clock with a seeded Rand.
func newBalancer(t *testing.T, o balance.Options, weights ...uint32) (*balance.Balancer[int], *clock) {
	t.Helper()
	clk := newClock()
	o.Now = clk.Now
	if o.Rand == nil {
		o.Rand = splitmix(1)
	}
	b := balance.New[int](o)
	b.Update(entries(weights...))
	return b, clk
}

func stats(t *testing.T, b *balance.Balancer[int], key netip.AddrPort) balance.EndpointStats {
	t.Helper()
	for _, s := range b.Snapshot() {
		if s.Key == key {
			return s
		}
	}
	t.Fatalf("no endpoint %v in the snapshot", key)
	return balance.EndpointStats{}
}

// pending is a call in flight in a simulation.
type pending struct {
	at     time.Time
	call   balance.Call
	failed bool
}

type pendingHeap []pending

func (h pendingHeap) Len() int           { return len(h) }
func (h pendingHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h pendingHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *pendingHeap) Push(x any)        { *h = append(*h, x.(pending)) }
func (h *pendingHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// sim drives a balancer with requests arriving at a fixed interval, each
// lasting its endpoint's latency on the fake clock.
type sim struct {
	b        *balance.Balancer[int]
	clk      *clock
	interval time.Duration
	latency  func(key netip.AddrPort, n int) time.Duration // n counts the requests
	failed   func(key netip.AddrPort) bool                 // nil: none fails
	inflight pendingHeap
	n        int
}

// run simulates d of traffic and returns the picks per endpoint and the
// errors of Pick.
func (s *sim) run(t *testing.T, d time.Duration) (picks map[netip.AddrPort]int, errs int) {
	t.Helper()
	picks = map[netip.AddrPort]int{}
	end := s.clk.Now().Add(d)
	next := s.clk.Now()
	for next.Before(end) {
		for s.inflight.Len() > 0 && !s.inflight[0].at.After(next) {
			p := heap.Pop(&s.inflight).(pending)
			s.clk.Set(p.at)
			p.call.End(p.failed)
		}
		s.clk.Set(next)
		e, err := s.b.Pick()
		if err != nil {
			errs++
		} else {
			picks[e.Key()]++
			failed := s.failed != nil && s.failed(e.Key())
			heap.Push(&s.inflight, pending{at: next.Add(s.latency(e.Key(), s.n)), call: e.Start(), failed: failed})
		}
		s.n++
		next = next.Add(s.interval)
	}
	return picks, errs
}

// drain ends every call in flight.
func (s *sim) drain() {
	for s.inflight.Len() > 0 {
		p := heap.Pop(&s.inflight).(pending)
		s.clk.Set(p.at)
		p.call.End(p.failed)
	}
}

func TestSimulationSlowEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration // between requests
		base     time.Duration // latency of the fast endpoints
	}{
		{"100rps-5ms", 10 * time.Millisecond, 5 * time.Millisecond},
		{"1000rps-5ms", time.Millisecond, 5 * time.Millisecond},
		{"200rps-20ms", 5 * time.Millisecond, 20 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk := newBalancer(t, balance.Options{}, 1, 1, 1)
			slow := addr(2)
			s := &sim{b: b, clk: clk, interval: tc.interval, latency: func(k netip.AddrPort, n int) time.Duration {
				d := tc.base + time.Duration(n%5)*time.Millisecond // some spread
				if k == slow {
					d += 50 * time.Millisecond
				}
				return d
			}}
			s.run(t, 10*time.Second) // warm-up
			picks, errs := s.run(t, 60*time.Second)
			s.drain()
			total := picks[addr(1)] + picks[addr(2)] + picks[addr(3)]
			if errs != 0 || total == 0 {
				t.Fatalf("errors %d, picks %v", errs, picks)
			}
			share := float64(picks[slow]) / float64(total)
			t.Logf("picks %v, slow share %.2f%%", picks, 100*share)
			if share >= 0.10 {
				t.Errorf("slow endpoint got %.1f%% of %d requests, want < 10%%", 100*share, total)
			}
			if picks[slow] == 0 {
				t.Errorf("slow endpoint was never tried again after warm-up; its estimate should decay")
			}
			for _, k := range []netip.AddrPort{addr(1), addr(3)} {
				if f := float64(picks[k]) / float64(total); f < 0.3 {
					t.Errorf("fast endpoint %v got %.1f%%, want about half", k, 100*f)
				}
			}
			for _, st := range b.Snapshot() {
				if st.Pending != 0 {
					t.Errorf("%v: %d pending after drain", st.Key, st.Pending)
				}
			}
		})
	}
}

func TestSimulationRecovers(t *testing.T) {
	// An endpoint fails every request for a while, is backed off, and
	// takes its share again once it recovers.
	b, clk := newBalancer(t, balance.Options{}, 1, 1, 1)
	bad := addr(3)
	broken := true
	s := &sim{b: b, clk: clk, interval: 5 * time.Millisecond,
		latency: func(netip.AddrPort, int) time.Duration { return 10 * time.Millisecond },
		failed:  func(k netip.AddrPort) bool { return broken && k == bad },
	}
	picks, errs := s.run(t, 20*time.Second)
	if errs != 0 {
		t.Fatalf("%d errors with two healthy endpoints", errs)
	}
	// While broken: the bad endpoint gets its first 7 failures, then only
	// probes (at most one per backoff: 1, 2, 4, 8 s...).
	if picks[bad] > 7+6 {
		t.Errorf("broken endpoint got %d requests in 20s, want its 7 failures and a few probes", picks[bad])
	}
	if st := stats(t, b, bad); st.BackedOffUntil.IsZero() {
		t.Fatalf("broken endpoint is not backed off: %+v", st)
	}
	broken = false
	s.run(t, 20*time.Second) // longer than the largest backoff so far (16s ±25%)
	picks, _ = s.run(t, 10*time.Second)
	s.drain()
	if st := stats(t, b, bad); !st.BackedOffUntil.IsZero() || st.Failures != 0 {
		t.Errorf("recovered endpoint still backed off: %+v", st)
	}
	total := picks[addr(1)] + picks[addr(2)] + picks[addr(3)]
	if f := float64(picks[bad]) / float64(total); f < 0.2 {
		t.Errorf("recovered endpoint got %.1f%% of requests, want about a third (%v)", 100*f, picks)
	}
}
