package command

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/controlplane/k8s"
	"github.com/sluice-mesh/sluice/controlplane/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/keypair"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

func init() { subcommands = append(subcommands, newCmdTap) }

// Default files of the tap service's serving certificate (the Secret the
// chart mounts).
const (
	defaultTapCertFile = "/var/run/sluice/tls/tls.crt"
	defaultTapKeyFile  = "/var/run/sluice/tls/tls.key"
)

// tapOptions are the tap service's flags.
type tapOptions struct {
	*commonOptions
	addr          string
	tlsCert       string
	tlsKey        string
	proxyTapPort  uint16
	maxPods       int
	defaultMaxRPS float64
}

func newCmdTap() *cobra.Command {
	o := &tapOptions{
		commonOptions: newCommonOptions(meshmeta.TapAdminPort),
		addr:          fmt.Sprintf(":%d", meshmeta.TapPort),
		tlsCert:       defaultTapCertFile,
		tlsKey:        defaultTapKeyFile,
		proxyTapPort:  tap.DefaultTapPort,
		maxPods:       tap.DefaultMaxPods,
		defaultMaxRPS: tap.DefaultMaxRPS,
	}
	cmd := &cobra.Command{
		Use:   "tap",
		Short: "Serve the tap API: live requests of a resource's pods (aggregated API " + tapapi.GroupVersion + ")",
		Long: fmt.Sprintf(`tap serves the aggregated Kubernetes API %s over HTTPS,
behind the APIService %s, for meshctl tap and the dashboard.

The API server forwards each tap with its front-proxy client certificate and
the user in X-Remote-User/X-Remote-Group. The service verifies the certificate
against the request-header CA, read at start from the ConfigMap
%s/%s (restart the service when that CA
changes), authorizes the user with a SubjectAccessReview (verb %s, group
%s, resource <plural>/%s), finds the target's running meshed pods
and streams the merged events of their proxies' tap ports.

The serving certificate and key (--tls-cert, --tls-key) are reread when the
files change. On SIGTERM open taps end at once.

Its Kubernetes identity needs: get on the ConfigMap above (the built-in Role
extension-apiserver-authentication-reader in kube-system); create
subjectaccessreviews.authorization.k8s.io; get and list pods (all namespaces),
namespaces, services, deployments, replicasets, statefulsets, daemonsets, jobs
and cronjobs.`,
			tapapi.GroupVersion, tapapi.APIServiceName, tap.AuthConfigMapNamespace, tap.AuthConfigMapName,
			tapapi.Verb, tapapi.Group, tapapi.Subresource),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	o.commonOptions.bind(cmd)
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", o.addr, "address of the HTTPS server of the tap API")
	f.StringVar(&o.tlsCert, "tls-cert", o.tlsCert, "PEM file of the serving certificate (then its chain), reread when it changes")
	f.StringVar(&o.tlsKey, "tls-key", o.tlsKey, "PEM file of the serving certificate's key, reread when it changes")
	f.Uint16Var(&o.proxyTapPort, "proxy-tap-port", o.proxyTapPort, "port of the proxies' tap gRPC server")
	f.IntVar(&o.maxPods, "max-pods", o.maxPods, "most pods one tap may fan out to; larger targets are refused")
	f.Float64Var(&o.defaultMaxRPS, "default-max-rps", o.defaultMaxRPS, "requests per second tapped over all pods when a request does not say")
	return cmd
}

func (o *tapOptions) validate() error {
	if err := o.commonOptions.validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return errors.New("--tls-cert and --tls-key must name files: the API server reaches the tap API over TLS only")
	}
	if o.proxyTapPort == 0 {
		return errors.New("--proxy-tap-port must not be 0")
	}
	if o.maxPods <= 0 {
		return errors.New("--max-pods must be positive")
	}
	if !(o.defaultMaxRPS > 0) {
		return errors.New("--default-max-rps must be positive")
	}
	return nil
}

func (o *tapOptions) run(ctx context.Context) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := o.logger("tap")
	kp, err := keypair.Load(o.tlsCert, o.tlsKey, log)
	if err != nil {
		return err
	}
	client, _, err := k8s.NewClient(o.kubeconfig, "sluice-tap")
	if err != nil {
		return err
	}
	rh, err := tap.LoadRequestHeaderConfig(ctx, client)
	if err != nil {
		return err
	}
	reg := newRegistry()
	svc, err := tap.New(tap.Config{
		Client:        client,
		RequestHeader: rh,
		TapPort:       o.proxyTapPort,
		Logger:        log,
		Registerer:    reg,
		DefaultMaxRPS: o.defaultMaxRPS,
		MaxPods:       o.maxPods,
	})
	if err != nil {
		return err
	}
	lis, err := listen(o.addr)
	if err != nil {
		return err
	}
	adm, err := o.adminServer(reg, nil)
	if err != nil {
		lis.Close()
		return err
	}
	// Taps are endless streams: end them when shutdown starts rather than
	// wait out the drain timeout.
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	hs := &http.Server{
		Handler:           svc,
		TLSConfig:         tap.TLSConfig(kp.GetCertificate),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return streams },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	hs.RegisterOnShutdown(endStreams)
	return o.commonOptions.run(ctx, log, []server{httpServer("tap", lis, hs, true), adm}, nil)
}
