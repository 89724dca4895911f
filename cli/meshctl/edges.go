package meshctl

import (
	"context"
	"io"

	"github.com/spf13/cobra"

	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// edgesOptions are the flags and argument of edges.
type edgesOptions struct {
	queryFlags
}

func newEdgesOptions() *edgesOptions { return &edgesOptions{} }

// validate checks the flags and argument without the cluster.
func (o *edgesOptions) validate() error { return check(&o.queryFlags, o.request) }

// request is the metrics API request for the edges with an end in
// namespace ns.
func (o *edgesOptions) request(ns string) (metricsapi.EdgesRequest, error) {
	r, err := metricsapi.ParseEdgesRequest(o.values(ns))
	return r, flagError(err)
}

func newCmdEdges(_ *globalOptions) *cobra.Command {
	o := newEdgesOptions()
	cmd := &cobra.Command{
		Use:   "edges TYPE [flags]",
		Short: "Show which resources talk to which, and whether over mutual TLS",
		Long: `Show the edges between resources of one type: traffic the proxies of a
source saw going to a destination, with the identities they proved.

TYPE is one of deploy, sts, ds, job, po, ns (not svc: services send no
traffic). The edges kept have an end in the namespace (-n, default: the
kubeconfig context's), or any with -A.

Columns: SRC and DST (names), SRC_NS and DST_NS, SECURED (yes when every
connection seen was mutual TLS), CLIENT_ID (the source's identity as the
destination saw it) and SERVER_ID (the destination's identity as the source
verified it); -o wide adds NO_TLS_REASON. "-" stands for none.

-o json prints a JSON array of the metrics API's Edge ([] for none):

  [{"src": {"namespace": "demo", "kind": "deployment", "name": "client"},
    "dst": {"namespace": "demo", "kind": "deployment", "name": "web"},
    "client_id": "client.demo.serviceaccount.identity.sluice.cluster.local",
    "server_id": "web.demo.serviceaccount.identity.sluice.cluster.local",
    "secured": true,
    "no_tls_reason": "not_provided_by_remote"}]   (only when some was not)`,
		Example: `  # The edges between deployments of namespace demo
  meshctl edges deploy -n demo

  # Between pods of every namespace, with the reason for plain text
  meshctl edges po -A -o wide`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.typ = args[0]
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.bindScope(cmd)
	o.bindOutput(cmd, outputTable, outputWide, outputJSON)
	return cmd
}

// run asks the metrics API and prints the edges.
func (o *edgesOptions) run(ctx context.Context, out io.Writer) error {
	client, req, err := prepare(ctx, &o.queryFlags, o.request)
	if err != nil {
		return err
	}
	resp, err := client.Edges(ctx, req)
	if err != nil {
		return metricsError(err)
	}
	return renderEdges(out, resp.Edges, o.output)
}
