package meshctl

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// topInterval is how often top refreshes without --once.
const topInterval = 2 * time.Second

// clearScreen moves a terminal's cursor home and clears the screen.
const clearScreen = "\033[H\033[2J"

// topOptions are the flags and arguments of top.
type topOptions struct {
	queryFlags
	once bool
}

func newTopOptions() *topOptions { return &topOptions{} }

// validate checks the flags and arguments without the cluster.
func (o *topOptions) validate() error { return check(&o.queryFlags, o.request) }

// request is the metrics API request for the resources in namespace ns.
func (o *topOptions) request(ns string) (metricsapi.TopRoutesRequest, error) {
	r, err := metricsapi.ParseTopRoutesRequest(o.values(ns))
	return r, flagError(err)
}

func newCmdTop(_ *globalOptions) *cobra.Command {
	o := newTopOptions()
	cmd := &cobra.Command{
		Use:   "top TYPE [NAME] [flags]",
		Short: "Show the busiest authorities a resource serves, refreshed live",
		Long: `Show the traffic of resources per authority (the requests' Host or
:authority), busiest first: success rate, requests per second and latency
percentiles over the time window, refreshed every 2 seconds until Ctrl-C.
--once prints the table once and exits.

TYPE is one of deploy, sts, ds, job, po, ns, svc. The routes are the
inbound requests of the matching resources, summed over them; with --to
their outbound requests to that resource; for a service the requests sent
to it. The proxies label requests by authority: there are no finer routes.

-o json prints a JSON array per refresh, one object per authority, the
metrics API's Route ([] for none):

  [{"authority": "web.demo.svc.cluster.local",
    "rps": 12.3,                     requests per second
    "success_rate": 1,               0 to 1, or null
    "latency_ms_p50": 3.2,           milliseconds, or null
    "latency_ms_p95": 9.5,
    "latency_ms_p99": 19}]`,
		Example: `  # The authorities deploy/web serves, live
  meshctl top deploy/web -n demo

  # Once, over the last 5 minutes, as JSON
  meshctl top deploy web -n demo -t 5m --once -o json

  # What deploy/web's pods ask of svc/api
  meshctl top deploy/web -n demo --to svc/api --once`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.setArgs(args); err != nil {
				return err
			}
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.bindScope(cmd)
	o.bindTo(cmd)
	o.bindWindow(cmd)
	o.bindOutput(cmd, outputTable, outputJSON)
	cmd.Flags().BoolVar(&o.once, "once", false, "print once and exit instead of refreshing every 2s")
	return cmd
}

// run asks the metrics API and prints the routes, once or until ctx ends.
func (o *topOptions) run(ctx context.Context, out, errOut io.Writer) error {
	client, req, err := prepare(ctx, &o.queryFlags, o.request)
	if err != nil {
		return err
	}
	redraw := !o.once && o.output == outputTable && isTerminal(out)
	show := func(ctx context.Context) error {
		resp, err := client.TopRoutes(ctx, req)
		if err != nil {
			return metricsError(err)
		}
		var buf bytes.Buffer
		if redraw {
			buf.WriteString(clearScreen)
		}
		if err := renderTopRoutes(&buf, resp.Routes, o.output); err != nil {
			return err
		}
		if !o.once && !redraw {
			buf.WriteByte('\n')
		}
		_, err = out.Write(buf.Bytes())
		return err
	}
	if o.once {
		return show(ctx)
	}
	return refresh(ctx, topInterval, show, errOut)
}

// refresh calls show at once, then every interval until ctx ends, and
// returns nil then. The first call's error is returned; later ones are
// written to errOut and the next tick tries again.
func refresh(ctx context.Context, interval time.Duration, show func(context.Context) error, errOut io.Writer) error {
	if err := show(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := show(ctx); err != nil && ctx.Err() == nil {
				fmt.Fprintln(errOut, "Error:", err)
			}
		}
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
