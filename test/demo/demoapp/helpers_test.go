package demoapp

import (
	"context"
	"net"
	"testing"
	"time"
)

// hangGuard bounds every wait of these tests; passing never depends on it.
const hangGuard = 20 * time.Second

// serve runs a role on a new listener on 127.0.0.1 until the test ends,
// then checks that it shut down cleanly. It returns the address and a
// function that stops the role early (and waits for it).
func serve(t *testing.T, name string, run func(ctx context.Context, l net.Listener) error) (addr string, stop func()) {
	t.Helper()
	l, err := listen(t.Context(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, l) }()
	stopped := false
	stop = func() {
		t.Helper()
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s returned %v after its context ended, want nil", name, err)
			}
		case <-time.After(hangGuard):
			t.Errorf("%s still running %v after its context ended", name, hangGuard)
		}
	}
	t.Cleanup(stop)
	return l.Addr().String(), stop
}

// waitFor polls cond until it holds, failing the test after hangGuard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", hangGuard, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closedAddr returns a 127.0.0.1 address on which nothing listens (a port
// that was free a moment ago), so connecting to it is refused.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}
