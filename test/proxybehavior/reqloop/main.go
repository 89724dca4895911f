// Command reqloop is the client application of the proxy's behaviour tests:
// it runs in a netns pod, sends HTTP/1.1 requests (steered through the
// pod's proxy) and prints one JSON line (Result) per request, so that a
// test can watch, while the requests flow, which endpoint answered each one
// and whether any failed.
//
//	reqloop --url http://10.96.0.1:8080/echo [--host web:8080] [--count N] [--concurrency C] [--interval D] [--timeout D]
//
// With --count 0 it sends until its standard input reaches end of file (the
// test closes the pipe) or SIGTERM arrives. Each of --concurrency workers
// sends its requests one after another over keep-alive connections, waiting
// --interval between them. The last line is {"done":true,"sent":N}. Every
// socket is plain TCP, never MPTCP, so that the steering programs see it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Result is the JSON line of one request.
type Result struct {
	Seq        int64  `json:"seq"`              // order in which requests were started, from 0
	Status     int    `json:"status,omitempty"` // HTTP status; 0 when the request failed
	App        string `json:"app,omitempty"`    // the answer's x-app-name header
	ProxyError string `json:"proxy_error,omitempty"`
	Err        string `json:"err,omitempty"` // transport error
}

// Done is the last line.
type Done struct {
	Done bool  `json:"done"`
	Sent int64 `json:"sent"`
}

// options are reqloop's flags.
type options struct {
	url         string
	host        string
	count       int64
	concurrency int
	interval    time.Duration
	timeout     time.Duration
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if o.count == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		go func() {
			_, _ = io.Copy(io.Discard, stdin)
			cancel()
		}()
	}
	sent := loop(ctx, o, json.NewEncoder(stdout))
	_ = json.NewEncoder(stdout).Encode(Done{Done: true, Sent: sent})
	return 0
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("reqloop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "", "URL to request (required)")
	fs.StringVar(&o.host, "host", "", "Host header (default: the URL's host)")
	fs.Int64Var(&o.count, "count", 0, "requests to send; 0: until stdin closes")
	fs.IntVar(&o.concurrency, "concurrency", 1, "workers sending at once")
	fs.DurationVar(&o.interval, "interval", 0, "pause between a worker's requests")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "limit of one request")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.url == "":
		return o, errors.New("parse flags: --url is required")
	case o.count < 0, o.concurrency < 1, o.interval < 0, o.timeout <= 0:
		return o, errors.New("parse flags: --count, --interval must be ≥ 0, --concurrency and --timeout > 0")
	}
	return o, nil
}

// loop sends the requests and returns how many were sent.
func loop(ctx context.Context, o options, enc *json.Encoder) int64 {
	d := &net.Dialer{Timeout: 5 * time.Second}
	d.SetMultipathTCP(false)
	client := &http.Client{
		Timeout: o.timeout,
		Transport: &http.Transport{
			DialContext:         d.DialContext,
			MaxIdleConnsPerHost: o.concurrency,
			DisableCompression:  true,
		},
	}
	var (
		next atomic.Int64
		mu   sync.Mutex
		wg   sync.WaitGroup
	)
	for range o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				seq := next.Add(1) - 1
				if o.count > 0 && seq >= o.count {
					return
				}
				res := send(client, o, seq)
				mu.Lock()
				_ = enc.Encode(res)
				mu.Unlock()
				if o.interval > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(o.interval):
					}
				}
			}
		}()
	}
	wg.Wait()
	client.CloseIdleConnections()
	n := next.Load()
	if o.count > 0 {
		n = min(n, o.count)
	}
	return n
}

// send makes one request. It is not cancelled by the loop's context: a
// request that was started is finished, so that stopping the loop never
// produces a failure.
func send(client *http.Client, o options, seq int64) Result {
	res := Result{Seq: seq}
	req, err := http.NewRequest(http.MethodGet, o.url, nil)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	if o.host != "" {
		req.Host = o.host
	}
	resp, err := client.Do(req)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		res.Err = "read body: " + err.Error()
	}
	res.Status = resp.StatusCode
	res.App = resp.Header.Get("X-App-Name")
	res.ProxyError = resp.Header.Get("Sluice-Proxy-Error")
	return res
}
