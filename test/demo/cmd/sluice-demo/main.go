// Command sluice-demo is the Sluice demo application (test/demo): one
// binary whose first argument chooses the role, web, books, authors, ticker
// or loadgen (see package test/demo/demoapp). In the cluster the image
// ghcr.io/sluice-mesh/demo:<tag> runs it with the container's args. It runs
// until SIGTERM or SIGINT, then shuts down gracefully; exit status 1 means
// the role could not run.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluice-mesh/sluice/test/demo/demoapp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := demoapp.NewRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}
