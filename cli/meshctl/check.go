package meshctl

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/healthcheck/ebpfcheck"
)

// errChecksFailed is returned by check when a check that is not a warning
// failed; the results have been printed already.
var errChecksFailed = reportedError{errors.New("checks failed")}

// Output formats of check.
const (
	outputTable = "table"
	outputJSON  = "json"
)

type checkOptions struct {
	ebpf        bool
	output      string
	agentSocket string
	wait        time.Duration
}

func newCheckOptions() *checkOptions {
	return &checkOptions{
		output:      outputTable,
		agentSocket: api.DefaultSocket,
	}
}

func (o *checkOptions) validate() error {
	if o.output != outputTable && o.output != outputJSON {
		return fmt.Errorf("invalid --output %q: use %q or %q", o.output, outputTable, outputJSON)
	}
	if o.wait < 0 {
		return fmt.Errorf("invalid --wait %s: must not be negative", o.wait)
	}
	if o.agentSocket == "" {
		return errors.New("invalid --agent-socket: empty path")
	}
	if !o.ebpf {
		return errors.New("no checks selected: only the eBPF data-plane checks (--ebpf) exist so far; " +
			"the control-plane checks come with the Helm install. Run `meshctl check --ebpf` on a node")
	}
	return nil
}

func newCmdCheck(global *globalOptions) *cobra.Command {
	o := newCheckOptions()
	cmd := &cobra.Command{
		Use:   "check --ebpf",
		Short: "Check that Sluice can run, and runs, on this node",
		Long: `Check that Sluice can run, and runs, on this node.

With --ebpf, check the eBPF data plane of the node meshctl runs on:

  kernel        the kernel is 5.10 or newer and has BTF, the BPF filesystem
                is mounted at /sys/fs/bpf, and cgroup v2 is mounted (unified
                or hybrid layout)
  sluice-agent  the node agent answers on its admin socket, the kernel
                features it probed are there (required ones fail the check,
                optional ones warn), its programs are attached, its pins
                exist under its pin root, and its maps have room (warning at
                80% full, failure at 95%)

Checks that need the agent are skipped, with the reason, when it cannot be
reached. Every check prints ✔ (passed), × (failed), ‼ (warning) or - (skipped);
a failure shows the error and a hint. meshctl exits non-zero when any check
that is not a warning fails.

Control-plane checks (Kubernetes API, control plane pods, certificates) come
with the Helm install; for now --ebpf is required.`,
		Example: `  # Check this node's kernel and agent
  meshctl check --ebpf

  # Wait up to a minute for an agent that is starting, output JSON
  meshctl check --ebpf --wait 1m -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd, global)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.ebpf, "ebpf", o.ebpf, "run the eBPF data-plane checks of this node (kernel and node agent)")
	f.StringVarP(&o.output, "output", "o", o.output, "output format: table or json")
	f.StringVar(&o.agentSocket, "agent-socket", o.agentSocket, "unix socket of the node agent's admin API")
	f.DurationVar(&o.wait, "wait", o.wait,
		"keep retrying checks that may pass soon (agent is reachable) for up to this long, e.g. 30s; 0 tries once")
	return cmd
}

func (o *checkOptions) run(cmd *cobra.Command, global *globalOptions) error {
	cats := ebpfcheck.Categories(ebpfcheck.Options{
		Host:        global.host,
		AgentSocket: o.agentSocket,
		Wait:        o.wait,
	})
	r := newRenderer(o.output, cmd.OutOrStdout())
	ok := healthcheck.Run(cmd.Context(), cats, &healthcheck.State{}, r.Observe)
	if err := r.Finish(ok); err != nil {
		return err
	}
	if !ok {
		return errChecksFailed
	}
	return nil
}

func newRenderer(output string, w io.Writer) healthcheck.Renderer {
	if output == outputJSON {
		return healthcheck.NewJSONRenderer(w)
	}
	return healthcheck.NewTableRenderer(w)
}
