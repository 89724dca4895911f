// Command steerpeer is a test program for steering tests and benchmarks. It plays
// the application ("serve", "dial") and a minimal sidecar proxy ("proxy") that
// reads the original destination of redirected connections the way a real proxy
// does. All of it copies through plain Read/Write loops (never splice), since data
// that sk_msg redirects into a socket's ingress queue is invisible to splice(2),
// and all its listeners are plain TCP (an MPTCP socket cannot enter a SOCKHASH).
//
//	steerpeer proxy [--outbound 4140] [--inbound 4143] [--mode forward|echo]
//	steerpeer serve --listen ADDR [--mode echo|sha256]
//	steerpeer dial --to ADDR [--bytes N] [--seed S] [--expect-sha256] [--timeout 60s] [--hold D]
//
// Each prints JSON lines on stdout; proxy and serve print READY once listening.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: steerpeer proxy|serve|dial [flags]")
		return 2
	}
	out := &output{w: stdout}
	switch args[0] {
	case "proxy":
		return runProxy(args[1:], out, stderr)
	case "serve":
		return runServe(args[1:], out, stderr)
	case "dial":
		return runDial(args[1:], out, stderr)
	default:
		fmt.Fprintf(stderr, "steerpeer: unknown subcommand %q (want proxy, serve or dial)\n", args[0])
		return 2
	}
}

// output writes whole lines to stdout, one writer at a time.
type output struct {
	mu sync.Mutex
	w  io.Writer
}

// line writes s and a newline.
func (o *output) line(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	io.WriteString(o.w, s+"\n")
	if f, ok := o.w.(interface{ Sync() error }); ok {
		f.Sync()
	}
}

// json writes v as one JSON line.
func (o *output) json(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"err": err.Error()})
	}
	o.line(string(b))
}
