package metrics

import (
	"sync"
	"sync/atomic"
	"weak"
)

// series is what HTTP and TCP series share: identity and idleness.
type series struct {
	reg     *Registry
	key     string
	labels  labelSet
	revive  func()        // puts the series back into its table; Registry.mu held
	last    atomic.Uint64 // epoch of the last touch
	retired atomic.Bool   // not in the Registry's live table
}

// base returns s itself; it lets table reach the series of an HTTPSeries
// or TCPSeries.
func (s *series) base() *series { return s }

// touch stamps the series with the current epoch and, if it had been
// retired, revives it. Callers record their change first and touch after,
// so a change is always exposed by the next Collect: the change precedes
// the load of the epoch, whose successor's Collect reads values only after
// starting it, and never retires a series stamped with the epoch it ended.
// The stamp is written only when it changes (once per scrape interval), so
// busy series shared by many goroutines do not bounce a cache line on
// every use.
//
// The store to last comes before the load of retired, and sweep does the
// reverse, so of a touch and a retirement racing on the same stamp at least
// one sees the other: either the sweep keeps the series or the touch
// revives it.
func (s *series) touch() {
	if e := s.reg.epoch.Load(); s.last.Load() != e {
		s.last.Store(e)
	}
	if s.retired.Load() {
		s.reg.mu.Lock()
		s.revive()
		s.reg.mu.Unlock()
	}
}

// table holds the live series of one kind, keyed by label set, and the
// retired ones that may still be referenced by a handle (ghosts). It is
// guarded by Registry.mu. Invariant: among reachable series at most one
// has a given key, so reviving a series never meets a rival.
type table[T any, P interface {
	*T
	base() *series
}] struct {
	live   map[string]P
	ghosts map[string]weak.Pointer[T]
}

func newTable[T any, P interface {
	*T
	base() *series
}]() table[T, P] {
	return table[T, P]{live: map[string]P{}, ghosts: map[string]weak.Pointer[T]{}}
}

// get returns the series of key, touched: the live one, else a retired one
// still referenced somewhere (revived), else a new one made by mk.
func (t *table[T, P]) get(key string, mk func() P) P {
	s, ok := t.live[key]
	if !ok {
		if w, ghost := t.ghosts[key]; ghost {
			delete(t.ghosts, key)
			s = w.Value()
		}
		if s == nil {
			s = mk()
		}
		t.live[key] = s
	}
	b := s.base()
	b.last.Store(b.reg.epoch.Load())
	b.retired.Store(false)
	return s
}

// revive puts s back into the live table after a touch found it retired.
func (t *table[T, P]) revive(s P) {
	b := s.base()
	if !b.retired.Load() {
		return // revived meanwhile, or the sweep kept it
	}
	delete(t.ghosts, b.key)
	t.live[b.key] = s
	b.retired.Store(false)
}

// sweep retires the live series last touched before the idle epoch that
// are not busy, and forgets ghosts nobody references any more.
func (t *table[T, P]) sweep(idle uint64, busy func(P) bool) {
	for k, s := range t.live {
		b := s.base()
		if b.last.Load() >= idle || busy(s) {
			continue
		}
		b.retired.Store(true)
		if b.last.Load() >= idle || busy(s) {
			b.retired.Store(false) // touched meanwhile
			continue
		}
		delete(t.live, k)
		t.ghosts[k] = weak.Make((*T)(s))
	}
	for k, w := range t.ghosts {
		if w.Value() == nil {
			delete(t.ghosts, k)
		}
	}
}

// snapshot returns the live series.
func (t *table[T, P]) snapshot() []P {
	out := make([]P, 0, len(t.live))
	for _, s := range t.live {
		out = append(out, s)
	}
	return out
}

// cowMap is a copy-on-write map: lookups are lock-free and allocate
// nothing; inserts (rare: a new status code, class or errno) copy it.
type cowMap[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

// get returns the value of k, making it with mk(k) on first use.
func (c *cowMap[K, V]) get(k K, mk func(K) V) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	return c.insert(k, mk)
}

func (c *cowMap[K, V]) insert(k K, mk func(K) V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	n := make(map[K]V, 1)
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
		n = make(map[K]V, len(*old)+1)
		for k, v := range *old {
			n[k] = v
		}
	}
	v := mk(k)
	n[k] = v
	c.m.Store(&n)
	return v
}

// each calls f for every value.
func (c *cowMap[K, V]) each(f func(V)) {
	if m := c.m.Load(); m != nil {
		for _, v := range *m {
			f(v)
		}
	}
}
