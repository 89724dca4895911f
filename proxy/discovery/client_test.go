package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-mesh/sluice/proxy/discovery"
	"github.com/sluice-mesh/sluice/test/destinationtest"
)

// hang guards a wait that should end far sooner; it is no assertion on time.
const hang = 20 * time.Second

// fast returns client options that make reconnects quick.
func fast() discovery.Options {
	return discovery.Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
}

// newClient connects a Client to addr; both are closed in t.Cleanup.
func newClient(t *testing.T, addr netip.AddrPort, o discovery.Options) *discovery.Client {
	t.Helper()
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, discovery.DialOptions(o)...)
	cc, err := grpc.NewClient(addr.String(), opts...)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	c := discovery.NewClient(cc, o)
	t.Cleanup(func() {
		c.Close()
		cc.Close()
	})
	return c
}

// watch watches path and releases it in t.Cleanup.
func watch(t *testing.T, c *discovery.Client, path string) *discovery.Watch {
	w := c.Watch(path)
	t.Cleanup(w.Release)
	return w
}

// waitFor waits until w's snapshot satisfies cond and returns it.
func waitFor(t *testing.T, w *discovery.Watch, what string, cond func(discovery.Snapshot) bool) discovery.Snapshot {
	t.Helper()
	timeout := time.After(hang)
	for {
		ch := w.Changed()
		s := w.Snapshot()
		if cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%s: waited %v for %s; last snapshot %+v", w.Path(), hang, what, s)
		}
	}
}

// eventually polls cond (for server-side facts no channel announces).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hang)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", hang, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ep(addr string, labels ...string) discovery.Endpoint {
	e := discovery.Endpoint{Addr: netip.MustParseAddrPort(addr), Weight: discovery.DefaultWeight}
	for i := 0; i+1 < len(labels); i += 2 {
		if e.Labels == nil {
			e.Labels = map[string]string{}
		}
		e.Labels[labels[i]] = labels[i+1]
	}
	return e
}

func has(state discovery.State, eps ...discovery.Endpoint) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		return s.State == state && slices.EqualFunc(s.Endpoints, eps, discovery.Endpoint.Equal)
	}
}

func TestWatchFollowsChanges(t *testing.T) {
	srv := destinationtest.Start(t)
	c := newClient(t, srv.Addr(), fast())
	const path = "web.default.svc.cluster.local:8080"
	w := watch(t, c, path)

	web1 := ep("10.0.0.1:8080", "namespace", "default", "service", "web", "pod", "web-1")
	web2 := ep("10.0.0.2:8080", "namespace", "default", "service", "web", "pod", "web-2")
	web2v2 := ep("10.0.0.2:8080", "namespace", "default", "service", "web", "pod", "web-2", "version", "v2")
	web2v2.Identity = "web.default.serviceaccount.identity.sluice.cluster.local"
	web2v2.H2 = true
	web3 := ep("[2001:db8::3]:8080", "namespace", "default", "service", "web", "pod", "web-3")
	web3.Weight = 3
	web3.Opaque = true

	steps := []struct {
		name   string
		change func()
		state  discovery.State
		want   []discovery.Endpoint
	}{
		{"unknown path", func() {}, discovery.NotFound, nil},
		{"appears", func() { srv.Set(path, web2, web1) }, discovery.Found, []discovery.Endpoint{web1, web2}},
		{"add, change and remove", func() { srv.Set(path, web2v2, web3) }, discovery.Found, []discovery.Endpoint{web2v2, web3}},
		{"one left", func() { srv.Set(path, web3) }, discovery.Found, []discovery.Endpoint{web3}},
		{"emptied", func() { srv.Set(path) }, discovery.NoEndpoints, nil},
		{"back", func() { srv.Set(path, web1) }, discovery.Found, []discovery.Endpoint{web1}},
		{"deleted", func() { srv.Delete(path) }, discovery.NotFound, nil},
	}
	var version uint64
	for _, st := range steps {
		st.change()
		s := waitFor(t, w, st.name, has(st.state, st.want...))
		if s.Version <= version {
			t.Errorf("%s: version %d after %d; want it to increase", st.name, s.Version, version)
		}
		version = s.Version
	}
	if n := srv.Streams(path); n != 1 {
		t.Errorf("server has %d streams for %s, want 1", n, path)
	}
}

func TestWatchIsSharedAndSendsContextToken(t *testing.T) {
	srv := destinationtest.Start(t)
	o := fast()
	o.ContextToken = `{"ns":"default","nodeName":"node-1"}`
	c := newClient(t, srv.Addr(), o)
	const path = "web.default.svc.cluster.local:80"
	srv.Set(path, ep("10.0.0.1:80"))

	w1, w2 := watch(t, c, path), watch(t, c, path)
	if w1 != w2 {
		t.Fatal("two watches of one path are different")
	}
	if _, err := w1.Wait(t.Context()); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if n := srv.Streams(path); n != 1 {
		t.Errorf("server has %d streams for %s, want 1", n, path)
	}
	if got := srv.ContextToken(path); got != o.ContextToken {
		t.Errorf("server got context token %q, want %q", got, o.ContextToken)
	}
	other := watch(t, c, "api.default.svc.cluster.local:80")
	if s, err := other.Wait(t.Context()); err != nil || s.State != discovery.NotFound {
		t.Errorf("Wait on an unknown path = %+v, %v; want not found", s, err)
	}
	if n := srv.Streams(path); n != 1 {
		t.Errorf("server has %d streams for %s after another path was watched, want 1", n, path)
	}
}

// startLogged starts a server and a fast client whose logs are recorded.
func startLogged(t *testing.T) (*destinationtest.Server, *discovery.Client, *records) {
	srv := destinationtest.Start(t)
	logs := &records{}
	o := fast()
	o.Logger = slog.New(logs)
	return srv, newClient(t, srv.Addr(), o), logs
}

func TestStopKeepsLastEndpointsAndRestartReconnects(t *testing.T) {
	srv, c, logs := startLogged(t)
	const path = "web.default.svc.cluster.local:80"
	a, b := ep("10.0.0.1:80", "pod", "a"), ep("10.0.0.2:80", "pod", "b")
	srv.Set(path, a, b)
	w := watch(t, c, path)
	before := waitFor(t, w, "endpoints", has(discovery.Found, a, b))

	srv.Stop()
	eventually(t, "three failed reconnects", func() bool { return logs.count("destination stream failed again") >= 3 })
	if got := w.Snapshot(); got.Version != before.Version || !has(discovery.Found, a, b)(got) {
		t.Fatalf("snapshot after the server stopped = %+v, want the last one %+v", got, before)
	}
	if n := logs.count("destination stream failed; keeping the last endpoints"); n != 1 {
		t.Errorf("logged the stream failure %d times at warn, want once", n)
	}
	ctx, cancel := context.WithTimeout(t.Context(), hang)
	defer cancel()
	if s, err := w.Wait(ctx); err != nil || s.Version != before.Version {
		t.Errorf("Wait with the server down = %+v, %v; want the last snapshot at once", s, err)
	}

	// The table changes while the server is down; after the restart the
	// client sees the new set as one change, never an empty one.
	cNew := ep("10.0.0.3:80", "pod", "c")
	srv.Set(path, b, cNew)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	after := waitFor(t, w, "endpoints after the restart", has(discovery.Found, b, cNew))
	if after.Version != before.Version+1 {
		t.Errorf("version went from %d to %d over the reconnect; want one change", before.Version, after.Version)
	}
	eventually(t, "the restore log", func() bool { return logs.count("destination stream restored") == 1 })

	// And later changes arrive again.
	srv.Set(path, a)
	waitFor(t, w, "a change after the restart", has(discovery.Found, a))
}

func TestReconnectWithSameSetIsNoChange(t *testing.T) {
	srv, c, logs := startLogged(t)
	const path = "web.default.svc.cluster.local:80"
	a := ep("10.0.0.1:80")
	srv.Set(path, a)
	w := watch(t, c, path)
	before := waitFor(t, w, "endpoints", has(discovery.Found, a))
	srv.Stop()
	eventually(t, "a failed stream", func() bool { return logs.count("destination stream failed; keeping the last endpoints") == 1 })
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the restore log", func() bool { return logs.count("destination stream restored") == 1 })
	eventually(t, "the stream reopened", func() bool { return srv.Streams(path) == 1 })
	// A change made now arrives after the resent (identical) state, so
	// seeing it proves the resent state caused no version of its own.
	b := ep("10.0.0.2:80")
	srv.Set(path, a, b)
	after := waitFor(t, w, "the change", has(discovery.Found, a, b))
	if after.Version != before.Version+1 {
		t.Errorf("version went from %d to %d; want one change (the reconnect none)", before.Version, after.Version)
	}
}

func TestIdleWatchIsEvicted(t *testing.T) {
	srv := destinationtest.Start(t)
	o := fast()
	o.IdleTimeout = 20 * time.Millisecond
	c := newClient(t, srv.Addr(), o)
	const path = "web.default.svc.cluster.local:80"
	srv.Set(path, ep("10.0.0.1:80"))

	w := c.Watch(path)
	if _, err := w.Wait(t.Context()); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	w.Release()
	w.Release() // an extra release changes nothing
	eventually(t, "the idle stream to close", func() bool { return srv.Streams(path) == 0 })

	w2 := watch(t, c, path)
	if w2 == w {
		t.Fatal("Watch after eviction returned the evicted watch")
	}
	if s, err := w2.Wait(t.Context()); err != nil || s.State != discovery.Found {
		t.Fatalf("Wait after eviction = %+v, %v; want found", s, err)
	}
	if n := srv.Streams(path); n != 1 {
		t.Errorf("server has %d streams after watching again, want 1", n)
	}
}

func TestHeldWatchIsKept(t *testing.T) {
	srv := destinationtest.Start(t)
	o := fast()
	o.IdleTimeout = time.Hour
	c := newClient(t, srv.Addr(), o)
	const path = "web.default.svc.cluster.local:80"
	w := c.Watch(path)
	if _, err := w.Wait(t.Context()); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	w.Release()
	// Watched again before the idle timeout: the same watch and stream.
	w2 := watch(t, c, path)
	if w2 != w {
		t.Fatal("Watch within the idle timeout returned a new watch")
	}
	srv.Set(path, ep("10.0.0.1:80"))
	waitFor(t, w2, "endpoints", has(discovery.Found, ep("10.0.0.1:80")))
	if n := srv.Streams(path); n != 1 {
		t.Errorf("server has %d streams, want 1", n)
	}
}

func TestWaitEndsWithContextWhenServerUnreachable(t *testing.T) {
	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	c := newClient(t, addr, fast())
	w := watch(t, c, "web.default.svc.cluster.local:80")
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	s, err := w.Wait(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || s.State != discovery.Pending {
		t.Fatalf("Wait = %+v, %v; want pending and the context's deadline error", s, err)
	}
}

func TestCloseEndsStreamsAndWaits(t *testing.T) {
	srv := destinationtest.Start(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()

	live := newClient(t, srv.Addr(), fast())
	const path = "web.default.svc.cluster.local:80"
	lw := live.Watch(path)
	if _, err := lw.Wait(t.Context()); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	unreachable := newClient(t, dead, fast())
	uw := unreachable.Watch(path)
	waited := make(chan error, 1)
	go func() {
		_, err := uw.Wait(context.Background())
		waited <- err
	}()

	live.Close()
	unreachable.Close()
	eventually(t, "the stream to close", func() bool { return srv.Streams(path) == 0 })
	select {
	case err := <-waited:
		if !errors.Is(err, discovery.ErrClosed) {
			t.Errorf("Wait after Close = %v, want ErrClosed", err)
		}
	case <-time.After(hang):
		t.Fatal("Wait still blocked after Close")
	}
	if s := lw.Snapshot(); s.State != discovery.NotFound {
		t.Errorf("snapshot after Close = %+v, want the last one (not found)", s)
	}
	after := live.Watch(path)
	defer after.Release()
	if s, err := after.Wait(t.Context()); !errors.Is(err, discovery.ErrClosed) || s.State != discovery.Pending {
		t.Errorf("Wait on a watch made after Close = %+v, %v; want pending and ErrClosed", s, err)
	}
}

func TestInvalidPathIsNotFound(t *testing.T) {
	srv := destinationtest.Start(t)
	c := newClient(t, srv.Addr(), fast())
	w := watch(t, c, "") // the server answers InvalidArgument
	s, err := w.Wait(t.Context())
	if err != nil || s.State != discovery.NotFound {
		t.Fatalf("Wait = %+v, %v; want not found", s, err)
	}
}

// TestManyWatchers races holders watching, waiting and releasing paths
// while the table changes (run it with -race).
func TestManyWatchers(t *testing.T) {
	srv := destinationtest.Start(t)
	o := fast()
	o.IdleTimeout = time.Millisecond
	c := newClient(t, srv.Addr(), o)
	paths := []string{"a.default.svc.cluster.local:80", "b.default.svc.cluster.local:80"}
	for _, p := range paths {
		srv.Set(p, ep("10.0.0.1:80"))
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 50 {
				w := c.Watch(paths[(i+j)%len(paths)])
				ctx, cancel := context.WithTimeout(context.Background(), hang)
				s, err := w.Wait(ctx)
				cancel()
				if err != nil || s.State != discovery.Found {
					t.Errorf("Wait = %+v, %v; want found", s, err)
				}
				w.Release()
			}
		})
	}
	for i := range 20 {
		srv.Set(paths[i%2], ep(fmt.Sprintf("10.0.0.%d:80", i+1)), ep("10.0.1.1:80"))
	}
	wg.Wait()
}

// records is a slog.Handler that keeps every record's message.
type records struct {
	mu   sync.Mutex
	msgs []string
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }

func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}

func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

func (r *records) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}
