package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Result is the JSON line a client mode prints.
type Result struct {
	Mode string `json:"mode"`
	To   string `json:"to"`
	N    int    `json:"n,omitempty"`
	// Latency percentiles of connect(2) (connect) or of a ping-pong (rr), ns.
	MinNs  int64 `json:"min_ns,omitempty"`
	P50Ns  int64 `json:"p50_ns,omitempty"`
	P90Ns  int64 `json:"p90_ns,omitempty"`
	P99Ns  int64 `json:"p99_ns,omitempty"`
	MaxNs  int64 `json:"max_ns,omitempty"`
	MeanNs int64 `json:"mean_ns,omitempty"`
	// Bulk: bytes sent (and received back), seconds from first write to last
	// byte read, and MB/s (10^6 bytes) of payload in one direction.
	Bytes   int64   `json:"bytes,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
	MBps    float64 `json:"mb_per_s,omitempty"`
	// MSS is the bulk socket's TCP_MAXSEG after the transfer.
	MSS int `json:"mss,omitempty"`
	// SpuriousEAGAIN counts reads of a blocking socket that failed with
	// EAGAIN and were retried. The kernel's sockmap receive path
	// (tcp_bpf_recvmsg) returns EAGAIN on a blocking socket when its wait is
	// woken without data, e.g. by a write-space wakeup of the same socket.
	SpuriousEAGAIN int64  `json:"spurious_eagain,omitempty"`
	Err            string `json:"err,omitempty"`
}

// eagains counts the spurious EAGAINs of blocking reads.
var eagains atomic.Int64

func run(mode string, args []string) int {
	fs := flag.NewFlagSet("steerbench "+mode, flag.ContinueOnError)
	to := fs.String("to", "", "destination IP:port")
	n := fs.Int("n", -1, "number of connects (connect, default 5000) or ping-pongs (rr, default 20000)")
	warmup := fs.Int("warmup", -1, "untimed iterations first (connect 200, rr 1000)")
	size := fs.Int("size", 64, "rr: message size")
	bytes := fs.Int64("bytes", 512<<20, "bulk: bytes to send")
	chunk := fs.Int("chunk", 64<<10, "bulk: write size")
	listen := fs.String("listen", "127.0.0.1:4140", "proxy: listen address")
	expect := fs.String("expect-orig", "", "proxy: the original destination steered connections should report")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if mode == "proxy" {
		return runProxy(*listen, *expect)
	}
	dst, err := netip.ParseAddrPort(*to)
	if err != nil {
		fmt.Fprintf(os.Stderr, "steerbench %s: --to: %v\n", mode, err)
		return 2
	}
	res := Result{Mode: mode, To: dst.String()}
	switch mode {
	case "connect":
		res.N = def(*n, 5000)
		err = benchConnect(dst, res.N, def(*warmup, 200), &res)
	case "rr":
		res.N = def(*n, 20000)
		err = benchRR(dst, res.N, def(*warmup, 1000), *size, &res)
	case "bulk":
		err = benchBulk(dst, *bytes, *chunk, &res)
	default:
		fmt.Fprintf(os.Stderr, "steerbench: unknown mode %q (want connect, rr, bulk or proxy)\n", mode)
		return 2
	}
	if err != nil {
		res.Err = err.Error()
	}
	res.SpuriousEAGAIN = eagains.Load()
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	if err != nil {
		return 1
	}
	return 0
}

// def returns v, or d when v was not given (-1).
func def(v, d int) int {
	if v < 0 {
		return d
	}
	return v
}

// sockaddr converts dst for connect(2).
func sockaddr(dst netip.AddrPort) (int, unix.Sockaddr) {
	if dst.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
}

// dial opens a blocking plain TCP socket connected to dst and returns the fd
// and how long connect(2) took.
func dial(dst netip.AddrPort) (int, time.Duration, error) {
	family, sa := sockaddr(dst)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	start := time.Now()
	err = unix.Connect(fd, sa)
	d := time.Since(start)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("connect %v: %w", dst, err)
	}
	return fd, d, nil
}

// abort closes fd with SO_LINGER 0: an RST, no TIME_WAIT.
func abort(fd int) {
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	unix.Close(fd)
}

func summarize(ds []time.Duration, res *Result) {
	slices.Sort(ds)
	pct := func(p float64) int64 {
		i := int(p * float64(len(ds)-1))
		return int64(ds[i])
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	res.MinNs, res.P50Ns, res.P90Ns, res.P99Ns, res.MaxNs = pct(0), pct(0.50), pct(0.90), pct(0.99), pct(1)
	res.MeanNs = int64(sum) / int64(len(ds))
}

func benchConnect(dst netip.AddrPort, n, warmup int, res *Result) error {
	runtime.LockOSThread()
	ds := make([]time.Duration, 0, n)
	for i := 0; i < warmup+n; i++ {
		fd, d, err := dial(dst)
		if err != nil {
			return err
		}
		abort(fd)
		if i >= warmup {
			ds = append(ds, d)
		}
	}
	summarize(ds, res)
	return nil
}

// read is read(2) on a blocking socket, retried on EINTR and on the
// spurious EAGAIN of the sk_msg path (counted: see Result.SpuriousEAGAIN).
func read(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			eagains.Add(1)
			continue
		}
		return n, err
	}
}

func readFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := read(fd, b)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		b = b[n:]
	}
	return nil
}

func benchRR(dst netip.AddrPort, n, warmup, size int, res *Result) error {
	runtime.LockOSThread()
	fd, _, err := dial(dst)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return err
	}
	msg, got := make([]byte, size), make([]byte, size)
	ds := make([]time.Duration, 0, n)
	for i := 0; i < warmup+n; i++ {
		binary.BigEndian.PutUint64(msg, uint64(i))
		start := time.Now()
		if err := writeAll(fd, msg); err != nil {
			return err
		}
		if err := readFull(fd, got); err != nil {
			return err
		}
		d := time.Since(start)
		if binary.BigEndian.Uint64(got) != uint64(i) {
			return fmt.Errorf("ping-pong %d: got back %x", i, got[:8])
		}
		if i >= warmup {
			ds = append(ds, d)
		}
	}
	summarize(ds, res)
	return nil
}

func benchBulk(dst netip.AddrPort, total int64, chunk int, res *Result) error {
	fd, _, err := dial(dst)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	start := time.Now()
	werr := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, chunk)
		for i := range buf {
			buf[i] = byte(i)
		}
		for left := total; left > 0; {
			b := buf
			if int64(len(b)) > left {
				b = b[:left]
			}
			if err := writeAll(fd, b); err != nil {
				werr <- err
				return
			}
			left -= int64(len(b))
		}
		werr <- unix.Shutdown(fd, unix.SHUT_WR)
	}()
	runtime.LockOSThread()
	buf := make([]byte, 256<<10)
	var got int64
	for got < total {
		n, err := read(fd, buf)
		if err != nil {
			return fmt.Errorf("read after %d bytes: %w", got, err)
		}
		if n == 0 {
			return fmt.Errorf("EOF after %d of %d bytes", got, total)
		}
		got += int64(n)
	}
	res.Seconds = time.Since(start).Seconds()
	if err := <-werr; err != nil {
		return err
	}
	res.Bytes = got
	res.MSS, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG)
	res.MBps = float64(got) / 1e6 / res.Seconds
	return nil
}

// ProxyStats is the proxy's answer to "stats".
type ProxyStats struct {
	Accepted  int64  `json:"accepted"`
	OrigMatch int64  `json:"orig_match"` // SO_ORIGINAL_DST == --expect-orig
	OrigOther int64  `json:"orig_other"` // SO_ORIGINAL_DST answered something else
	OrigErr   int64  `json:"orig_err"`   // SO_ORIGINAL_DST failed
	LastOrig  string `json:"last_orig,omitempty"`
	LastErr   string `json:"last_err,omitempty"`
}

type proxy struct {
	expect                               netip.AddrPort
	accepted, origMatch, origOther, oErr atomic.Int64
	mu                                   sync.Mutex
	lastOrig, lastErr                    string
}

func runProxy(listen, expect string) int {
	p := &proxy{}
	if expect != "" {
		var err error
		if p.expect, err = netip.ParseAddrPort(expect); err != nil {
			fmt.Fprintf(os.Stderr, "steerbench proxy: --expect-orig: %v\n", err)
			return 2
		}
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp", listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "steerbench proxy: %v\n", err)
		return 1
	}
	var outMu sync.Mutex
	fmt.Println("READY")
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() != "stats" {
				continue
			}
			p.mu.Lock()
			st := ProxyStats{Accepted: p.accepted.Load(), OrigMatch: p.origMatch.Load(), OrigOther: p.origOther.Load(),
				OrigErr: p.oErr.Load(), LastOrig: p.lastOrig, LastErr: p.lastErr}
			p.mu.Unlock()
			b, _ := json.Marshal(st)
			outMu.Lock()
			fmt.Println(string(b))
			outMu.Unlock()
		}
		os.Exit(0) // stdin closed: the benchmark is gone
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.ECONNABORTED) {
				continue
			}
			fmt.Fprintf(os.Stderr, "steerbench proxy: accept: %v\n", err)
			return 1
		}
		p.accepted.Add(1)
		go p.handle(c.(*net.TCPConn))
	}
}

// handle reads the original destination, as a real proxy would, and echoes.
func (p *proxy) handle(c *net.TCPConn) {
	defer c.Close()
	orig, err := originalDst(c)
	switch {
	case err != nil:
		p.oErr.Add(1)
		p.mu.Lock()
		p.lastErr = err.Error()
		p.mu.Unlock()
	case orig == p.expect:
		p.origMatch.Add(1)
	default:
		p.origOther.Add(1)
		p.mu.Lock()
		p.lastOrig = orig.String()
		p.mu.Unlock()
	}
	// Plain read/write: never splice (see the package comment).
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				_ = c.CloseWrite()
			}
			return
		}
	}
}

// originalDst reads SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6), as
// iptables REDIRECT (conntrack) and Sluice's cgroup/getsockopt answer it.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		dst  netip.AddrPort
		oerr error
	)
	err = rc.Control(func(fd uintptr) {
		var buf [unix.SizeofSockaddrInet6]byte
		level, size := unix.SOL_IP, uint32(unix.SizeofSockaddrInet4)
		if domain, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); domain == unix.AF_INET6 {
			level, size = unix.SOL_IPV6, unix.SizeofSockaddrInet6
		}
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), unix.SO_ORIGINAL_DST,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			oerr = fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", errno)
			return
		}
		port := binary.BigEndian.Uint16(buf[2:4])
		switch binary.NativeEndian.Uint16(buf[:2]) {
		case unix.AF_INET:
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(buf[4:8])), port)
		case unix.AF_INET6:
			dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(buf[8:24])).Unmap(), port)
		default:
			oerr = fmt.Errorf("SO_ORIGINAL_DST: unexpected family %d", binary.NativeEndian.Uint16(buf[:2]))
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	return dst, oerr
}
