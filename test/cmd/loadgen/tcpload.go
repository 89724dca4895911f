package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// byteSize is a flag value in bytes: a plain integer, or one with a suffix
// KiB, MiB, GiB (powers of 1024) or kB/KB, MB, GB (powers of 1000).
type byteSize int64

// sizeUnit is a suffix of byteSize and the bytes it stands for.
type sizeUnit struct {
	suffix string
	n      int64
}

// sizeUnits returns byteSize's suffixes, the binary ones first (those
// String uses) and every suffix before any suffix it ends with.
func sizeUnits() []sizeUnit {
	return []sizeUnit{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"kB", 1e3}, {"KB", 1e3}, {"B", 1}}
}

// String formats b with the largest binary suffix that divides it.
func (b *byteSize) String() string {
	for _, u := range sizeUnits()[:3] {
		if *b != 0 && int64(*b)%u.n == 0 {
			return fmt.Sprintf("%d%s", int64(*b)/u.n, u.suffix)
		}
	}
	return strconv.FormatInt(int64(*b), 10)
}

// Set parses s into b.
func (b *byteSize) Set(s string) error {
	num, unit := s, int64(1)
	for _, u := range sizeUnits() {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			num, unit = strings.TrimSpace(rest), u.n
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/unit {
		return fmt.Errorf("parse size %q: want a number of bytes, optionally with KiB, MiB, GiB, kB, MB or GB", s)
	}
	*b = byteSize(n * unit)
	return nil
}

const tcpAbout = `Bulk TCP throughput: each of --conns connections (all opened first) writes
--bytes of payload as fast as it can, in writes of --chunk bytes, and
half-closes; the server ("loadgen serve --sink") answers the count of bytes
it received, which must equal --bytes. Prints one JSON line: confirmed
connections (requests), their payload (bytes), the time from the first write
to the last count (seconds), mb_per_s (10^6 bytes per second) and each
connection's transfer time as percentiles. Exits 1 if any connection failed.`

// maxChunk bounds --chunk: one write buffer.
const maxChunk = 1 << 30

func runTCP(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("tcp", "--to ADDR [--bytes 256MiB] [--conns 1] [--chunk 64KiB] [--warmup 0]", tcpAbout, stderr)
	to := fs.String("to", "", "server IP:port (a loadgen serve --sink listener)")
	size := byteSize(256 << 20)
	fs.Var(&size, "bytes", "payload `size` per connection (bytes, or with a suffix KiB, MiB, GiB, kB, MB, GB)")
	conns := fs.Int("conns", 1, "parallel connections")
	chunk := byteSize(64 << 10)
	fs.Var(&chunk, "chunk", "`size` of each write")
	warm := byteSize(0)
	fs.Var(&warm, "warmup", "payload `size` per connection of an unmeasured transfer, on --conns connections of its own, before the measured one (0: none)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *to == "" || *conns < 1 || size < 1 || chunk < 1 || chunk > maxChunk {
		fmt.Fprintln(stderr, "loadgen tcp: need --to, positive --conns and --bytes, and --chunk between 1 and 1GiB")
		return 2
	}
	res := Result{Mode: "tcp", Load: "bulk", To: *to, Conns: *conns}
	payload := make([]byte, chunk)
	for i := range payload {
		payload[i] = byte(i % 251)
	}
	if warm > 0 {
		w := runBulk(*to, *conns, int64(warm), payload)
		if w.errs > 0 {
			res.Errors, res.FirstError = w.errs, "warm-up: "+w.first.Error()
			return emit(stdout, res, 1)
		}
	}
	b := runBulk(*to, *conns, int64(size), payload)
	res.Requests, res.Errors = b.ok, b.errs
	res.Bytes = b.ok * int64(size)
	res.Seconds = b.elapsed.Seconds()
	res.RPS = perSecond(float64(b.ok), res.Seconds)
	res.MBps = perSecond(float64(res.Bytes), res.Seconds) / 1e6
	setLatencies(&res, &b.times)
	if b.first != nil {
		res.FirstError = b.first.Error()
	}
	code := 0
	if b.errs > 0 || b.ok == 0 {
		code = 1
	}
	return emit(stdout, res, code)
}

// bulkRun is what runBulk measured.
type bulkRun struct {
	ok, errs int64
	first    error
	elapsed  time.Duration // from the first write to the last count, over the confirmed connections
	times    hist          // per confirmed connection: from its first write to its count, ns
}

// transferTimes are one connection's first write and the arrival of the
// server's count.
type transferTimes struct {
	start, done time.Time
}

// runBulk opens conns connections to addr, then on all at once sends size
// bytes of payload (repeated) each, half-closes, and checks the server's
// count.
func runBulk(addr string, conns int, size int64, payload []byte) *bulkRun {
	r := &bulkRun{}
	fail := func(err error) {
		r.errs++
		if r.first == nil {
			r.first = err
		}
	}
	var cs []*net.TCPConn
	for range conns {
		c, err := dialer().DialContext(context.Background(), "tcp", addr)
		if err != nil {
			fail(fmt.Errorf("dial %s: %w", addr, err))
			continue
		}
		cs = append(cs, c.(*net.TCPConn))
	}
	times := make([]transferTimes, len(cs))
	errs := make([]error, len(cs))
	start := make(chan struct{})
	done := make(chan struct{})
	for i, c := range cs {
		go func() {
			defer func() { done <- struct{}{} }()
			defer c.Close()
			<-start
			times[i], errs[i] = transfer(c, size, payload)
		}()
	}
	close(start)
	for range cs {
		<-done
	}
	var first, last time.Time
	for i, err := range errs {
		if err != nil {
			fail(err)
			continue
		}
		t := times[i]
		r.ok++
		r.times.record(int64(t.done.Sub(t.start)))
		if first.IsZero() || t.start.Before(first) {
			first = t.start
		}
		if t.done.After(last) {
			last = t.done
		}
	}
	r.elapsed = last.Sub(first)
	return r
}

// transfer writes size bytes of payload (repeated) on c, half-closes it,
// reads the server's count and checks it against size. Deadlines guard
// against a hang: each write, and the wait for the count, may take up to
// ioTimeout.
func transfer(c *net.TCPConn, size int64, payload []byte) (transferTimes, error) {
	var t transferTimes
	t.start = time.Now()
	for sent := int64(0); sent < size; {
		n := int(min(size-sent, int64(len(payload))))
		if err := c.SetWriteDeadline(time.Now().Add(ioTimeout)); err != nil {
			return t, fmt.Errorf("set deadline: %w", err)
		}
		k, err := c.Write(payload[:n])
		sent += int64(k)
		if err != nil {
			return t, fmt.Errorf("write payload after %d of %d bytes: %w", sent, size, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return t, fmt.Errorf("close write: %w", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(ioTimeout)); err != nil {
		return t, fmt.Errorf("set deadline: %w", err)
	}
	count, rest, err := readCount(c)
	t.done = time.Now()
	if err != nil {
		return t, err
	}
	if count != size {
		return t, fmt.Errorf("server counted %d bytes, %d sent", count, size)
	}
	if len(rest) > 0 {
		return t, fmt.Errorf("read to the end of the connection: %q after the count", rest)
	}
	var one [1]byte
	switch k, err := c.Read(one[:]); {
	case k > 0:
		return t, errors.New("read to the end of the connection: data after the count")
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return t, nil
	default:
		return t, fmt.Errorf("read to the end of the connection: %w", err)
	}
}

// readCount reads the server's answer, a decimal count and "\n", from c;
// it returns the count and whatever followed the newline in the same read.
func readCount(c net.Conn) (int64, []byte, error) {
	var buf [32]byte
	got := 0
	for {
		k, err := c.Read(buf[got:])
		got += k
		if i := bytes.IndexByte(buf[:got], '\n'); i >= 0 {
			n, perr := strconv.ParseInt(string(buf[:i]), 10, 64)
			if perr != nil {
				return 0, nil, fmt.Errorf("read count: %q is not a byte count", buf[:i])
			}
			return n, buf[i+1 : got], nil
		}
		switch {
		case errors.Is(err, io.EOF):
			return 0, nil, fmt.Errorf("read count: connection closed after %q", buf[:got])
		case err != nil:
			return 0, nil, fmt.Errorf("read count: %w", err)
		case got == len(buf):
			return 0, nil, fmt.Errorf("read count: no newline in %q", buf[:got])
		}
	}
}
