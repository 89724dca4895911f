// Command meshctl is the Sluice command-line tool; see package
// github.com/sluice-mesh/sluice/cli/meshctl for its commands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluice-mesh/sluice/cli/meshctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := meshctl.NewRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		if !meshctl.AlreadyReported(err) {
			fmt.Fprintln(os.Stderr, "Error:", err)
		}
		os.Exit(1)
	}
}
