package meshctl

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// statOptions are the flags and arguments of stat.
type statOptions struct {
	queryFlags
}

func newStatOptions() *statOptions { return &statOptions{} }

// validate checks the flags and arguments without the cluster: the same
// checks the metrics API makes, worded after the flags.
func (o *statOptions) validate() error { return check(&o.queryFlags, o.request) }

// request is the metrics API request for the resources in namespace ns.
func (o *statOptions) request(ns string) (metricsapi.StatRequest, error) {
	r, err := metricsapi.ParseStatRequest(o.values(ns))
	return r, flagError(err)
}

func newCmdStat(_ *globalOptions) *cobra.Command {
	o := newStatOptions()
	cmd := &cobra.Command{
		Use:   "stat TYPE [NAME] [flags]",
		Short: "Show the traffic of meshed resources: success rate, requests per second, latencies",
		Long: `Show the traffic of meshed resources over a time window: success rate,
requests per second, latency percentiles and open TCP connections, as the
control plane's metrics API computes them from the proxies' metrics.

TYPE is one of deploy, sts, ds, job, po, ns, svc (or their full singular or
plural names). NAME picks one resource; without it every resource of the
type in the namespace gets a row, with traffic or not. The figures are about
the resource's inbound traffic; with --to about its outbound traffic to
that resource, with --from about the traffic that resource sent it; for a
service about the traffic sent to it.

Columns: NAME, MESHED (meshed pods/pods), SUCCESS (share of successful
responses), RPS (responses per second), LATENCY_P50/P95/P99 and TCP_CONN
(open connections); with -A a NAMESPACE column first; -o wide adds
READ_BYTES/SEC, WRITE_BYTES/SEC and STATUS (ok, no traffic, not meshed, no
pods). "-" stands for a figure without traffic.

-o json prints a JSON array with one object per row, the metrics API's
StatRow ([] for no rows):

  [{"namespace": "demo", "kind": "deployment", "name": "web",
    "meshed_pods": 1, "total_pods": 1,
    "success_rate": 0.9048,          share of successes, 0 to 1, or null
    "rps": 12.3,                     responses per second
    "latency_ms_p50": 3.2,           milliseconds, or null
    "latency_ms_p95": 9.5,
    "latency_ms_p99": 19,
    "tcp_connections": 2,
    "tcp_read_bytes_per_sec": 120.5,
    "tcp_write_bytes_per_sec": 4000,
    "status": "ok"}]

A resource that does not exist is an error. The metrics API is reached
through the Kubernetes API server's service proxy: no port-forward needed.`,
		Example: `  # Every deployment in namespace demo
  meshctl stat deploy -n demo

  # One deployment, over the last 10 minutes, with byte rates and status
  meshctl stat deploy/web -n demo -t 10m -o wide
  meshctl stat deploy web -n demo -t 10m -o wide

  # Every pod of namespace demo, as far as their requests to svc/api go
  meshctl stat po -n demo --to svc/api

  # Every namespace, as JSON
  meshctl stat ns -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.setArgs(args); err != nil {
				return err
			}
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.bindScope(cmd)
	o.bindTo(cmd)
	o.bindFrom(cmd)
	o.bindWindow(cmd)
	o.bindOutput(cmd, outputTable, outputWide, outputJSON)
	return cmd
}

// run asks the metrics API and prints the rows.
func (o *statOptions) run(ctx context.Context, out io.Writer) error {
	client, req, err := prepare(ctx, &o.queryFlags, o.request)
	if err != nil {
		return err
	}
	resp, err := client.Stat(ctx, req)
	if err != nil {
		return metricsError(err)
	}
	return renderStat(out, resp.Rows, o.output, o.allNamespaces && req.Resource != metricsapi.Namespace)
}
