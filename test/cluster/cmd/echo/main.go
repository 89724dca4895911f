// Command echo is the local cluster's test application: a small HTTP server
// that says which pod answered, with switches to drive the kubelet's probes,
// and a client mode that calls a URL many times and prints who answered.
//
// Server (the default; "echo serve [flags]"):
//
//	GET /           JSON {pod, version, path, remote}; ?delay=250ms answers after
//	                the headers were sent and the delay passed (graceful-stop tests)
//	GET /healthz    200 while live; POST /healthz?fail=1 (or 0) flips it (liveness)
//	GET /ready      200 while ready: --ready-file exists (when set) and no
//	                POST /ready?fail=1 is in force (readiness)
//	GET /fetch      ?url=U&n=N: calls U N times, each on a new connection, and
//	                answers with what came back (traffic checks from inside a pod)
//	GET /files/...  the files under --serve-dir (when set)
//
// The pod name is $POD_NAME, or the host name; the version is $VERSION. On
// SIGTERM or SIGINT the server stops accepting connections, finishes the
// requests in flight and exits 0.
//
// Client: "echo get [-n N] URL" calls URL N times, each on a new connection
// (so that a Service's load balancing picks anew), and prints the pod of
// each answer on a line of its own; it exits 1 if any call failed.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its inputs and outputs passed in; it returns the exit
// status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil)).With("component", "echo")
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serveMain(ctx, args, stdout, stderr, log)
	case "get":
		err = getMain(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "echo: unknown command %q\n%s", cmd, usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case err == errUsage:
		return 2
	default:
		fmt.Fprintf(stderr, "echo %s: %v\n", cmd, err)
		return 1
	}
}

const usage = `usage:
  echo [serve] [--listen :8080] [--ready-file PATH] [--serve-dir DIR]
               [--started-file PATH] [--require-file PATH] [--shutdown-timeout 10s]
  echo get [-n N] [--timeout 5s] URL
environment: POD_NAME (default: the host name), VERSION (default "unknown")
`
