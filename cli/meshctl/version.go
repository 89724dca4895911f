package meshctl

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/internal/version"
)

// versionDeployment is the control-plane Deployment whose image tag is
// the control plane's version.
const versionDeployment = "sluice-destination"

type versionOptions struct {
	clusterFlags
	client bool
}

func newCmdVersion(_ *globalOptions) *cobra.Command {
	o := &versionOptions{}
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print meshctl's version and the control plane's",
		Long: `version prints meshctl's version and the installed control plane's (the image
tag of its destination service). With --client only meshctl's, without a
cluster. A control plane that cannot be reached or is not installed is
reported on the Server line, and version exits non-zero.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.clusterFlags.bind(cmd)
	cmd.Flags().BoolVar(&o.client, "client", false, "print only meshctl's version")
	return cmd
}

func (o *versionOptions) run(ctx context.Context, w io.Writer) error {
	fmt.Fprintf(w, "Client version: %s\n", version.Version)
	if o.client {
		return nil
	}
	v, err := o.serverVersion(ctx)
	if err != nil {
		fmt.Fprintln(w, "Server version: unavailable")
		return err
	}
	fmt.Fprintf(w, "Server version: %s\n", v)
	return nil
}

func (o *versionOptions) serverVersion(ctx context.Context) (string, error) {
	cl, err := o.connect(ctx)
	if err != nil {
		return "", err
	}
	d, err := cl.client.AppsV1().Deployments(cl.namespace).Get(ctx, versionDeployment, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", errNotInstalled{cl.namespace}
	}
	if err != nil {
		return "", fmt.Errorf("read deployment %s/%s: %w", cl.namespace, versionDeployment, err)
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if i := strings.LastIndex(c.Image, ":"); i > 0 && !strings.Contains(c.Image[i:], "/") {
			return c.Image[i+1:], nil
		}
	}
	return "", fmt.Errorf("deployment %s/%s has no image tag", cl.namespace, versionDeployment)
}
