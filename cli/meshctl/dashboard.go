package meshctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// What dashboard --show takes.
const (
	showBrowser = "browser"
	showURL     = "url"
)

// browserCommand opens a URL in the desktop's browser.
const browserCommand = "xdg-open"

// dashboardOptions are the flags of dashboard.
type dashboardOptions struct {
	cluster clusterFlags
	show    string
}

func newDashboardOptions() *dashboardOptions { return &dashboardOptions{show: showBrowser} }

func (o *dashboardOptions) validate() error {
	if o.show != showBrowser && o.show != showURL {
		return fmt.Errorf("invalid --show %q: use %q or %q", o.show, showBrowser, showURL)
	}
	return nil
}

func newCmdDashboard(_ *globalOptions) *cobra.Command {
	o := newDashboardOptions()
	cmd := &cobra.Command{
		Use:   "dashboard [flags]",
		Short: "Open Sluice's web dashboard",
		Long: fmt.Sprintf(`Open Sluice's web dashboard: the Service %s (port %d) in the control
plane's namespace, through the Kubernetes API server's service proxy (no
port-forward). meshctl prints its URL and, unless --show=url, opens it with
%s; if that fails, open the URL yourself. The API server asks for the
kubeconfig's credentials, which a browser may not have: `+"`kubectl proxy`"+`
serves the same path on http://127.0.0.1:8001 with them.

When the dashboard is not installed, meshctl says so and exits non-zero;
meshctl stat, top, edges and tap show the same figures.`,
			meshmeta.WebService, meshmeta.DashboardPort, browserCommand),
		Example: `  # Open the dashboard in the default browser
  meshctl dashboard

  # Only print its URL
  meshctl dashboard --show=url`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.cluster.bind(cmd)
	cmd.Flags().StringVar(&o.show, "show", o.show, "browser: print the URL and open it; url: only print it")
	return cmd
}

// run finds the dashboard's Service and shows its URL.
func (o *dashboardOptions) run(ctx context.Context, out, errOut io.Writer) error {
	cl, err := o.cluster.connect(ctx)
	if err != nil {
		return err
	}
	if err := cl.requireSluice(ctx); err != nil {
		return err
	}
	_, err = cl.client.CoreV1().Services(cl.namespace).Get(ctx, meshmeta.WebService, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		fmt.Fprintf(errOut, "The Sluice dashboard is not installed in namespace %s (no Service %s); meshctl stat, top, edges and tap show the same figures.\n",
			cl.namespace, meshmeta.WebService)
		return reportedError{errors.New("dashboard not installed")}
	}
	if err != nil {
		return fmt.Errorf("read service %s/%s: %w", cl.namespace, meshmeta.WebService, err)
	}
	url := cl.serviceProxyURL(meshmeta.WebService, meshmeta.DashboardPort) + "/"
	if o.show == showURL {
		_, err := fmt.Fprintln(out, url)
		return err
	}
	fmt.Fprintf(out, "Sluice dashboard available at:\n%s\n", url)
	if err := exec.CommandContext(ctx, browserCommand, url).Run(); err != nil {
		fmt.Fprintf(out, "Could not open a browser (%s: %v): open the URL above.\n", browserCommand, err)
		return nil
	}
	fmt.Fprintln(out, "Opened it in the default browser.")
	return nil
}
