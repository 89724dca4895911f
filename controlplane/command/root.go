// Package command holds sluice-controller's cobra commands, one file per
// service: destination, identity, tap, injector and metrics-api. Each binds
// its flags to an options struct and hands a Config to its service's
// package; serve.go runs the listeners, the admin server and the graceful
// shutdown they share.
package command

import (
	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/internal/version"
)

// NewRoot returns the sluice-controller command with every service as a
// subcommand.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "sluice-controller",
		Short: "Sluice's control plane: destination, identity, tap, injector and metrics-api",
		Long: `sluice-controller runs one of the Sluice control plane's services, chosen by its
subcommand. Each serves its API on its own port and /metrics, /ready and /live
on an admin port, talks to the Kubernetes API through --kubeconfig (default: the
pod's service account), logs JSON to stderr and stops gracefully on SIGTERM.`,
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	for _, add := range subcommands {
		root.AddCommand(add())
	}
	return root
}

// subcommands are the services' commands; each file adds its own in init,
// so that the services' files do not touch one another.
var subcommands []func() *cobra.Command
