package meshctl

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapclient"
)

// tapOptions are the flags and arguments of tap.
type tapOptions struct {
	cluster     clusterFlags
	target      string
	namespace   string
	to          string
	toNamespace string
	method      string
	authority   string
	path        string
	maxRPS      float64
	limit       uint32
	output      string
}

func newTapOptions() *tapOptions { return &tapOptions{output: outputText} }

// validate checks the flags and arguments without the cluster.
func (o *tapOptions) validate() error {
	if err := checkOutput(o.output, outputText, outputJSON); err != nil {
		return err
	}
	if o.maxRPS < 0 {
		return fmt.Errorf("invalid --max-rps %g: must not be negative", o.maxRPS)
	}
	_, err := o.request(o.namespace)
	return err
}

// request is the tap of the target in namespace ns.
func (o *tapOptions) request(ns string) (*tappb.TapByResourceRequest, error) {
	target, err := tapapi.ParseResource(o.target, ns)
	if err != nil {
		return nil, fmt.Errorf("invalid TARGET: %w", err)
	}
	req := &tappb.TapByResourceRequest{
		Target:    target,
		Method:    o.method,
		Authority: o.authority,
		Path:      o.path,
		MaxRps:    o.maxRPS,
		Limit:     o.limit,
	}
	switch {
	case o.to != "":
		if req.To, err = tapapi.ParseResource(o.to, o.toNamespace); err != nil {
			return nil, fmt.Errorf("invalid --to: %w", err)
		}
	case o.toNamespace != "":
		return nil, errors.New("invalid --to-namespace: given without --to")
	}
	return req, nil
}

func newCmdTap(_ *globalOptions) *cobra.Command {
	o := newTapOptions()
	cmd := &cobra.Command{
		Use:   "tap TARGET [flags]",
		Short: "Watch the requests of a resource's pods live",
		Long: `Watch, live, the HTTP requests that the proxies of a resource's meshed pods
see, through the tap API (tap.sluice.io) of the Kubernetes API server: you
need RBAC permission to "watch" "<type>/tap" there, such as the chart's
tap-user role gives. Bodies are never shown.

TARGET is TYPE/NAME or TYPE NAME (deploy/web, po/web-5d4f-x, ns/demo), or a
bare TYPE for every resource of that type in the namespace. TYPE is one of
namespace (ns), pod (po), deployment (deploy), replicaset (rs), statefulset
(sts), daemonset (ds), job, cronjob (cj) or service (svc).

The tap runs until Ctrl-C, or until --limit requests have ended. Every
request gives three lines, its events:

  req id=0:1 proxy=in src=10.42.0.7:51234 dst=10.42.0.9:8080 tls=true :method=GET :authority=web.demo:80 :path=/
  rsp id=0:1 proxy=in src=10.42.0.7:51234 dst=10.42.0.9:8080 tls=true :status=200 latency=1250µs
  end id=0:1 proxy=in src=10.42.0.7:51234 dst=10.42.0.9:8080 tls=true duration=80µs response-length=12B

id is the request's stream within its proxy; proxy is the side of the proxy
that saw it (in: a request to the pod, out: one the pod sent); src and dst
are the client's and the server's address and port (out: src is the pod,
dst the endpoint the proxy chose); tls is the
hop's TLS status (true, no_identity, disabled); latency runs from the
request's headers to the response's, duration from the response's headers
to its end. An end adds grpc-status=<code> or reset-error=<HTTP/2 code>
when the stream said how it ended.

-o json prints one JSON object per event and line: {"type": "req"|"rsp"|"end",
"id", "proxy", "src", "dst", "tls", "src_meta" and "dst_meta" (the ends'
labels: namespace, pod, owner, tls, client_id, server_id), then per type
"method", "scheme", "authority", "path" (req); "status", "latency_us" (rsp);
"duration_us", "response_bytes", "grpc_status", "reset_error_code" (end)}.`,
		Example: `  # Every request deploy/web's pods see, until Ctrl-C
  meshctl tap deploy/web -n demo

  # Ten GETs under /api from deploy/web to svc/api, as JSON
  meshctl tap deploy web -n demo --to svc/api --method GET --path /api --limit 10 -o json

  # Everything in namespace demo, at most 10 requests a second
  meshctl tap ns/demo --max-rps 10`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ, name, err := splitTypeName(args)
			if err != nil {
				return err
			}
			o.target = typ
			if name != "" {
				o.target += "/" + name
			}
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.cluster.bind(cmd)
	f := cmd.Flags()
	f.StringVarP(&o.namespace, "namespace", "n", "", "namespace of TARGET (default: the kubeconfig context's namespace)")
	f.StringVar(&o.to, "to", "", "only requests to this resource: TYPE/NAME (svc/api), or TYPE for any")
	f.StringVar(&o.toNamespace, "to-namespace", "", "namespace of --to (default: TARGET's)")
	f.StringVar(&o.method, "method", "", "only requests with this HTTP method (GET)")
	f.StringVar(&o.authority, "authority", "", "only requests with this authority (web.demo:80)")
	f.StringVar(&o.path, "path", "", "only requests whose path starts with this")
	f.Float64Var(&o.maxRPS, "max-rps", 0, "tap at most this many requests per second over all pods (0: the tap service's default, 100)")
	f.Uint32Var(&o.limit, "limit", 0, "stop after this many requests have ended (0: run until Ctrl-C)")
	f.StringVarP(&o.output, "output", "o", o.output, "output format: text or json")
	return cmd
}

// run opens the tap and prints its events until ctx ends, the limit is
// reached or the tap service ends the stream.
func (o *tapOptions) run(ctx context.Context, out io.Writer) error {
	cl, err := o.cluster.connect(ctx)
	if err != nil {
		return err
	}
	if err := cl.requireSluice(ctx); err != nil {
		return err
	}
	ns := o.namespace
	if ns == "" {
		ns = cl.contextNamespace
	}
	req, err := o.request(ns)
	if err != nil {
		return err
	}
	stream, err := tapclient.Watch(ctx, cl.cfg, req)
	if err != nil {
		return cl.tapError(ctx, err)
	}
	defer stream.Close()
	var ended uint32
	for ev, err := range stream.All() {
		if err != nil {
			if ctx.Err() != nil {
				return nil // Ctrl-C
			}
			return fmt.Errorf("tap %s: %w", tapapi.String(req.Target), err)
		}
		if err := renderTapEvent(out, ev, o.output); err != nil {
			return err
		}
		if ev.GetHttp().GetResponseEnd() != nil {
			if ended++; o.limit > 0 && ended >= o.limit {
				return nil
			}
		}
	}
	return nil
}

// tapError explains a refused tap: the tap API not served (Sluice's tap
// service not installed, or down) is said as such; a refusal by RBAC or a
// target that does not exist comes as the API server or tap service
// worded it.
func (c *cluster) tapError(ctx context.Context, err error) error {
	switch {
	case apierrors.IsServiceUnavailable(err):
		return fmt.Errorf("the tap API (%s) is unavailable: is the tap service running in namespace %s? (%v)", tapapi.GroupVersion, c.namespace, err)
	case apierrors.IsNotFound(err):
		_, derr := c.client.Discovery().ServerResourcesForGroupVersion(tapapi.GroupVersion)
		if apierrors.IsNotFound(derr) {
			return fmt.Errorf("the tap API (%s) is not served by this cluster: is Sluice's tap service installed? `kubectl get apiservice %s` shows its state",
				tapapi.GroupVersion, tapapi.APIServiceName)
		}
	}
	return err
}
