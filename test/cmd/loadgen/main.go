// Command loadgen is the load generator and the upstream application of the
// proxy and mesh benchmarks (test/bench/proxy, test/bench).
//
//	loadgen http  --to ADDR [--rate 1000 | --max] [--conns 8] [--warmup 1s] [--duration 10s] [--new-conn] [--host H] [--path P] [--body 64]
//	loadgen grpc  --to ADDR [--rate 1000 | --max] [--conns 8] [--warmup 1s] [--duration 10s] [--authority NAME]
//	loadgen tcp   --to ADDR [--bytes 256MiB] [--conns 1] [--chunk 64KiB] [--warmup 0]
//	loadgen serve [--http ADDRS] [--grpc ADDRS] [--sink ADDRS] [--stats ADDR] [--body 64]
//
// http sends GET requests over --conns HTTP/1.1 keep-alive connections, or
// with --new-conn each request on a connection of its own (dial, send with
// Connection: close, read the response until the server closes, close), so
// that every request's latency includes its connect(). grpc makes unary
// grpc.health.v1.Health/Check calls, --conns at a time, over one grpc-go
// ClientConn (one HTTP/2 connection), with :authority --authority if set.
// With --rate the load is open: requests are scheduled at a fixed rate and
// each one's latency is measured from its scheduled send time, so a stall is
// charged to every request it delays (wrk2's correction of coordinated
// omission). With --max the load is closed: every connection sends its next
// request as soon as the previous one is answered, and the result is the
// request rate. Both print one JSON line (Result): latency percentiles from a
// log-linear histogram (precision better than 1 %), counts and errors.
//
// tcp measures bulk throughput: each of --conns connections writes --bytes
// of payload as fast as it can and half-closes; the server (a --sink
// listener) answers with the count of bytes it received, which must match.
// The JSON line carries the total payload and MB (10^6 bytes) per second from
// the first write to the last count's arrival.
//
// serve is the application: HTTP/1.1 and h2c on each --http address, gRPC
// (the standard health service) on each --grpc address, every answer a fixed
// body of --body bytes, and on each --sink address the byte sink of tcp. Each
// listener counts the connections it accepted, and requests (sink:
// connections) from loopback and from elsewhere; --stats serves the counts as
// JSON (GET /). It prints READY once every listener is up and runs until
// killed. Every socket is plain TCP (never MPTCP).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sluice-mesh/sluice/test/bench/benchkit"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usage is the synopsis of every mode (the package comment's).
const usage = `usage:
  loadgen http  --to ADDR [--rate 1000 | --max] [--conns 8] [--warmup 1s] [--duration 10s] [--new-conn] [--host H] [--path P] [--body 64]
  loadgen grpc  --to ADDR [--rate 1000 | --max] [--conns 8] [--warmup 1s] [--duration 10s] [--authority NAME]
  loadgen tcp   --to ADDR [--bytes 256MiB] [--conns 1] [--chunk 64KiB] [--warmup 0]
  loadgen serve [--http ADDRS] [--grpc ADDRS] [--sink ADDRS] [--stats ADDR] [--body 64]
Run "loadgen MODE --help" for a mode's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "http", "grpc":
		return runLoad(args[0], args[1:], stdout, stderr)
	case "tcp":
		return runTCP(args[1:], stdout, stderr)
	case "serve":
		return runServe(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "loadgen: unknown mode %q; want http, grpc, tcp or serve\n", args[0])
		return 2
	}
}

// Result is the JSON line of a load run (benchkit.LoadResult, which the
// benchmarks decode).
type Result = benchkit.LoadResult

// setLatencies fills r's latency fields from h.
func setLatencies(r *Result, h *hist) {
	r.P50Ns, r.P90Ns, r.P99Ns, r.P999Ns = h.quantile(0.5), h.quantile(0.9), h.quantile(0.99), h.quantile(0.999)
	r.MaxNs, r.MeanNs = h.max, int64(h.mean())
}

// perSecond is n/seconds, or 0 when nothing was timed.
func perSecond(n, seconds float64) float64 {
	if seconds <= 0 {
		return 0
	}
	return n / seconds
}

// newFlagSet returns the flag set of a mode: errors and --help go to
// stderr, with the synopsis line, what the mode does and its flags.
func newFlagSet(mode, synopsis, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("loadgen "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: loadgen %s %s\n\n%s\n\nflags:\n", mode, synopsis, about)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args into fs. It returns -1 when the mode should run,
// otherwise the exit code: 0 after --help, 2 for a bad flag or a stray
// argument.
func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

const (
	loadSynopsis = "--to ADDR [--rate 1000 | --max] [--conns 8] [--warmup 1s] [--duration 10s]"
	httpAbout    = `Sends HTTP/1.1 GET requests over --conns keep-alive connections (with
--new-conn: each request on a new connection, its connect included in its
latency) and prints one JSON line of latency percentiles, counts and errors.
--rate is an open, fixed-rate load whose latencies count from each request's
scheduled time; --max a closed loop that measures the request rate.`
	grpcAbout = `Makes unary grpc.health.v1.Health/Check calls, --conns at a time, over one
HTTP/2 connection, and prints one JSON line of latency percentiles, counts and
errors. --rate is an open, fixed-rate load whose latencies count from each
call's scheduled time; --max a closed loop that measures the call rate.`
)

// maxRate is the highest --rate: one request per nanosecond.
const maxRate = 1e9

func runLoad(mode string, args []string, stdout, stderr io.Writer) int {
	synopsis, about := loadSynopsis+" [--new-conn] [--host H] [--path P] [--body 64]", httpAbout
	if mode == "grpc" {
		synopsis, about = loadSynopsis+" [--authority NAME]", grpcAbout
	}
	fs := newFlagSet(mode, synopsis, about, stderr)
	to := fs.String("to", "", "server IP:port")
	rate := fs.Float64("rate", 1000, "requests per second in total (open, fixed-rate load)")
	maxLoad := fs.Bool("max", false, "closed loop: as many requests as the server answers (ignores --rate)")
	conns := fs.Int("conns", 8, "HTTP/1.1 connections (with --new-conn: requests in flight at most), or concurrent gRPC calls on the one connection")
	warmup := fs.Duration("warmup", time.Second, "load before measuring (not measured)")
	duration := fs.Duration("duration", 10*time.Second, "measured load")
	// --host, --path and --body have always been accepted (and ignored)
	// by grpc too; the newer flags exist only in their mode.
	host := fs.String("host", "app", "http: Host header")
	path := fs.String("path", "/", "http: request path")
	body := fs.Int64("body", 64, "http: expected response body size in bytes (-1: any)")
	var newConn bool
	var authority string
	if mode == "http" {
		fs.BoolVar(&newConn, "new-conn", false, "every request on a new TCP connection (Connection: close), its connect counted in its latency")
	} else {
		fs.StringVar(&authority, "authority", "", "`name` for the calls' :authority (default: the --to address)")
	}
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *to == "" || *conns < 1 || !(*rate > 0 && *rate <= maxRate) || *duration <= 0 || *warmup < 0 {
		fmt.Fprintln(stderr, "loadgen: need --to, and positive --conns, --rate (at most 1e9) and --duration")
		return 2
	}
	res := Result{Mode: mode, Load: "fixed-rate", To: *to, Conns: *conns, Rate: *rate}
	if *maxLoad {
		res.Load, res.Rate = "max", 0
	}
	ops := make([]op, *conns)
	var hcs []*httpConn
	switch mode {
	case "http":
		for i := range ops {
			hc := newHTTPConn(*to, *host, *path, *body, newConn)
			hcs = append(hcs, hc)
			ops[i] = hc.do
		}
	case "grpc":
		cc, err := newGRPCClient(*to, authority)
		if err != nil {
			res.FirstError = err.Error()
			return emit(stdout, res, 1)
		}
		defer cc.Close()
		for i := range ops {
			ops[i] = grpcOp(cc)
		}
	}
	var st *stats
	if *maxLoad {
		st = runClosedLoop(*warmup, *duration, ops)
	} else {
		st = runFixedRate(*rate, *warmup, *duration, ops)
		res.SendLagP50Ns, res.SendLagP99Ns = st.lag.quantile(0.5), st.lag.quantile(0.99)
	}
	for _, hc := range hcs {
		res.Reconnects += hc.reconnects
		hc.close()
	}
	res.Requests, res.Errors = st.ok, st.errs
	res.Seconds = st.elapsed.Seconds()
	res.RPS = perSecond(float64(st.ok), res.Seconds)
	setLatencies(&res, &st.lat)
	code := 0
	if st.first != nil {
		res.FirstError = st.first.Error()
	}
	if errors.Is(st.first, errTooManyErrors) || st.ok == 0 {
		code = 1
	}
	return emit(stdout, res, code)
}

// emit prints res as one JSON line and returns code.
func emit(w io.Writer, res Result, code int) int {
	b, _ := json.Marshal(res) // no NaN or infinity: every rate goes through perSecond
	fmt.Fprintf(w, "%s\n", b)
	return code
}

const serveAbout = `The benchmark's application: HTTP/1.1 and h2c on each --http address, gRPC
(grpc.health.v1.Health) on each --grpc address, every answer a body of --body
bytes, and on each --sink address the byte sink of "loadgen tcp" (reads to
EOF, answers the decimal count of bytes and "\n", closes). Each listener counts
the connections it accepted and its requests (sink: connections) from loopback
and from elsewhere; --stats serves the counts as JSON on GET /. Prints READY
once every listener is up and runs until SIGTERM or SIGINT.`

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", "[--http ADDRS] [--grpc ADDRS] [--sink ADDRS] [--stats ADDR] [--body 64]", serveAbout, stderr)
	httpAddrs := fs.String("http", "", "comma-separated HTTP/1.1 + h2c listen addresses")
	grpcAddrs := fs.String("grpc", "", "comma-separated gRPC listen addresses")
	sinkAddrs := fs.String("sink", "", "comma-separated TCP byte-sink listen addresses (for loadgen tcp)")
	statsAddr := fs.String("stats", "", "listen address of the JSON counts")
	body := fs.Int("body", 64, "response body size in bytes")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if *body < 0 {
		fmt.Fprintln(stderr, "loadgen serve: --body must not be negative")
		return 2
	}
	a, err := startApp(appConfig{HTTP: *httpAddrs, GRPC: *grpcAddrs, Sink: *sinkAddrs, Stats: *statsAddr, Body: *body})
	if err != nil {
		fmt.Fprintf(stderr, "loadgen serve: %v\n", err)
		return 1
	}
	defer a.close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Fprintln(stdout, "READY")
	<-sig
	return 0
}
