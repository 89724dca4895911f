package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// errUsage says the command line was wrong and the flag package already
// said how.
var errUsage = errors.New("usage")

// maxDelay bounds GET /?delay=.
const maxDelay = 30 * time.Second

// Answer is what GET / returns and what the client mode decodes.
type Answer struct {
	// Pod is the answering pod's name ($POD_NAME or the host name).
	Pod string `json:"pod"`
	// Version is $VERSION.
	Version string `json:"version"`
	// Path is the request's path.
	Path string `json:"path"`
	// Remote is the client's address as the server saw it.
	Remote string `json:"remote"`
}

// serveOptions are the server's flags.
type serveOptions struct {
	listen          string
	readyFile       string
	serveDir        string
	startedFile     string
	requireFile     string
	shutdownTimeout time.Duration
}

func parseServe(args []string, stderr io.Writer) (serveOptions, error) {
	var o serveOptions
	fs := flag.NewFlagSet("echo serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", ":8080", "`address` to listen on")
	fs.StringVar(&o.readyFile, "ready-file", "", "GET /ready fails while this `file` does not exist")
	fs.StringVar(&o.serveDir, "serve-dir", "", "serve the files under this `directory` at /files/")
	fs.StringVar(&o.startedFile, "started-file", "", "write this `file` (pod name and time) once listening, remove it on exit")
	fs.StringVar(&o.requireFile, "require-file", "", "exit with an error at start unless this `file` exists (a native sidecar's --started-file)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long requests in flight may take after SIGTERM")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "echo serve: unexpected arguments %q\n", fs.Args())
		return o, errUsage
	}
	return o, nil
}

func serveMain(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	o, err := parseServe(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if o.requireFile != "" {
		if _, err := os.Stat(o.requireFile); err != nil {
			return fmt.Errorf("check required file: %w", err)
		}
	}
	s := newServer(podName(), os.Getenv("VERSION"), o.readyFile, o.serveDir, log)
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	if o.startedFile != "" {
		content := fmt.Sprintf("%s %s\n", s.pod, time.Now().UTC().Format(time.RFC3339Nano))
		if err := os.WriteFile(o.startedFile, []byte(content), 0o644); err != nil {
			ln.Close()
			return fmt.Errorf("write started file: %w", err)
		}
		defer os.Remove(o.startedFile)
	}
	// The line tests and users look for: it says the server is up, where.
	fmt.Fprintf(stdout, "echo %s (version %s) listening on %s\n", s.pod, s.version, ln.Addr())
	return serve(ctx, ln, s.handler(stdout), o.shutdownTimeout, log)
}

// serve serves h on ln until ctx ends, then shuts down gracefully: no new
// connections, requests in flight get up to timeout to finish.
func serve(ctx context.Context, ln net.Listener, h http.Handler, timeout time.Duration, log *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", timeout)
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	<-errc // http.ErrServerClosed
	log.Info("stopped")
	return nil
}

func podName() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}

// server holds the state the handlers share.
type server struct {
	pod, version string
	readyFile    string
	serveDir     string
	log          *slog.Logger
	notReady     atomic.Bool // POST /ready?fail=1
	notLive      atomic.Bool // POST /healthz?fail=1
	client       *http.Client
}

func newServer(pod, version, readyFile, serveDir string, log *slog.Logger) *server {
	if version == "" {
		version = "unknown"
	}
	return &server{pod: pod, version: version, readyFile: readyFile, serveDir: serveDir, log: log, client: newClient(5 * time.Second)}
}

// handler routes the endpoints; every request is logged on access (one
// line: method, path, remote address, status), which is what `kubectl
// logs` shows.
func (s *server) handler(access io.Writer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.root)
	mux.HandleFunc("GET /healthz", s.probe("live", &s.notLive, ""))
	mux.HandleFunc("POST /healthz", s.flip("live", &s.notLive))
	mux.HandleFunc("GET /ready", s.probe("ready", &s.notReady, s.readyFile))
	mux.HandleFunc("POST /ready", s.flip("ready", &s.notReady))
	mux.HandleFunc("GET /fetch", s.fetch)
	if s.serveDir != "" {
		mux.Handle("GET /files/", http.StripPrefix("/files/", http.FileServer(http.Dir(s.serveDir))))
	}
	// Any other GET path answers like / (so a test can mark its requests).
	mux.HandleFunc("GET /", s.root)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		mux.ServeHTTP(rec, r)
		fmt.Fprintf(access, "%s %s from %s: %d\n", r.Method, r.URL.RequestURI(), r.RemoteAddr, rec.status)
	})
}

func (s *server) root(w http.ResponseWriter, r *http.Request) {
	var delay time.Duration
	if d := r.URL.Query().Get("delay"); d != "" {
		var err error
		if delay, err = time.ParseDuration(d); err != nil || delay < 0 || delay > maxDelay {
			http.Error(w, fmt.Sprintf("delay: want a duration between 0 and %s, got %q", maxDelay, d), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if delay > 0 {
		// Headers first, so the client knows the request is in flight.
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		time.Sleep(delay)
	}
	json.NewEncoder(w).Encode(Answer{Pod: s.pod, Version: s.version, Path: r.URL.Path, Remote: r.RemoteAddr})
}

// probe answers 200 "<name>" while neither the flag is set nor the file
// (when given) is missing, and 503 with the reason otherwise.
func (s *server) probe(name string, failed *atomic.Bool, file string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if failed.Load() {
			http.Error(w, "not "+name+": failed on request", http.StatusServiceUnavailable)
			return
		}
		if file != "" {
			if _, err := os.Stat(file); err != nil {
				http.Error(w, fmt.Sprintf("not %s: %v", name, err), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, name)
	}
}

// flip sets (?fail=1) or clears (?fail=0) a probe's failure.
func (s *server) flip(name string, failed *atomic.Bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		fail, err := strconv.ParseBool(r.URL.Query().Get("fail"))
		if err != nil {
			http.Error(w, "fail: want ?fail=1 or ?fail=0", http.StatusBadRequest)
			return
		}
		failed.Store(fail)
		s.log.Info("probe flipped", "probe", name, "failing", fail)
		fmt.Fprintf(w, "%s failing=%t\n", name, fail)
	}
}

// FetchResult is what GET /fetch answers.
type FetchResult struct {
	// Answers are the successful calls' answers, in order.
	Answers []Answer `json:"answers"`
	// Errors are the failed calls' errors.
	Errors []string `json:"errors,omitempty"`
}

func (s *server) fetch(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	url := q.Get("url")
	n, err := strconv.Atoi(q.Get("n"))
	if url == "" || err != nil || n < 1 || n > 1000 {
		http.Error(w, "fetch: want ?url=URL&n=N with 1 <= N <= 1000", http.StatusBadRequest)
		return
	}
	var res FetchResult
	for a, err := range getAll(r.Context(), s.client, url, n) {
		if err != nil {
			res.Errors = append(res.Errors, err.Error())
			continue
		}
		res.Answers = append(res.Answers, a)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the real writer (Flush).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
