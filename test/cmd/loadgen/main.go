// Command loadgen is the load generator and the upstream application of the
// proxy benchmark (test/bench/proxy).
//
//	loadgen http  --to ADDR [--rate 1000 | --max] [--conns 8] [--warmup 1s] [--duration 10s] [--host H] [--path P] [--body 64]
//	loadgen grpc  --to ADDR [--rate 1000 | --max] [--conns 8] [--warmup 1s] [--duration 10s]
//	loadgen serve [--http ADDRS] [--grpc ADDRS] [--stats ADDR] [--body 64]
//
// http sends GET requests over --conns HTTP/1.1 keep-alive connections; grpc
// makes unary grpc.health.v1.Health/Check calls, --conns at a time, over one
// grpc-go ClientConn (one HTTP/2 connection). With --rate the load is open:
// requests are scheduled at a fixed rate and each one's latency is measured
// from its scheduled send time, so a stall is charged to every request it
// delays (wrk2's correction of coordinated omission). With --max the load is
// closed: every connection sends its next request as soon as the previous one
// is answered, and the result is the request rate. Both print one JSON line
// (Result): latency percentiles from a log-linear histogram (precision better
// than 1 %), counts and errors.
//
// serve is the application: HTTP/1.1 and h2c on each --http address, gRPC
// (the standard health service) on each --grpc address, every answer a fixed
// body of --body bytes. Each listener counts requests from loopback and from
// elsewhere; --stats serves the counts as JSON (GET /). It prints READY once
// listening and runs until killed. Every socket is plain TCP (never MPTCP).
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
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: loadgen http|grpc|serve [flags]")
		return 2
	}
	switch args[0] {
	case "http", "grpc":
		return runLoad(args[0], args[1:], stdout, stderr)
	case "serve":
		return runServe(args[1:], stdout, stderr)
	default:
		fmt.Fprintf(stderr, "loadgen: unknown mode %q; want http, grpc or serve\n", args[0])
		return 2
	}
}

// Result is the JSON line of a load run. Latencies are in nanoseconds.
type Result struct {
	Mode  string  `json:"mode"` // http or grpc
	Load  string  `json:"load"` // fixed-rate or max
	To    string  `json:"to"`
	Conns int     `json:"conns"`
	Rate  float64 `json:"rate,omitempty"` // scheduled requests per second
	// Requests that succeeded in the measured phase, and the rate they
	// completed at.
	Requests int64   `json:"requests"`
	Seconds  float64 `json:"seconds"`
	RPS      float64 `json:"rps"`
	// Latency of the measured requests: from the scheduled send time at a
	// fixed rate, from the actual send in a closed loop.
	P50Ns  int64 `json:"p50_ns"`
	P90Ns  int64 `json:"p90_ns"`
	P99Ns  int64 `json:"p99_ns"`
	P999Ns int64 `json:"p999_ns"`
	MaxNs  int64 `json:"max_ns"`
	MeanNs int64 `json:"mean_ns"`
	// Fixed rate: how late sends started against their schedule (the load
	// generator's own timing quality).
	SendLagP50Ns int64 `json:"send_lag_p50_ns,omitempty"`
	SendLagP99Ns int64 `json:"send_lag_p99_ns,omitempty"`
	// Failed requests (warm-up included) and the first failure.
	Errors     int64  `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// HTTP: connections re-opened because the server closed one.
	Reconnects int64 `json:"reconnects"`
}

func runLoad(mode string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	to := fs.String("to", "", "server IP:port")
	rate := fs.Float64("rate", 1000, "requests per second in total (open, fixed-rate load)")
	maxLoad := fs.Bool("max", false, "closed loop: as many requests as the server answers (ignores --rate)")
	conns := fs.Int("conns", 8, "HTTP/1.1 connections, or concurrent gRPC calls on the one connection")
	warmup := fs.Duration("warmup", time.Second, "load before measuring (not measured)")
	duration := fs.Duration("duration", 10*time.Second, "measured load")
	host := fs.String("host", "app", "http: Host header")
	path := fs.String("path", "/", "http: request path")
	body := fs.Int64("body", 64, "http: expected response body size in bytes (-1: any)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *to == "" || *conns < 1 || *rate <= 0 || *duration <= 0 || *warmup < 0 {
		fmt.Fprintln(stderr, "loadgen: need --to, and positive --conns, --rate and --duration")
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
			hc := newHTTPConn(*to, *host, *path, *body)
			hcs = append(hcs, hc)
			ops[i] = hc.do
		}
	case "grpc":
		cc, err := newGRPCClient(*to)
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
	res.RPS = float64(st.ok) / res.Seconds
	res.P50Ns, res.P90Ns, res.P99Ns, res.P999Ns = st.lat.quantile(0.5), st.lat.quantile(0.9), st.lat.quantile(0.99), st.lat.quantile(0.999)
	res.MaxNs, res.MeanNs = st.lat.max, int64(st.lat.mean())
	code := 0
	if st.first != nil {
		res.FirstError = st.first.Error()
	}
	if errors.Is(st.first, errTooManyErrors) || st.ok == 0 {
		code = 1
	}
	return emit(stdout, res, code)
}

func emit(w io.Writer, res Result, code int) int {
	b, _ := json.Marshal(res)
	fmt.Fprintf(w, "%s\n", b)
	return code
}

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	httpAddrs := fs.String("http", "", "comma-separated HTTP/1.1 + h2c listen addresses")
	grpcAddrs := fs.String("grpc", "", "comma-separated gRPC listen addresses")
	statsAddr := fs.String("stats", "", "listen address of the JSON request counts")
	body := fs.Int("body", 64, "response body size in bytes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	a, err := startApp(*httpAddrs, *grpcAddrs, *statsAddr, *body)
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
