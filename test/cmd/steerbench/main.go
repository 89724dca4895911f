// Command steerbench is the measuring client and the echo sidecar of the
// steering benchmark (test/bench/steering). The client runs inside an
// application pod as an application user; the proxy runs in the same pod as
// the proxy user, so that its own sockets are not steered.
//
//	steerbench connect --to ADDR [--n 5000] [--warmup 200]
//	steerbench rr      --to ADDR [--n 20000] [--size 64] [--warmup 1000]
//	steerbench bulk    --to ADDR [--bytes 536870912] [--chunk 65536]
//	steerbench proxy   [--listen 127.0.0.1:4140] [--expect-orig ADDR]
//
// The client modes print one JSON line of results. connect times the connect(2)
// syscall of fresh blocking sockets (closed with SO_LINGER 0, so that no
// TIME_WAIT state piles up); rr times ping-pongs over one connection; bulk sends
// bytes through the echo proxy while reading the echo concurrently. All client
// sockets are plain TCP sockets made with socket(2) (never MPTCP).
//
// proxy listens (plain TCP, MPTCP off) and echoes every connection through a
// plain read/write loop (never splice: data that sk_msg redirects into a
// socket's ingress queue is invisible to splice(2)). It prints READY once
// listening and, for each line "stats" on stdin, one JSON line with the
// number of accepted connections and of SO_ORIGINAL_DST answers.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: steerbench connect|rr|bulk|proxy [flags]")
		os.Exit(2)
	}
	os.Exit(run(os.Args[1], os.Args[2:]))
}
