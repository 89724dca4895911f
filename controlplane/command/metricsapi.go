package command

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/controlplane/k8s"
	"github.com/sluice-mesh/sluice/controlplane/metricsapi"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

func init() { subcommands = append(subcommands, newCmdMetricsAPI) }

// defaultPrometheusURL is the Prometheus the chart installs.
const defaultPrometheusURL = "http://prometheus." + meshmeta.DefaultNamespace + ".svc.cluster.local:9090"

// metricsAPIOptions are metrics-api's flags.
type metricsAPIOptions struct {
	*commonOptions
	addr          string
	prometheusURL string
	trustDomain   string
	queryTimeout  time.Duration
}

func newMetricsAPIOptions() *metricsAPIOptions {
	return &metricsAPIOptions{
		commonOptions: newCommonOptions(meshmeta.MetricsAPIAdminPort),
		addr:          fmt.Sprintf(":%d", meshmeta.MetricsAPIPort),
		prometheusURL: defaultPrometheusURL,
		trustDomain:   meshmeta.DefaultTrustDomain,
		queryTimeout:  metricsapi.DefaultQueryTimeout,
	}
}

func (o *metricsAPIOptions) validate() error {
	if err := o.commonOptions.validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	if o.prometheusURL == "" {
		return fmt.Errorf("--prometheus-url is required")
	}
	if u, err := url.Parse(o.prometheusURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--prometheus-url: %q is not an http(s) URL with a host", o.prometheusURL)
	}
	if o.trustDomain == "" {
		return fmt.Errorf("--trust-domain must not be empty")
	}
	if o.queryTimeout <= 0 {
		return fmt.Errorf("--query-timeout must be positive")
	}
	return nil
}

func newCmdMetricsAPI() *cobra.Command {
	o := newMetricsAPIOptions()
	cmd := &cobra.Command{
		Use:   "metrics-api",
		Short: "Serve the metrics API (stat, top-routes, edges) over Prometheus",
		Long: `metrics-api serves the HTTP JSON API behind meshctl stat, top-routes and edges
and the dashboard: GET /api/v1/stat, /api/v1/edges and /api/v1/top-routes.
Its figures (success rate, requests per second, latency percentiles, TCP
connections, edges with their TLS identities) are PromQL queries over the
proxies' metrics, sent to Prometheus' HTTP API at --prometheus-url; the
resources and pods of each row come from the Kubernetes API.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.serve(cmd)
		},
	}
	o.bind(cmd)
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", o.addr, "address the API listens on")
	f.StringVar(&o.prometheusURL, "prometheus-url", o.prometheusURL, "base URL of Prometheus' HTTP API; must not be empty")
	f.StringVar(&o.trustDomain, "trust-domain", o.trustDomain, "trust domain of the mesh's identities, to read client identities in edges")
	f.DurationVar(&o.queryTimeout, "query-timeout", o.queryTimeout, "how long one request's Prometheus queries may take")
	return cmd
}

func (o *metricsAPIOptions) serve(cmd *cobra.Command) error {
	log := o.logger("metrics-api")
	client, _, err := k8s.NewClient(o.kubeconfig, "sluice-metrics-api")
	if err != nil {
		return err
	}
	reg := newRegistry()
	srv, err := metricsapi.New(metricsapi.Config{
		PrometheusURL: o.prometheusURL,
		Client:        client,
		Logger:        log,
		Registerer:    reg,
		TrustDomain:   o.trustDomain,
		QueryTimeout:  o.queryTimeout,
	})
	if err != nil {
		return err
	}
	admin, err := o.adminServer(reg, nil)
	if err != nil {
		return err
	}
	lis, err := listen(o.addr)
	if err != nil {
		admin.lis.Close()
		return err
	}
	apiServer := httpServer("metrics-api", lis, &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      o.queryTimeout + 10*time.Second,
	}, false)
	// Nothing runs beside the servers; a background that waits keeps run
	// from treating a nil one as finished (see the report on serve.go).
	idle := func(ctx context.Context) error { <-ctx.Done(); return nil }
	return o.run(cmd.Context(), log, []server{admin, apiServer}, idle)
}
