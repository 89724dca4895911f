package command

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/informers"

	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/controlplane/injector"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/version"
)

func init() { subcommands = append(subcommands, newCmdInjector) }

// Default paths of the injector's mounted files.
const (
	defaultInjectorCert   = "/var/run/sluice/tls/tls.crt"
	defaultInjectorKey    = "/var/run/sluice/tls/tls.key"
	defaultInjectorValues = "/var/run/sluice/config/" + inject.ValuesKey
)

// injectorOptions are the proxy injector's flags.
type injectorOptions struct {
	*commonOptions
	addr       string
	tlsCert    string
	tlsKey     string
	valuesFile string
	values     *inject.ValueFlags
}

func newCmdInjector() *cobra.Command {
	o := &injectorOptions{
		commonOptions: newCommonOptions(meshmeta.InjectorAdminPort),
		addr:          fmt.Sprintf(":%d", meshmeta.InjectorPort),
		tlsCert:       defaultInjectorCert,
		tlsKey:        defaultInjectorKey,
		valuesFile:    defaultInjectorValues,
	}
	cmd := &cobra.Command{
		Use:   "injector",
		Short: "Serve the proxy injector: a mutating admission webhook for pods (POST /inject)",
		Long: fmt.Sprintf(`injector is the mutating admission webhook that adds the Sluice proxy to pods
when they are created, with the same mutation as 'meshctl inject'. A pod is
injected when its own annotation %[1]s is %[2]s, or its
namespace's is and the pod's is not %[3]s. Pods on the host network
and pods that already have a %[4]s container are left alone. A pod
that asks for a proxy with an invalid config.sluice.io/* annotation is refused
with a message naming it.

It serves AdmissionReview v1 on POST %[5]s over TLS (--tls-cert and --tls-key,
reloaded when the files change) and /metrics, /ready and /live on --admin-addr.

The installation's values (images, version, interception mode, trust anchors,
...) come from --values: the ConfigMap %[6]s, key %[7]s,
mounted as a file; a missing file means the defaults. The value flags below
override it.

Register it with failurePolicy Ignore (see the package documentation of
controlplane/injector). Its Kubernetes identity needs get, list and watch on
namespaces and get on replicasets.apps and jobs.batch (owner labels).`,
			meshmeta.AnnotationInject, meshmeta.InjectEnabled, meshmeta.InjectDisabled, meshmeta.ProxyContainerName,
			injector.Path, inject.ConfigMapName, inject.ValuesKey),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd)
		},
	}
	o.commonOptions.bind(cmd)
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", o.addr, "address of the webhook's TLS server")
	f.StringVar(&o.tlsCert, "tls-cert", o.tlsCert, "PEM file of the webhook's serving certificate (for "+meshmeta.InjectorService+".<namespace>.svc)")
	f.StringVar(&o.tlsKey, "tls-key", o.tlsKey, "PEM file of the serving certificate's key")
	f.StringVar(&o.valuesFile, "values", o.valuesFile, "YAML file of the installation's injection values; empty or missing: the defaults")
	o.values = inject.BindValueFlags(f)
	return cmd
}

func (o *injectorOptions) validate() error {
	if err := o.commonOptions.validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	if o.tlsCert == "" || o.tlsKey == "" {
		return errors.New("--tls-cert and --tls-key are required: the API server calls webhooks over TLS only")
	}
	return nil
}

// loadValues reads --values (the defaults when it is empty or missing,
// which it logs) and lays the value flags over it.
func (o *injectorOptions) loadValues(log *slog.Logger) (inject.Values, error) {
	base := inject.DefaultValues()
	if o.valuesFile != "" {
		v, err := inject.ReadValuesFile(o.valuesFile)
		switch {
		case err == nil:
			base = v
		case errors.Is(err, fs.ErrNotExist):
			log.Warn("no values file: using the defaults and flags", "values", o.valuesFile)
		default:
			return inject.Values{}, fmt.Errorf("--values: %w", err)
		}
	}
	return o.values.Apply(base)
}

func (o *injectorOptions) run(cmd *cobra.Command) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := o.logger("injector")
	values, err := o.loadValues(log)
	if err != nil {
		return err
	}
	certs, err := injector.NewCertReloader(o.tlsCert, o.tlsKey, log)
	if err != nil {
		return err
	}
	client, _, err := k8s.NewClient(o.kubeconfig, "sluice-proxy-injector")
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	nsInformer := factory.Core().V1().Namespaces()
	reg := newRegistry()
	h, err := injector.NewHandler(injector.Config{
		Injector:   inject.Injector{Values: values, CreatedBy: "sluice/proxy-injector " + version.Version},
		Namespaces: injector.NewNamespaceGetter(nsInformer.Lister(), client),
		Owners:     injector.NewOwnerResolver(client),
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		return err
	}
	log.Info("values", "control_plane_namespace", values.ControlPlaneNamespace, "mode", values.InterceptionMode,
		"proxy_image", values.ProxyImageRef(), "identity", values.IdentityEnabled())
	nsInformer.Informer() // register before Start

	var synced atomic.Bool
	ready := func() error {
		if !synced.Load() {
			return errors.New("namespace cache not synced")
		}
		return nil
	}
	lis, err := listen(o.addr)
	if err != nil {
		return err
	}
	adm, err := o.adminServer(reg, ready)
	if err != nil {
		lis.Close()
		return err
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         certs.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		// TLS handshake errors and the like, in the service's log format.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	background := func(ctx context.Context) error {
		factory.Start(ctx.Done())
		defer factory.Shutdown()
		for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("sync %v cache", typ)
			}
		}
		synced.Store(true)
		log.Info("namespace cache synced")
		<-ctx.Done()
		return nil
	}
	return o.commonOptions.run(cmd.Context(), log, []server{httpServer("injector", lis, srv, true), adm}, background)
}
