package meshctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// kubeFlags locate the cluster.
type kubeFlags struct {
	kubeconfig  string
	kubeContext string
}

func (k *kubeFlags) bind(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
	f.StringVar(&k.kubeContext, "context", "", "kubeconfig context (default: the current context)")
}

// clientConfig is the kubeconfig's client configuration.
func (k *kubeFlags) clientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.kubeContext})
}

// clusterFlags locate the cluster and Sluice's control plane in it: what
// every command that talks to an installed mesh binds.
type clusterFlags struct {
	kubeFlags
	controlPlaneNamespace string
}

func (c *clusterFlags) bind(cmd *cobra.Command) {
	c.kubeFlags.bind(cmd)
	cmd.Flags().StringVarP(&c.controlPlaneNamespace, "control-plane-namespace", "L", meshmeta.DefaultNamespace,
		"namespace of Sluice's control plane")
}

// reachTimeout bounds the first call to the API server, which tells an
// unreachable cluster from a slow command.
const reachTimeout = 10 * time.Second

// cluster is a connection to the Kubernetes API server of the kubeconfig.
type cluster struct {
	// cfg is the client configuration, without a timeout (taps stream).
	cfg    *rest.Config
	client kubernetes.Interface
	// namespace is the control plane's.
	namespace string
	// contextNamespace is the kubeconfig context's namespace, else "default".
	contextNamespace string
}

// restConfig loads the kubeconfig, with errors a user can act on.
func (k *kubeFlags) restConfig() (*rest.Config, string, error) {
	cc := k.clientConfig()
	cfg, err := cc.ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, "", errors.New("no Kubernetes cluster configured: no kubeconfig found; " +
				"pass --kubeconfig or set $KUBECONFIG (the local cluster's is /var/lib/sluice-cluster/kubeconfig after `make cluster-up`)")
		}
		return nil, "", fmt.Errorf("load the kubeconfig: %w; pass --kubeconfig or --context", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil || ns == "" {
		ns = "default"
	}
	return cfg, ns, nil
}

// connect loads the kubeconfig and checks that its API server answers.
func (c *clusterFlags) connect(ctx context.Context) (*cluster, error) {
	cfg, ns, err := c.restConfig()
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("make a Kubernetes client for %s: %w", cfg.Host, err)
	}
	cl := &cluster{cfg: cfg, client: client, namespace: c.controlPlaneNamespace, contextNamespace: ns}
	if cl.namespace == "" {
		cl.namespace = meshmeta.DefaultNamespace
	}
	if err := cl.reachable(ctx); err != nil {
		return nil, err
	}
	return cl, nil
}

// reachable asks the API server for its version.
func (c *cluster) reachable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	_, err := c.client.CoreV1().RESTClient().Get().AbsPath("/version").Do(ctx).Raw()
	if err != nil {
		return unreachable(c.cfg.Host, err)
	}
	return nil
}

// unreachable turns a failed first call into one line saying what to do.
func unreachable(host string, err error) error {
	var opErr *net.OpError
	var dnsErr *net.DNSError
	var uerr *url.Error
	switch {
	case errors.As(err, &opErr) || errors.As(err, &dnsErr):
		return fmt.Errorf("cannot reach the Kubernetes API server at %s (%v): is the cluster running? Check --kubeconfig and --context", host, rootCause(err))
	case apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err):
		return fmt.Errorf("the Kubernetes API server at %s refused the kubeconfig's credentials: %v", host, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("the Kubernetes API server at %s did not answer within %s: is the cluster running? Check --kubeconfig and --context", host, reachTimeout)
	case errors.As(err, &uerr):
		return fmt.Errorf("cannot reach the Kubernetes API server at %s (%v): check --kubeconfig and --context", host, rootCause(err))
	}
	return fmt.Errorf("the Kubernetes API server at %s: %w", host, err)
}

// rootCause is the innermost error's text, without the URL and operation
// prefixes that net and net/http add.
func rootCause(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err.Error()
		}
		err = next
	}
}

// errNotInstalled says Sluice is missing from the cluster.
type errNotInstalled struct{ namespace string }

func (e errNotInstalled) Error() string {
	return fmt.Sprintf("Sluice is not installed in this cluster (no namespace %q): run `meshctl install`, or pass --control-plane-namespace if it lives elsewhere", e.namespace)
}

// requireSluice fails with errNotInstalled when the control plane's
// namespace does not exist.
func (c *cluster) requireSluice(ctx context.Context) error {
	_, err := c.client.CoreV1().Namespaces().Get(ctx, c.namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return errNotInstalled{c.namespace}
	}
	if err != nil {
		return fmt.Errorf("read namespace %s: %w", c.namespace, err)
	}
	return nil
}

// serviceProxyURL is the API server's proxy URL of a control-plane
// service's port ("http:sluice-metrics-api:8085"): the path the service's
// own paths are appended to. It needs no port-forward and works wherever
// the kubeconfig does.
func (c *cluster) serviceProxyURL(service string, port int) string {
	return strings.TrimSuffix(c.cfg.Host, "/") + c.cfg.APIPath +
		fmt.Sprintf("/api/v1/namespaces/%s/services/http:%s:%d/proxy", c.namespace, service, port)
}

// httpClient is an HTTP client with the kubeconfig's credentials.
func (c *cluster) httpClient() (*http.Client, error) {
	hc, err := rest.HTTPClientFor(c.cfg)
	if err != nil {
		return nil, fmt.Errorf("make an HTTP client for %s: %w", c.cfg.Host, err)
	}
	return hc, nil
}

// metricsAPI is a client of the control plane's metrics API, through the
// API server's service proxy.
func (c *cluster) metricsAPI() (*metricsapi.Client, error) {
	hc, err := c.httpClient()
	if err != nil {
		return nil, err
	}
	return metricsapi.NewClient(c.serviceProxyURL(meshmeta.MetricsAPIService, meshmeta.MetricsAPIPort), hc)
}
