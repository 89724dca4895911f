// Command sluice-controller runs one of Sluice's control-plane services:
// destination, identity, tap, injector or metrics-api. See
// `sluice-controller --help`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluice-mesh/sluice/controlplane/command"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := command.NewRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sluice-controller:", err)
		os.Exit(1)
	}
}
