package command

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

type nodeFactsOptions struct {
	host nodefacts.Host
}

func newNodeFactsOptions() *nodeFactsOptions {
	return &nodeFactsOptions{host: nodefacts.Host{ProcRoot: "/proc", SysRoot: "/sys", MountsOf: "1"}}
}

func (o *nodeFactsOptions) validate() error {
	if !filepath.IsAbs(o.host.ProcRoot) || !filepath.IsAbs(o.host.SysRoot) {
		return errors.New("--proc-root and --sys-root must be absolute paths")
	}
	if o.host.MountsOf == "" {
		return errors.New("--mounts-of must name a process (1, or self)")
	}
	return nil
}

func newCmdNodeFacts() *cobra.Command {
	o := newNodeFactsOptions()
	cmd := &cobra.Command{
		Use:   "node-facts",
		Short: "Print the node's kernel facts that the eBPF mode needs, as JSON",
		Long: `node-facts prints, as one line of JSON, what Sluice's eBPF mode needs from the
node: the kernel release (it needs 5.10 or newer), whether the kernel's BTF is
present, whether a BPF filesystem is mounted at /sys/fs/bpf, and where cgroup v2
is mounted:

  {"kernel":"6.1.0-18-amd64","btf":true,"cgroup2Mount":"/sys/fs/cgroup",
   "bpffsMounted":true}

A fact that could not be read comes with a <fact>Error field saying why, and
the command still succeeds. It needs no privilege and loads nothing.

'meshctl check --pre' runs it in a short-lived pod on every node that has no
agent yet, with the node's /proc and /sys mounted read-only at /host/proc and
/host/sys; a running agent serves the same JSON on its admin port at
/node-facts.`,
		Example: `  # On a node
  sluice-agent node-facts

  # In a pod with the node's /proc and /sys mounted at /host
  sluice-agent node-facts --proc-root /host/proc --sys-root /host/sys`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			b, err := json.Marshal(o.host.Gather())
			if err != nil {
				return fmt.Errorf("encode node facts: %w", err)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.host.ProcRoot, "proc-root", o.host.ProcRoot, "where the node's procfs is mounted")
	f.StringVar(&o.host.SysRoot, "sys-root", o.host.SysRoot, "where the node's sysfs is mounted")
	f.StringVar(&o.host.MountsOf, "mounts-of", o.host.MountsOf,
		"the process under --proc-root whose mount table is read: 1 (the node's init, so the node's mounts) or self")
	return cmd
}
