package iptables

import "sync"

// nsLocks serializes Install and Remove per network namespace within the
// process. iptables-nft checks "chain already exists" against a cache it
// read before committing, so two restores racing on one namespace can both
// pass; the lock keeps the agent's own calls from racing.
type nsLocks struct {
	mu    sync.Mutex
	locks map[string]*nsLock
}

type nsLock struct {
	mu   sync.Mutex
	refs int
}

// lock locks netns (all names of one namespace alike, where nsKey can tell)
// and returns the unlock function.
func (l *nsLocks) lock(netns string) (unlock func()) {
	key := nsKey(netns)
	l.mu.Lock()
	if l.locks == nil {
		l.locks = make(map[string]*nsLock)
	}
	e := l.locks[key]
	if e == nil {
		e = &nsLock{}
		l.locks[key] = e
	}
	e.refs++
	l.mu.Unlock()

	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.locks, key)
		}
		l.mu.Unlock()
	}
}
