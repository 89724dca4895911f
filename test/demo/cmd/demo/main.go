// Command demo is `make demo` and `make demo-down`: it builds Sluice and the
// demo application, starts the local cluster, installs Sluice with meshctl,
// deploys the demo through meshctl inject and waits until meshctl stat
// shows its traffic; down undoes all of it. See package demorun.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/test/demo/demorun"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func newCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "demo",
		Short:         "Run Sluice's demo on the local cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	env := func() (demorun.Env, error) {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			return demorun.Env{}, fmt.Errorf("go env GOMOD: %w", err)
		}
		gomod := strings.TrimSpace(string(out))
		if gomod == "" || gomod == os.DevNull {
			return demorun.Env{}, fmt.Errorf("run from the Sluice repository")
		}
		return demorun.Env{Root: filepath.Dir(gomod), Out: os.Stdout}, nil
	}
	root.AddCommand(&cobra.Command{
		Use:   "up",
		Short: "Build, start the cluster, install Sluice, deploy the demo and wait for its traffic",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := env()
			if err != nil {
				return err
			}
			return e.Up(cmd.Context())
		},
	}, &cobra.Command{
		Use:   "down",
		Short: "Remove the demo and Sluice, and stop the local cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			e, err := env()
			if err != nil {
				return err
			}
			return e.Down(cmd.Context())
		},
	})
	return root
}
