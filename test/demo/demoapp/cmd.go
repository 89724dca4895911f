package demoapp

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/spf13/cobra"
)

// NewRootCmd returns the sluice-demo command tree: one subcommand per role
// (web, books, authors, ticker, loadgen). The servers listen on --listen and
// every role runs until the command's context ends (SIGTERM in
// cmd/sluice-demo), logging to the command's standard error.
func NewRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "sluice-demo",
		Short: "The Sluice demo application: one binary, one subcommand per role",
		Long: `sluice-demo runs one role of the Sluice demo application (test/demo):

  loadgen --HTTP/1.1, WebSocket--> web --gRPC--> books
                                       --HTTP/1.1--> authors
                                       --WebSocket--> ticker

In the cluster the image ghcr.io/sluice-mesh/demo:<tag> runs this binary and
the container's args choose the role.`,
		SilenceUsage: true,
	}
	root.AddCommand(newCmdWeb(), newCmdBooks(), newCmdAuthors(), newCmdTicker(), newCmdLoadgen())
	return root
}

// ParseArgs finds the role command that args (a container's args, role
// first) run, parses its flags and validates them, without running it. It
// returns the command, whose flags hold the parsed values, or an error if
// the role does not exist or its flags are wrong.
func ParseArgs(args []string) (*cobra.Command, error) {
	root := NewRootCmd()
	cmd, rest, err := root.Find(args)
	if err != nil {
		return nil, fmt.Errorf("find role in %q: %w", args, err)
	}
	if cmd == root {
		return nil, fmt.Errorf("find role in %q: no role named", args)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return nil, fmt.Errorf("parse %s flags: %w", cmd.Name(), err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		return nil, fmt.Errorf("check %s args: %w", cmd.Name(), err)
	}
	if err := cmd.PreRunE(cmd, cmd.Flags().Args()); err != nil {
		return nil, err
	}
	return cmd, nil
}

// newLogger returns the role's logger: text lines on w, with the role as
// the component attribute.
func newLogger(w io.Writer, role string) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil)).With("component", role)
}

// checkRate checks a --failure-rate value.
func checkRate(rate float64) error {
	if rate < 0 || rate > 1 {
		return fmt.Errorf("validate flags: --failure-rate %v is not in [0, 1]", rate)
	}
	return nil
}

// webOptions are the flags of `sluice-demo web`.
type webOptions struct {
	listen, books, authors, ticker string
	timeout                        time.Duration
}

func newWebOptions() *webOptions {
	return &webOptions{
		listen:  ":8080",
		books:   "books:8081",
		authors: "http://authors:8082",
		ticker:  "ws://ticker:8083/ws",
		timeout: defaultTimeout,
	}
}

func (o *webOptions) config() WebConfig {
	return WebConfig{Books: o.books, Authors: o.authors, Ticker: o.ticker, Timeout: o.timeout}
}

func (o *webOptions) validate() error {
	if o.timeout <= 0 {
		return errors.New("validate flags: --timeout must be positive")
	}
	cfg := o.config()
	return cfg.validate()
}

func newCmdWeb() *cobra.Command {
	o := newWebOptions()
	cmd := &cobra.Command{
		Use:   "web",
		Short: "HTTP/1.1 front end: /api/books from books (gRPC) and authors (HTTP), /ws relayed to ticker",
		Args:  cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return o.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listen(cmd.Context(), o.listen)
			if err != nil {
				return err
			}
			cfg := o.config()
			cfg.Log = newLogger(cmd.ErrOrStderr(), "web")
			return RunWeb(cmd.Context(), l, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", o.listen, "address to serve HTTP/1.1 on")
	f.StringVar(&o.books, "books", o.books, "gRPC target (host:port) of the books service")
	f.StringVar(&o.authors, "authors", o.authors, "base URL of the authors service")
	f.StringVar(&o.ticker, "ticker", o.ticker, "WebSocket URL of the ticker service")
	f.DurationVar(&o.timeout, "timeout", o.timeout, "bound of each upstream call")
	return cmd
}

// booksOptions are the flags of `sluice-demo books`.
type booksOptions struct {
	listen      string
	failureRate float64
}

func newBooksOptions() *booksOptions { return &booksOptions{listen: ":8081"} }

func (o *booksOptions) validate() error { return checkRate(o.failureRate) }

func newCmdBooks() *cobra.Command {
	o := newBooksOptions()
	cmd := &cobra.Command{
		Use:   "books",
		Short: "gRPC server of the catalog (sluice.demo.books.Books) and of grpc.health.v1.Health",
		Args:  cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return o.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listen(cmd.Context(), o.listen)
			if err != nil {
				return err
			}
			return RunBooks(cmd.Context(), l, BooksConfig{
				FailureRate: o.failureRate,
				Log:         newLogger(cmd.ErrOrStderr(), "books"),
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", o.listen, "address to serve gRPC on")
	f.Float64Var(&o.failureRate, "failure-rate", o.failureRate, "fraction of calls to fail with Unavailable, in [0, 1]")
	return cmd
}

// authorsOptions are the flags of `sluice-demo authors`.
type authorsOptions struct {
	listen      string
	failureRate float64
}

func newAuthorsOptions() *authorsOptions { return &authorsOptions{listen: ":8082"} }

func (o *authorsOptions) validate() error { return checkRate(o.failureRate) }

func newCmdAuthors() *cobra.Command {
	o := newAuthorsOptions()
	cmd := &cobra.Command{
		Use:   "authors",
		Short: "HTTP/1.1 server of GET /authors/<id>, failing --failure-rate of requests with 500",
		Args:  cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return o.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listen(cmd.Context(), o.listen)
			if err != nil {
				return err
			}
			return RunAuthors(cmd.Context(), l, AuthorsConfig{
				FailureRate: o.failureRate,
				Log:         newLogger(cmd.ErrOrStderr(), "authors"),
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", o.listen, "address to serve HTTP/1.1 on")
	f.Float64Var(&o.failureRate, "failure-rate", o.failureRate, "fraction of requests to fail with 500, in [0, 1]")
	return cmd
}

// tickerOptions are the flags of `sluice-demo ticker`.
type tickerOptions struct {
	listen   string
	interval time.Duration
}

func newTickerOptions() *tickerOptions { return &tickerOptions{listen: ":8083", interval: time.Second} }

func (o *tickerOptions) validate() error {
	if o.interval <= 0 {
		return errors.New("validate flags: --interval must be positive")
	}
	return nil
}

func newCmdTicker() *cobra.Command {
	o := newTickerOptions()
	cmd := &cobra.Command{
		Use:   "ticker",
		Short: "WebSocket server: GET /ws streams a tick every --interval and echoes what it receives",
		Args:  cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return o.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := listen(cmd.Context(), o.listen)
			if err != nil {
				return err
			}
			return RunTicker(cmd.Context(), l, TickerConfig{
				Interval: o.interval,
				Log:      newLogger(cmd.ErrOrStderr(), "ticker"),
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", o.listen, "address to serve HTTP/1.1 and WebSocket on")
	f.DurationVar(&o.interval, "interval", o.interval, "time between two ticks")
	return cmd
}

// loadgenOptions are the flags of `sluice-demo loadgen`.
type loadgenOptions struct {
	target      string
	rps         float64
	concurrency int
	wsConns     int
	wsInterval  time.Duration
	wsLifetime  time.Duration
	report      time.Duration
	timeout     time.Duration
}

func newLoadgenOptions() *loadgenOptions {
	return &loadgenOptions{
		target:      "http://web:8080",
		rps:         10,
		concurrency: 4,
		wsConns:     1,
		wsInterval:  5 * time.Second,
		report:      10 * time.Second,
		timeout:     defaultTimeout,
	}
}

func (o *loadgenOptions) config() LoadgenConfig {
	return LoadgenConfig{
		Target:         o.target,
		RPS:            o.rps,
		Concurrency:    o.concurrency,
		WSConns:        o.wsConns,
		WSSendInterval: o.wsInterval,
		WSLifetime:     o.wsLifetime,
		Report:         o.report,
		Timeout:        o.timeout,
	}
}

func (o *loadgenOptions) validate() error {
	if o.concurrency < 1 || o.wsConns < 0 || o.wsInterval <= 0 || o.wsLifetime < 0 || o.report <= 0 || o.timeout <= 0 {
		return errors.New("validate flags: --concurrency must be at least 1, --ws-conns not negative, durations positive")
	}
	_, err := NewLoadgen(o.config())
	return err
}

func newCmdLoadgen() *cobra.Command {
	o := newLoadgenOptions()
	cmd := &cobra.Command{
		Use:   "loadgen",
		Short: "Load generator: GET /api/books and GET / at --rps, and --ws-conns WebSocket connections to /ws",
		Long: `loadgen sends GET /api/books and GET / in turn to --target at --rps,
keeps --ws-conns WebSocket connections to --target's /ws open, and logs a
summary every --report. A target that does not exist yet or refuses
connections is retried with backoff; loadgen runs until SIGTERM.`,
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			return o.validate()
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := o.config()
			cfg.Log = newLogger(cmd.ErrOrStderr(), "loadgen")
			g, err := NewLoadgen(cfg)
			if err != nil {
				return err
			}
			return g.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.target, "target", o.target, "base URL of web")
	f.Float64Var(&o.rps, "rps", o.rps, "HTTP requests per second")
	f.IntVar(&o.concurrency, "concurrency", o.concurrency, "most HTTP requests in flight at once")
	f.IntVar(&o.wsConns, "ws-conns", o.wsConns, "WebSocket connections to keep open")
	f.DurationVar(&o.wsInterval, "ws-interval", o.wsInterval, "time between two messages sent on each WebSocket connection")
	f.DurationVar(&o.wsLifetime, "ws-lifetime", o.wsLifetime, "close each WebSocket connection after this long and open a new one (0: keep it)")
	f.DurationVar(&o.report, "report", o.report, "time between two summary lines")
	f.DurationVar(&o.timeout, "timeout", o.timeout, "bound of each request and WebSocket handshake")
	return cmd
}
