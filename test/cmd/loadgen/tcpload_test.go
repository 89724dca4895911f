package main

import (
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// tcp sends its payload to the sink on every connection, the sink confirms
// every byte, and the result carries the payload and its rate. The sink
// counts every connection, warm-up ones included.
func TestTCPBulkToSink(t *testing.T) {
	a := startTestApp(t)
	sinkStats := a.listeners[2]
	tests := []struct {
		name      string
		args      []string
		conns     int64
		bytes     int64 // per connection
		sinkConns int64 // connections the sink accepts
	}{
		{"one connection", []string{"--bytes", "4MiB"}, 1, 4 << 20, 1},
		{"three connections, odd chunks, warm-up", []string{"--bytes", "1000000", "--conns", "3", "--chunk", "4097", "--warmup", "64KiB"}, 3, 1e6, 6},
		{"payload smaller than a chunk", []string{"--bytes", "10", "--conns", "2"}, 2, 10, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, conns0 := sinkStats.loopback.Load(), sinkStats.conns.Load()
			res, code := runJSON(t, append([]string{"tcp", "--to", sinkStats.addr}, tt.args...)...)
			if code != 0 || res.Errors != 0 || res.FirstError != "" {
				t.Fatalf("exit %d, %d errors: %s", code, res.Errors, res.FirstError)
			}
			if res.Mode != "tcp" || res.Load != "bulk" || res.Conns != int(tt.conns) || res.Requests != tt.conns {
				t.Errorf("mode %q, load %q, %d conns, %d requests; want tcp, bulk, %d and %d", res.Mode, res.Load, res.Conns, res.Requests, tt.conns, tt.conns)
			}
			if res.Bytes != tt.conns*tt.bytes {
				t.Errorf("%d bytes, want %d × %d", res.Bytes, tt.conns, tt.bytes)
			}
			if res.Seconds <= 0 || res.MBps <= 0 || res.RPS <= 0 {
				t.Errorf("%v s, %v MB/s, %v conn/s; want all positive", res.Seconds, res.MBps, res.RPS)
			}
			if got := float64(res.Bytes) / res.Seconds / 1e6; math.Abs(got-res.MBps) > 1e-9*got {
				t.Errorf("%v MB/s, but %d bytes in %v s is %v", res.MBps, res.Bytes, res.Seconds, got)
			}
			// Each connection's time is within the run's (the histogram
			// rounds up by less than 1 %).
			if !(0 < res.P50Ns && res.P50Ns <= res.MaxNs && float64(res.MaxNs) <= res.Seconds*1e9*1.01) {
				t.Errorf("per-connection times p50 %d, max %d ns over a %v s run", res.P50Ns, res.MaxNs, res.Seconds)
			}
			if c, l := sinkStats.conns.Load()-conns0, sinkStats.loopback.Load()-before; c != tt.sinkConns || l != tt.sinkConns {
				t.Errorf("the sink accepted %d connections and counted %d, want %d", c, l, tt.sinkConns)
			}
		})
	}
	if n := sinkStats.other.Load(); n != 0 {
		t.Errorf("the sink counted %d connections from outside loopback", n)
	}
}

// serveFake runs handle on every connection to a loopback listener until
// the test ends, and returns the listener's address.
func serveFake(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	l, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(ioTimeout))
				handle(c)
			})
		}
	})
	return l.Addr().String()
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// answerAfterEOF returns a handler that reads a connection to its end and
// then writes answer(count).
func answerAfterEOF(answer func(n int64) string) func(net.Conn) {
	return func(c net.Conn) {
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, answer(n))
	}
}

// A server that does not confirm the payload exactly fails every
// connection, and the run exits 1 naming what went wrong.
func TestTCPServerFailures(t *testing.T) {
	tests := []struct {
		name   string
		handle func(net.Conn) // nil: nothing listens
		want   []string       // the first error names one of these
	}{
		{"wrong count", answerAfterEOF(func(n int64) string { return fmt.Sprintf("%d\n", n-1) }), []string{"server counted 1048575 bytes, 1048576 sent"}},
		{"no answer", answerAfterEOF(func(int64) string { return "" }), []string{`read count: connection closed after ""`}},
		{"no newline", answerAfterEOF(func(n int64) string { return fmt.Sprint(n) }), []string{`read count: connection closed after "1048576"`}},
		{"not a number", answerAfterEOF(func(int64) string { return "lots\n" }), []string{`"lots" is not a byte count`}},
		{"data after the count", answerAfterEOF(func(n int64) string { return fmt.Sprintf("%d\nmore", n) }), []string{`"more" after the count`}},
		{"closes early", func(c net.Conn) { _, _ = io.ReadFull(c, make([]byte, 1000)) }, []string{"write payload", "read count"}},
		{"refused", nil, []string{"dial 127.0.0.1:", "connection refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var addr string
			if tt.handle == nil {
				addr = closedAddr(t)
			} else {
				addr = serveFake(t, tt.handle)
			}
			res, code := runJSON(t, "tcp", "--to", addr, "--bytes", "1MiB", "--conns", "2")
			if code != 1 || res.Errors != 2 || res.Requests != 0 || res.Bytes != 0 || res.MBps != 0 {
				t.Errorf("exit %d, %d errors, %d requests, %d bytes, %v MB/s; want exit 1, 2 errors and nothing confirmed", code, res.Errors, res.Requests, res.Bytes, res.MBps)
			}
			if !slices.ContainsFunc(tt.want, func(w string) bool { return strings.Contains(res.FirstError, w) }) {
				t.Errorf("first error %q, want one naming one of %q", res.FirstError, tt.want)
			}
		})
	}
}

// One failed connection among good ones fails the run, with the good ones'
// figures still reported; a failed warm-up stops before the measured run.
func TestTCPPartialFailure(t *testing.T) {
	var n sync.Mutex
	calls := 0
	addr := serveFake(t, func(c net.Conn) {
		n.Lock()
		calls++
		k := calls
		n.Unlock()
		answerAfterEOF(func(got int64) string {
			if k == 2 {
				got++ // the second connection is miscounted
			}
			return fmt.Sprintf("%d\n", got)
		})(c)
	})
	res, code := runJSON(t, "tcp", "--to", addr, "--bytes", "64KiB", "--conns", "3")
	if code != 1 || res.Errors != 1 || res.Requests != 2 || res.Bytes != 2*64<<10 || res.MBps <= 0 || !strings.Contains(res.FirstError, "server counted") {
		t.Errorf("exit %d, %d errors (%s), %d requests, %d bytes, %v MB/s; want exit 1, 1 error, 2 confirmed connections of 64 KiB", code, res.Errors, res.FirstError, res.Requests, res.Bytes, res.MBps)
	}

	res, code = runJSON(t, "tcp", "--to", closedAddr(t), "--warmup", "1KiB")
	if code != 1 || res.Errors != 1 || res.Requests != 0 || !strings.HasPrefix(res.FirstError, "warm-up: dial") {
		t.Errorf("failed warm-up: exit %d, %d errors (%s), %d requests; want exit 1 and the warm-up's dial error", code, res.Errors, res.FirstError, res.Requests)
	}
}

// Sizes parse with binary and decimal suffixes and print back in the
// largest binary unit that divides them.
func TestByteSize(t *testing.T) {
	tests := []struct {
		in    string
		want  int64
		print string
		bad   bool
	}{
		{in: "0", want: 0, print: "0"},
		{in: "1000", want: 1000, print: "1000"},
		{in: "65536", want: 65536, print: "64KiB"},
		{in: "256MiB", want: 256 << 20, print: "256MiB"},
		{in: "3 GiB", want: 3 << 30, print: "3GiB"},
		{in: "10MB", want: 10e6, print: "10000000"},
		{in: "2kB", want: 2000, print: "2000"},
		{in: "2KB", want: 2000, print: "2000"},
		{in: "7B", want: 7, print: "7"},
		{in: "", bad: true},
		{in: "-1", bad: true},
		{in: "1.5MiB", bad: true},
		{in: "MiB", bad: true},
		{in: "9000000000GiB", bad: true},
		{in: "12XB", bad: true},
	}
	for _, tt := range tests {
		var b byteSize
		err := b.Set(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("Set(%q) = %d, want an error", tt.in, b)
			}
			continue
		}
		if err != nil || int64(b) != tt.want || b.String() != tt.print {
			t.Errorf("Set(%q): %d printed %q (%v); want %d printed %q", tt.in, b, b.String(), err, tt.want, tt.print)
		}
	}
}
