// Package discovery is the proxy's client of the destination API. Names
// turns the authority of a request into the path to resolve, as Kubernetes
// DNS would from the proxy's pod; a Client keeps one shared Get stream per
// path and offers its endpoints as immutable, versioned snapshots that
// survive a lost or restarted destination service.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sluice-mesh/sluice/controlplane/api/destination"
)

// ErrClosed is returned by Watch.Wait when the watch stopped (its Client
// was closed) before the destination was answered.
var ErrClosed = errors.New("discovery client closed")

// Defaults of Options.
const (
	DefaultIdleTimeout = 60 * time.Second
	DefaultMinBackoff  = 100 * time.Millisecond
	DefaultMaxBackoff  = 10 * time.Second
)

// Options of a Client.
type Options struct {
	// ContextToken is sent in GetDestination.context_token, such as
	// {"ns":"default","nodeName":"node-1"}.
	ContextToken string
	// IdleTimeout is how long a watch with no holders is kept (its stream
	// open) before it is stopped; 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the delay before a failed stream is
	// opened again; it doubles from MinBackoff up to MaxBackoff, with
	// jitter, and falls back to MinBackoff once a stream delivers. 0 means
	// DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives stream failures and recoveries; nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// DialOptions returns gRPC dial options for the connection a Client uses:
// the connection's own reconnect backoff follows o's (gRPC's default grows
// to 120 s), so a destination service that comes back is reached again
// within about MaxBackoff. Transport credentials are the caller's to add.
func DialOptions(o Options) []grpc.DialOption {
	o = o.withDefaults()
	return []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  o.MinBackoff,
			Multiplier: 2,
			Jitter:     0.2,
			MaxDelay:   o.MaxBackoff,
		},
		MinConnectTimeout: 5 * time.Second,
	})}
}

// Client resolves destinations over one gRPC connection, sharing one Get
// stream per path among the holders of its Watch.
type Client struct {
	dc     destination.DestinationClient
	o      Options
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	watches map[string]*Watch
}

// NewClient returns a Client that uses conn, which stays the caller's to
// close (after Close). Streams open on the first Watch of each path.
func NewClient(conn grpc.ClientConnInterface, o Options) *Client {
	o = o.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		dc:      destination.NewDestinationClient(conn),
		o:       o,
		log:     o.Logger.With("component", "discovery"),
		ctx:     ctx,
		cancel:  cancel,
		watches: map[string]*Watch{},
	}
}

// Close stops every stream and waits for them to end. Watches keep their
// last snapshot; Wait on one still pending returns ErrClosed. Watch after
// Close returns a watch that stays Pending. Close always returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	for path, w := range c.watches {
		w.stop()
		delete(c.watches, path)
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return nil
}

// Watch returns the shared watch of path (starting its Get stream if
// needed). The caller must Release it once, when done with it.
func (c *Client) Watch(path string) *Watch {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w := c.watches[path]; w != nil {
		w.holders++
		w.stopIdle()
		return w
	}
	w := &Watch{c: c, path: path, changed: make(chan struct{}), done: make(chan struct{}), holders: 1}
	w.snap.Store(&Snapshot{State: Pending})
	if c.closed {
		close(w.done)
		return w
	}
	ctx, cancel := context.WithCancel(c.ctx)
	w.cancel = cancel
	c.watches[path] = w
	c.wg.Go(func() {
		defer close(w.done)
		w.run(ctx)
	})
	return w
}

// evict stops w if it still has no holders and no newer idle timer.
func (c *Client) evict(w *Watch, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.holders > 0 || w.idleGen != gen || c.watches[w.path] != w {
		return
	}
	delete(c.watches, w.path)
	w.stop()
	c.log.Debug("stopped idle destination watch", "path", w.path)
}

// Watch is the shared, live view of one destination.
type Watch struct {
	c    *Client
	path string
	snap atomic.Pointer[Snapshot]
	done chan struct{} // closed when the stream loop has stopped

	chMu    sync.Mutex
	changed chan struct{} // closed and replaced at each change

	// Guarded by c.mu.
	holders int
	idle    *time.Timer
	idleGen uint64
	cancel  context.CancelFunc
}

// Path returns the destination path the watch resolves.
func (w *Watch) Path() string { return w.path }

// Snapshot returns the current snapshot; it is cheap (an atomic load).
func (w *Watch) Snapshot() Snapshot { return *w.snap.Load() }

// Changed returns a channel closed at the next change after the call.
func (w *Watch) Changed() <-chan struct{} {
	w.chMu.Lock()
	defer w.chMu.Unlock()
	return w.changed
}

// Wait returns the first non-Pending snapshot, or the Pending one with ctx's
// error when ctx ends first (ErrClosed when the Client is closed first). It
// never blocks past ctx.
func (w *Watch) Wait(ctx context.Context) (Snapshot, error) {
	for {
		ch := w.Changed()
		s := w.Snapshot()
		if s.State != Pending {
			return s, nil
		}
		select {
		case <-ch:
		case <-w.done:
			if s = w.Snapshot(); s.State != Pending {
				return s, nil
			}
			return s, ErrClosed
		case <-ctx.Done():
			return s, ctx.Err()
		}
	}
}

// Release gives up the caller's hold on w. When no holder is left, the
// stream is stopped after the Client's IdleTimeout unless the path is
// watched again meanwhile. Releasing more often than Watch was called has
// no effect.
func (w *Watch) Release() {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.holders == 0 {
		return
	}
	w.holders--
	if w.holders > 0 || c.watches[w.path] != w {
		return
	}
	w.idleGen++
	gen := w.idleGen
	w.idle = time.AfterFunc(c.o.IdleTimeout, func() { c.evict(w, gen) })
}

// stopIdle cancels a pending eviction. Callers hold c.mu.
func (w *Watch) stopIdle() {
	w.idleGen++
	if w.idle != nil {
		w.idle.Stop()
		w.idle = nil
	}
}

// stop ends the stream. Callers hold c.mu.
func (w *Watch) stop() {
	w.stopIdle()
	if w.cancel != nil {
		w.cancel()
	}
}

// publish makes s the current snapshot, if it differs from it. Only the
// stream loop calls it.
func (w *Watch) publish(s *set) {
	old := w.snap.Load()
	if s.same(old) {
		return
	}
	w.snap.Store(s.snapshot(old.Version + 1))
	w.chMu.Lock()
	close(w.changed)
	w.changed = make(chan struct{})
	w.chMu.Unlock()
}

// errStreamEnded stands for a stream that the server ended without error.
var errStreamEnded = errors.New("stream ended by the server")

// run keeps a Get stream open until ctx ends, reopening it with backoff.
// The snapshot is kept across failures. It logs transitions only: the
// first failure (warn), each later one (debug) and the recovery (info).
func (w *Watch) run(ctx context.Context) {
	o := w.c.o
	log := w.c.log.With("path", w.path)
	delay := o.MinBackoff
	failures := 0
	for {
		delivered, err := w.stream(ctx, func() {
			if failures > 0 {
				log.Info("destination stream restored", "failures", failures)
			}
			failures = 0
		})
		if ctx.Err() != nil {
			return
		}
		if delivered {
			delay = o.MinBackoff
		}
		if status.Code(err) == codes.InvalidArgument {
			// The server cannot resolve this path at all: say so, so that
			// callers stop waiting, and ask again rarely.
			ns := newSet()
			ns.state = NotFound
			w.publish(ns)
			delay = o.MaxBackoff
		}
		failures++
		if failures == 1 {
			log.Warn("destination stream failed; keeping the last endpoints", "state", w.Snapshot().State, "err", err)
		} else {
			log.Debug("destination stream failed again", "failures", failures, "err", err)
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, o.MaxBackoff)
	}
}

// stream runs one Get stream until it fails. Its first update starts a
// fresh set (the server sends the whole current state first), published as
// one change, so a reconnect never shows an empty set in between.
// delivered says whether any update arrived; first runs at the first one.
func (w *Watch) stream(ctx context.Context, first func()) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := w.c.dc.Get(ctx, &destination.GetDestination{Scheme: "k8s", Path: w.path, ContextToken: w.c.o.ContextToken})
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	s := newSet()
	for {
		u, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return delivered, errStreamEnded
		}
		if err != nil {
			return delivered, fmt.Errorf("receive update: %w", err)
		}
		bad, ok := s.apply(u)
		if !ok {
			w.c.log.Debug("ignored an empty destination update", "path", w.path)
			continue
		}
		if bad > 0 {
			w.c.log.Warn("ignored invalid addresses in a destination update", "path", w.path, "count", bad)
		}
		if !delivered {
			delivered = true
			first()
		}
		w.publish(s)
	}
}
