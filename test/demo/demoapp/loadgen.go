package demoapp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// LoadgenConfig configures the load generator.
type LoadgenConfig struct {
	// Target is web's base URL, e.g. "http://web.demo.svc.cluster.local:8080".
	Target string
	// RPS is the request rate: one request per 1/RPS, GET /api/books and
	// GET / in turn. A request is sent only when one of the Concurrency
	// workers is free, so a slow target lowers the rate.
	RPS float64
	// Concurrency is how many requests may be in flight at once; zero
	// means 4.
	Concurrency int
	// WSConns is how many WebSocket connections to Target's /ws to keep
	// open, each reconnected with backoff when it fails.
	WSConns int
	// WSSendInterval is how often each WebSocket connection sends a
	// message (which ticker echoes); zero means 5s.
	WSSendInterval time.Duration
	// WSLifetime, when positive, closes each WebSocket connection normally
	// after that long and opens a new one at once, so that the services
	// see new WebSocket sessions (requests), not only one long stream.
	WSLifetime time.Duration
	// Report is how often to log a summary; zero means 10s.
	Report time.Duration
	// Timeout bounds each request and WebSocket handshake; zero means 5s.
	Timeout time.Duration
	// BackoffMin and BackoffMax bound the pause after a failure to connect
	// (HTTP requests are skipped during it, WebSocket connections wait
	// before dialing again); it doubles with each failure in a row. Zero
	// means 100ms and 10s.
	BackoffMin, BackoffMax time.Duration
	// Tick, if not nil, replaces the 1/RPS ticker: one request per value
	// received (for tests).
	Tick <-chan time.Time
	// Log receives the summaries and WebSocket failures; nil discards them.
	Log *slog.Logger
}

// Stats counts what the load generator did since it started.
type Stats struct {
	// Requests counts the HTTP requests sent.
	Requests uint64
	// Paths counts the HTTP requests sent, by path.
	Paths map[string]uint64
	// Status counts the HTTP responses, by status code.
	Status map[int]uint64
	// Errors counts the HTTP requests that got no response.
	Errors uint64
	// Skipped counts the ticks without a request, during a backoff.
	Skipped uint64
	// LastError is the last HTTP or WebSocket error, if any.
	LastError string
	// WSOpen is how many WebSocket connections are open.
	WSOpen int
	// WSConnects counts the WebSocket connections opened.
	WSConnects uint64
	// WSFailures counts the WebSocket dials that failed and the
	// connections that broke.
	WSFailures uint64
	// WSSent and WSReceived count WebSocket data messages.
	WSSent, WSReceived uint64
}

// clone returns a deep copy of s.
func (s Stats) clone() Stats {
	s.Paths = maps.Clone(s.Paths)
	s.Status = maps.Clone(s.Status)
	return s
}

// Loadgen is the load generator: it sends HTTP/1.1 requests to web at a
// steady rate and holds WebSocket connections to it. Its methods are safe
// for concurrent use.
type Loadgen struct {
	cfg     LoadgenConfig
	log     *slog.Logger
	target  *url.URL
	wsURL   string
	client  *http.Client
	backoff backoff // of the HTTP requests

	mu    sync.Mutex
	stats Stats
}

// NewLoadgen returns a load generator for cfg, with its defaults applied.
// It does not send anything until Run.
func NewLoadgen(cfg LoadgenConfig) (*Loadgen, error) {
	u, err := url.Parse(cfg.Target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("validate loadgen config: target %q is not an http:// URL", cfg.Target)
	}
	if cfg.RPS <= 0 || cfg.RPS > 1e6 {
		return nil, fmt.Errorf("validate loadgen config: rps %v is not in (0, 1e6]", cfg.RPS)
	}
	if cfg.Concurrency < 0 || cfg.WSConns < 0 {
		return nil, errors.New("validate loadgen config: concurrency and ws connections must not be negative")
	}
	defaults := []struct {
		d   *time.Duration
		def time.Duration
	}{
		{&cfg.WSSendInterval, 5 * time.Second},
		{&cfg.Report, 10 * time.Second},
		{&cfg.Timeout, defaultTimeout},
		{&cfg.BackoffMin, 100 * time.Millisecond},
		{&cfg.BackoffMax, 10 * time.Second},
	}
	for _, d := range defaults {
		if *d.d <= 0 {
			*d.d = d.def
		}
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 4
	}
	ws := *u
	ws.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	ws.Path = strings.TrimSuffix(u.Path, "/") + "/ws"
	return &Loadgen{
		cfg:     cfg,
		log:     orDiscard(cfg.Log),
		target:  u,
		wsURL:   ws.String(),
		client:  newHTTPClient(cfg.Timeout, cfg.Concurrency),
		backoff: backoff{min: cfg.BackoffMin, max: cfg.BackoffMax},
		stats:   Stats{Paths: map[string]uint64{}, Status: map[int]uint64{}},
	}, nil
}

// Stats returns a copy of the counters.
func (g *Loadgen) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stats.clone()
}

// count updates the counters under the lock.
func (g *Loadgen) count(f func(s *Stats)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f(&g.stats)
}

// tickInterval is the time between two requests at rps requests per
// second (at least 1ns).
func tickInterval(rps float64) time.Duration {
	return max(time.Duration(float64(time.Second)/rps), 1)
}

// Run sends load until ctx ends, then waits for the requests in flight,
// closes the WebSocket connections, logs a last summary and returns nil.
// A target that does not exist or refuses connections is retried with
// backoff, forever.
func (g *Loadgen) Run(ctx context.Context) error {
	defer g.client.CloseIdleConnections()
	var wg sync.WaitGroup
	jobs := make(chan string)
	for range g.cfg.Concurrency {
		wg.Go(func() {
			for path := range jobs {
				g.get(ctx, path)
			}
		})
	}
	for i := range g.cfg.WSConns {
		wg.Go(func() { g.holdWS(ctx, i) })
	}
	wg.Go(func() { g.report(ctx) })

	tick := g.cfg.Tick
	if tick == nil {
		t := time.NewTicker(tickInterval(g.cfg.RPS))
		defer t.Stop()
		tick = t.C
	}
	g.log.Info("sending load", "target", g.target.String(), "rps", g.cfg.RPS,
		"concurrency", g.cfg.Concurrency, "ws_conns", g.cfg.WSConns)
	paths := [...]string{"/api/books", "/"} // requested in turn
	n := 0
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case _, ok := <-tick:
			if !ok {
				tick = nil
				continue
			}
			if g.backoff.active(time.Now()) {
				g.count(func(s *Stats) { s.Skipped++ })
				continue
			}
			select {
			case jobs <- paths[n%len(paths)]:
				n++
			case <-ctx.Done():
				break loop
			}
		}
	}
	close(jobs)
	wg.Wait()
	g.logSummary("load stopped", g.Stats(), Stats{})
	return nil
}

// get sends one request and counts the outcome.
func (g *Loadgen) get(ctx context.Context, path string) {
	u := *g.target
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		g.count(func(s *Stats) { s.Errors++; s.LastError = err.Error() })
		return
	}
	req.Header.Set("User-Agent", "sluice-demo-loadgen")
	g.count(func(s *Stats) { s.Requests++; s.Paths[path]++ })
	resp, err := g.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return // stopping
		}
		g.backoff.fail(time.Now())
		g.count(func(s *Stats) { s.Errors++; s.LastError = err.Error() })
		return
	}
	_, _ = io.Copy(io.Discard, resp.Body) // so the connection is reused
	_ = resp.Body.Close()
	g.backoff.succeed()
	g.count(func(s *Stats) { s.Status[resp.StatusCode]++ })
}

// errLifetimeOver ends a WebSocket session that lasted WSLifetime.
var errLifetimeOver = errors.New("session lifetime over")

// holdWS keeps one WebSocket connection open until ctx ends, dialing again
// with backoff whenever it fails, and at once when its lifetime is over.
func (g *Loadgen) holdWS(ctx context.Context, id int) {
	b := backoff{min: g.cfg.BackoffMin, max: g.cfg.BackoffMax}
	for ctx.Err() == nil {
		healthy, err := g.wsSession(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errLifetimeOver) {
			b.succeed()
			continue
		}
		if healthy {
			b.succeed()
		}
		wait := b.fail(time.Now())
		g.count(func(s *Stats) { s.WSFailures++; s.LastError = err.Error() })
		g.log.Warn("websocket failed", "conn", id, "url", g.wsURL, "err", err, "retry_in", wait.Round(time.Millisecond))
		sleep(ctx, wait)
	}
}

// wsSession dials a WebSocket connection and uses it until it fails or ctx
// ends: it counts the messages received and sends one every
// WSSendInterval. It reports whether the connection received a message
// (and so worked for a while) and why it ended.
func (g *Loadgen) wsSession(ctx context.Context) (healthy bool, err error) {
	d := websocket.Dialer{NetDialContext: newDialer().DialContext, HandshakeTimeout: g.cfg.Timeout}
	c, resp, err := d.DialContext(ctx, g.wsURL, http.Header{"User-Agent": {"sluice-demo-loadgen"}})
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (%s)", err, resp.Status)
		}
		return false, fmt.Errorf("dial %s: %w", g.wsURL, err)
	}
	defer c.Close()
	g.count(func(s *Stats) { s.WSConnects++; s.WSOpen++ })
	defer g.count(func(s *Stats) { s.WSOpen-- })

	var (
		mu       sync.Mutex
		received bool
	)
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				readErr <- fmt.Errorf("read message: %w", err)
				return
			}
			mu.Lock()
			received = true
			mu.Unlock()
			g.count(func(s *Stats) { s.WSReceived++ })
		}
	}()
	wasHealthy := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return received
	}
	t := time.NewTicker(g.cfg.WSSendInterval)
	defer t.Stop()
	var over <-chan time.Time
	if g.cfg.WSLifetime > 0 {
		lt := time.NewTimer(g.cfg.WSLifetime)
		defer lt.Stop()
		over = lt.C
	}
	for seq := 1; ; seq++ {
		select {
		case <-ctx.Done():
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "loadgen stopping")
			_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			return wasHealthy(), ctx.Err()
		case <-over:
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "session lifetime over")
			_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			return wasHealthy(), errLifetimeOver
		case err := <-readErr:
			return wasHealthy(), err
		case <-t.C:
			_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := c.WriteMessage(websocket.TextMessage, []byte("hello "+strconv.Itoa(seq))); err != nil {
				return wasHealthy(), fmt.Errorf("write message: %w", err)
			}
			g.count(func(s *Stats) { s.WSSent++ })
		}
	}
}

// report logs a summary of the last Report interval every Report
// interval, until ctx ends.
func (g *Loadgen) report(ctx context.Context) {
	t := time.NewTicker(g.cfg.Report)
	defer t.Stop()
	prev := Stats{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			now := g.Stats()
			g.logSummary("load summary", now, prev)
			prev = now
		}
	}
}

// logSummary logs one line with the counters of now less those of prev.
func (g *Loadgen) logSummary(msg string, now, prev Stats) {
	var status []string
	for _, code := range slices.Sorted(maps.Keys(now.Status)) {
		if n := now.Status[code] - prev.Status[code]; n > 0 {
			status = append(status, fmt.Sprintf("%d:%d", code, n))
		}
	}
	attrs := []any{
		"requests", now.Requests - prev.Requests,
		"status", strings.Join(status, ","),
		"errors", now.Errors - prev.Errors,
		"skipped", now.Skipped - prev.Skipped,
		"ws_open", now.WSOpen,
		"ws_connects", now.WSConnects - prev.WSConnects,
		"ws_failures", now.WSFailures - prev.WSFailures,
		"ws_received", now.WSReceived - prev.WSReceived,
		"ws_sent", now.WSSent - prev.WSSent,
	}
	if now.LastError != "" && (now.Errors > prev.Errors || now.WSFailures > prev.WSFailures) {
		attrs = append(attrs, "last_error", now.LastError)
	}
	g.log.Info(msg, attrs...)
}

// backoff is an exponential backoff with jitter: each failure in a row
// doubles the pause, from min to at most max; a success resets it. Its
// methods are safe for concurrent use.
type backoff struct {
	min, max time.Duration

	mu    sync.Mutex
	cur   time.Duration // the last pause; 0 after a success
	until time.Time     // the end of the current pause
}

// fail records a failure at now and returns the pause that starts then.
func (b *backoff) fail(now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	// Jitter of up to a fifth, so that reconnecting clients spread out.
	d := b.cur - time.Duration(rand.Int64N(int64(b.cur)/5+1))
	b.until = now.Add(d)
	return d
}

// succeed records a success: the next failure pauses for min.
func (b *backoff) succeed() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur, b.until = 0, time.Time{}
}

// active reports whether now falls in a pause.
func (b *backoff) active(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return now.Before(b.until)
}
