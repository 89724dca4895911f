// Command testapp is the application side of the proxy's end-to-end tests:
// one binary that runs in netns pods as the server (`serve`) and as every
// client the tests drive through two proxies (`http`, `grpc`, `ws`, `tcp`,
// `opaque`), plus `gen`, which writes a deterministic payload for external
// clients such as curl.
//
//	testapp serve  --http :8080 --grpc :9090 --tcp-echo :7000 --opaque :7100 [--delay D] [--name NAME]
//	testapp http   --url http://10.0.0.2:8080/sha256 [--host web:8080] [--upload-bytes N] [--expect-continue] [--keepalive-requests K] [--h2c]
//	testapp grpc   --addr 10.0.0.2:9090 [--authority web:9090] --call unary|server-stream|client-stream|bidi [--count N] [--deadline D]
//	testapp ws     --url ws://10.0.0.2:8080/ws [--host web:8080] [--messages M]
//	testapp tcp    --addr 10.0.0.2:7000 --bytes N
//	testapp opaque --addr 10.0.0.2:7100 [--frames F]
//	testapp gen    --bytes N [--seed S]
//
// Every command writes its results as JSON lines on stdout: the server one
// line when it is listening and one per TCP, opaque or gRPC exchange; a
// client one line per request or exchange, with an "err" field instead of a
// non-zero exit when the exchange itself failed (a failed exchange is a
// result the tests check). Exit status 1 means the command could not run.
// Every socket is plain TCP, never MPTCP, so that the steering programs can
// see it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}

// newRootCmd builds the testapp command tree.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "testapp",
		Short:         "Application side of the proxy's end-to-end tests",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(newCmdServe(), newCmdHTTP(), newCmdGRPC(), newCmdWS(), newCmdTCP(), newCmdOpaque(), newCmdGen())
	return root
}

// jsonOut writes JSON lines to one writer from any goroutine.
type jsonOut struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func newJSONOut(w io.Writer) *jsonOut { return &jsonOut{enc: json.NewEncoder(w)} }

// line writes v as one JSON line.
func (o *jsonOut) line(v any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.enc.Encode(v)
}

// runE makes a command's RunE: validate the flags, then run with the
// command's context and a JSON writer on its stdout.
func runE(validate func() error, run func(context.Context, *jsonOut) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if err := validate(); err != nil {
			return err
		}
		return run(cmd.Context(), newJSONOut(cmd.OutOrStdout()))
	}
}

// oneLine adapts a client that returns a single result to runE.
func oneLine[T any](run func(context.Context) T) func(context.Context, *jsonOut) error {
	return func(ctx context.Context, out *jsonOut) error {
		out.line(run(ctx))
		return nil
	}
}

// session dials addr (plain TCP) for an exchange bounded by timeout: the
// connection is closed when ctx ends or the timeout passes. done closes it.
func session(ctx context.Context, addr string, timeout time.Duration) (_ *net.TCPConn, done func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	nc, err := dialer(10*time.Second).DialContext(ctx, "tcp", addr)
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	c := nc.(*net.TCPConn)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	return c, func() { stop(); cancel(); c.Close() }, nil
}

// errString is err's text, or "" for nil.
func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// dialer dials plain TCP (never MPTCP) with a connect timeout.
func dialer(timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	d.SetMultipathTCP(false)
	return d
}

// listen opens a plain TCP listener (never MPTCP) on addr.
func listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}
