// Package meshctl holds meshctl's cobra commands.
package meshctl

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/cli/healthcheck/ebpfcheck"
)

// globalOptions is what every command shares: the root command's flags (none
// yet) and the environment commands run in, which tests replace.
type globalOptions struct {
	// host is the machine whose kernel local checks read.
	host ebpfcheck.Host
}

func newGlobalOptions() *globalOptions {
	return &globalOptions{host: ebpfcheck.DefaultHost()}
}

// NewRootCommand returns the meshctl command with its subcommands. Its errors
// are silenced: the caller prints them, unless AlreadyReported says the
// command has told the user already.
func NewRootCommand() *cobra.Command {
	return newCmdRoot(newGlobalOptions())
}

func newCmdRoot(global *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "meshctl",
		Short: "meshctl manages the Sluice service mesh",
		Long: `meshctl manages the Sluice service mesh: a Kubernetes service mesh in the
Linkerd 2.x mould whose data plane reaches each pod's proxy through eBPF
programs instead of iptables.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.AddCommand(newCmdCheck(global), newCmdInject(global), newCmdUninject(global),
		newCmdInstall(global), newCmdUpgrade(global), newCmdUninstall(global), newCmdVersion(global))
	cmd.AddCommand(newCmdStat(global), newCmdTop(global), newCmdEdges(global), newCmdTap(global), newCmdDashboard(global))
	return cmd
}

// reportedError marks an error the command has already shown to the user,
// such as failed checks printed in the check results.
type reportedError struct{ error }

func (e reportedError) Unwrap() error { return e.error }

// AlreadyReported reports whether err needs no printing because the command
// that returned it has already shown it to the user.
func AlreadyReported(err error) bool {
	var r reportedError
	return errors.As(err, &r)
}
