// Package command is sluice-proxy's command line: it reads the
// configuration from the environment, sets up logging and signals, and runs
// the proxy server.
package command

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/proxy/config"
	"github.com/sluice-mesh/sluice/proxy/server"
)

// ProxyUID is the user the proxy runs as; the node agent never steers its
// sockets.
const ProxyUID = 2102

// New returns the sluice-proxy command. lookup reads the environment.
func New(lookup func(string) (string, bool)) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sluice-proxy",
		Short: "The Sluice sidecar proxy",
		Long: `sluice-proxy is the sidecar proxy of the Sluice service mesh. The node agent
steers the pod's connections into it; it detects HTTP/1, HTTP/2 and opaque TCP,
routes requests through the destination service, balances them, and exports
Linkerd-compatible metrics on the admin port. With an identity (the
SLUICE_PROXY_IDENTITY_* variables) it obtains a certificate from the identity
service and talks mutual TLS with the other meshed proxies; /ready then waits
for the first certificate.

It takes no flags: every setting is an environment variable.

Environment:
` + config.Usage(),
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), lookup, cmd.ErrOrStderr())
		},
	}
	return cmd
}

func run(ctx context.Context, lookup func(string) (string, bool), stderr io.Writer) error {
	cfg, err := config.FromEnv(lookup)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	level := new(slog.LevelVar)
	level.Set(cfg.LogLevel)
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(stderr, hopts)
	if cfg.LogFormat == "text" {
		h = slog.NewTextHandler(stderr, hopts)
	}
	log := slog.New(h).With("component", "proxy")
	if uid := os.Getuid(); uid != ProxyUID {
		log.Warn("not running as the proxy user: the node agent steers this process's own connections, which may loop", "uid", uid, "want", ProxyUID)
	}
	srv, err := server.New(cfg, server.Options{Logger: log, LogLevel: level})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return srv.Run(ctx)
}

// Main runs the command and returns the process's exit code.
func Main(args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	cmd := New(lookup)
	cmd.SetArgs(args)
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		fmt.Fprintf(stderr, "sluice-proxy: %v\n", err)
		return 1
	}
	return 0
}
