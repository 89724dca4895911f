package meshctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/cli/install"
	"github.com/sluice-mesh/sluice/deploy/charts"
	"github.com/sluice-mesh/sluice/internal/version"
)

// installOptions are install's and upgrade's flags.
type installOptions struct {
	clusterFlags
	values      install.ValueOptions
	mode        string
	dryRun      bool
	output      string
	wait        time.Duration
	resetValues bool // upgrade only
	upgrade     bool // the command is upgrade
}

func newInstallOptions() *installOptions {
	return &installOptions{output: "yaml", wait: 5 * time.Minute}
}

func (o *installOptions) bind(cmd *cobra.Command) {
	o.clusterFlags.bind(cmd)
	f := cmd.Flags()
	f.StringArrayVarP(&o.values.Files, "values", "f", nil, "a values file of the chart (deploy/charts/sluice/values.yaml documents every value); repeatable, later files win; - for stdin")
	f.StringArrayVar(&o.values.Set, "set", nil, "a chart value, Helm's syntax: --set proxy.logLevel=debug,destination.replicas=2 (repeatable, applied after -f)")
	f.StringVar(&o.mode, "mode", "", "interception mode: ebpf or iptables (the value interceptionMode; default: the chart's, ebpf)")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the manifests instead of applying them (needs no cluster)")
	f.StringVarP(&o.output, "output", "o", o.output, "format of --dry-run's manifests: yaml or json")
	f.DurationVar(&o.wait, "wait", o.wait, "how long to wait for the control plane to be ready; 0: do not wait")
}

func (o *installOptions) validate() error {
	if o.output != "yaml" && o.output != "json" {
		return fmt.Errorf("invalid --output %q: use yaml or json", o.output)
	}
	if o.mode != "" && o.mode != "ebpf" && o.mode != "iptables" {
		return fmt.Errorf("invalid --mode %q: use ebpf or iptables", o.mode)
	}
	if o.wait < 0 {
		return fmt.Errorf("invalid --wait %s: must not be negative", o.wait)
	}
	return nil
}

// userValues are the values of the flags, on top of base.
func (o *installOptions) userValues(base map[string]any) (map[string]any, error) {
	vals, err := o.values.Merge(base)
	if err != nil {
		return nil, err
	}
	if o.mode != "" {
		vals["interceptionMode"] = o.mode
	}
	return vals, nil
}

func newCmdInstall(_ *globalOptions) *cobra.Command {
	o := newInstallOptions()
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install Sluice's control plane and node agents",
		Long: `install renders Sluice's Helm chart (embedded in meshctl; the same chart as
deploy/charts/sluice) with the Helm SDK and applies it to the cluster with
server-side apply: the control plane (destination, identity, tap, proxy
injector, metrics API), Prometheus and the node agent on every node. It then
waits until every Deployment and DaemonSet is ready and the tap API is
available, printing each as it comes up.

It generates the identity trust anchor and issuer (ECDSA P-256; the anchor
for 10 years, the issuer for one) unless the values give them, and keeps the
values you gave in the Secret sluice-install-values, which upgrade starts
from. It refuses to run where Sluice is installed already: use upgrade.

With --dry-run it prints the manifests instead (-o yaml or json) and needs no
cluster: meshctl install --dry-run | kubectl apply --server-side -f - does
the same as install, without the wait.`,
		Example: `  meshctl install
  meshctl install --mode iptables --set proxy.logLevel=debug
  meshctl install -f my-values.yaml --dry-run > sluice.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.runInstall(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.bind(cmd)
	return cmd
}

func newCmdUpgrade(_ *globalOptions) *cobra.Command {
	o := newInstallOptions()
	o.upgrade = true
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Upgrade an installed Sluice to this meshctl's chart, or change its values",
		Long: `upgrade renders this meshctl's chart with the installed values (the Secret
sluice-install-values) overridden by -f, --set and --mode, keeps the installed
identity trust anchor and issuer (unless the values give new ones), applies
the result with server-side apply and waits until it is ready. Proxies pick up
a new version when their pods restart (kubectl rollout restart).

--reset-values starts from the chart's defaults instead of the installed values.`,
		Example: `  meshctl upgrade
  meshctl upgrade --set destination.replicas=2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.runUpgrade(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.bind(cmd)
	cmd.Flags().BoolVar(&o.resetValues, "reset-values", false, "start from the chart's defaults, not the installed values")
	return cmd
}

func (o *installOptions) runInstall(ctx context.Context, stdout, stderr io.Writer) error {
	user, err := o.userValues(map[string]any{})
	if err != nil {
		return err
	}
	vals, err := install.WithGeneratedIdentity(user)
	if err != nil {
		return err
	}
	if o.dryRun {
		objs, err := o.render(vals, user, "")
		if err != nil {
			return err
		}
		return printManifests(stdout, objs, o.output)
	}
	cl, err := o.connect(ctx)
	if err != nil {
		return err
	}
	installed, err := install.Installed(ctx, cl.client, cl.namespace)
	if err != nil {
		return err
	}
	if installed {
		return fmt.Errorf("already installed: Sluice runs in namespace %s; use `meshctl upgrade` to change it, or `meshctl uninstall` first", cl.namespace)
	}
	return o.apply(ctx, cl, vals, user, stderr, "installed")
}

func (o *installOptions) runUpgrade(ctx context.Context, stdout, stderr io.Writer) error {
	cl, err := o.connect(ctx)
	if err != nil {
		return err
	}
	installed, err := install.Installed(ctx, cl.client, cl.namespace)
	if err != nil {
		return err
	}
	if !installed {
		return errNotInstalled{cl.namespace}
	}
	prev, identity, err := install.PreviousValues(ctx, cl.client, cl.namespace)
	if err != nil {
		return err
	}
	if o.resetValues {
		prev = map[string]any{}
	}
	user, err := o.userValues(prev)
	if err != nil {
		return err
	}
	vals := user
	if !install.HasTrustAnchors(user) {
		vals = install.MergeValues(user, identity)
	}
	if o.dryRun {
		objs, err := o.render(vals, user, cl.serverVersion(ctx))
		if err != nil {
			return err
		}
		return printManifests(stdout, objs, o.output)
	}
	return o.apply(ctx, cl, vals, user, stderr, "upgraded")
}

// render renders the chart for the control plane's namespace, with the
// Secret that keeps the user's values.
func (o *installOptions) render(vals, user map[string]any, kubeVersion string) ([]*unstructured.Unstructured, error) {
	ns := o.controlPlaneNamespace
	objs, err := charts.Render(charts.Options{Namespace: ns, Values: vals, KubeVersion: kubeVersion, IsUpgrade: o.upgrade})
	if err != nil {
		return nil, err
	}
	keep, err := install.ValuesObject(ns, user)
	if err != nil {
		return nil, err
	}
	// After the namespace (when the chart makes it), before the rest.
	at := 0
	if len(objs) > 0 && objs[0].GetKind() == "Namespace" {
		at = 1
	}
	return slices.Insert(objs, at, keep), nil
}

func (o *installOptions) apply(ctx context.Context, cl *cluster, vals, user map[string]any, progress io.Writer, done string) error {
	objs, err := o.render(vals, user, cl.serverVersion(ctx))
	if err != nil {
		return err
	}
	in, err := install.New(cl.cfg, progress)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := in.Apply(ctx, objs); err != nil {
		return err
	}
	if o.wait > 0 {
		fmt.Fprintln(progress, "waiting for the control plane to be ready")
		wctx, cancel := context.WithTimeout(ctx, o.wait)
		defer cancel()
		if err := in.Wait(wctx, objs); err != nil {
			return fmt.Errorf("%w; see `kubectl -n %s get pods` and `meshctl check`", err, cl.namespace)
		}
	}
	fmt.Fprintf(progress, "Sluice %s is %s in namespace %s (%s). Next: meshctl check\n", version.Version, done, cl.namespace, time.Since(start).Round(time.Second))
	return nil
}

// serverVersion is the API server's version, "" when it cannot say (the
// chart's version check is then skipped).
func (c *cluster) serverVersion(context.Context) string {
	v, err := c.client.Discovery().ServerVersion()
	if err != nil {
		return ""
	}
	return v.GitVersion
}

// printManifests writes objs as multi-document YAML or as a JSON List.
func printManifests(w io.Writer, objs []*unstructured.Unstructured, format string) error {
	if format == "json" {
		items := make([]any, len(objs))
		for i, o := range objs {
			items[i] = o.Object
		}
		b, err := json.MarshalIndent(map[string]any{"apiVersion": "v1", "kind": "List", "items": items}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	for _, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}

type uninstallOptions struct {
	clusterFlags
	wait time.Duration
}

func newCmdUninstall(_ *globalOptions) *cobra.Command {
	o := &uninstallOptions{wait: 5 * time.Minute}
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove Sluice from the cluster, including the agents' pinned eBPF state",
		Long: `uninstall removes everything install made: first the node agents, then on
every node they ran on a short-lived pod (the agent's image and privileges)
that runs sluice-agent uninstall, detaching the eBPF programs and removing
their pins under the BPF filesystem and the agent's state directory; then
every object of the chart, cluster-wide ones included, and the control
plane's namespace, waiting until it is gone.

Meshed pods keep their proxy containers until they are restarted, but traffic
no longer passes through them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.ErrOrStderr())
		},
	}
	o.clusterFlags.bind(cmd)
	cmd.Flags().DurationVar(&o.wait, "timeout", o.wait, "how long uninstall may take")
	return cmd
}

func (o *uninstallOptions) run(ctx context.Context, progress io.Writer) error {
	cl, err := o.connect(ctx)
	if err != nil {
		return err
	}
	if err := cl.requireSluice(ctx); err != nil {
		var ni errNotInstalled
		if errors.As(err, &ni) {
			return fmt.Errorf("nothing to uninstall: %w", err)
		}
		return err
	}
	// Every object the chart can make: the names depend only on the
	// namespace.
	objs, err := charts.Render(charts.Options{Namespace: cl.namespace})
	if err != nil {
		return err
	}
	keep, err := install.ValuesObject(cl.namespace, nil)
	if err != nil {
		return err
	}
	objs = append(objs, keep)
	in, err := install.New(cl.cfg, progress)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.wait)
	defer cancel()
	start := time.Now()
	if err := in.Uninstall(ctx, cl.namespace, objs); err != nil {
		return err
	}
	fmt.Fprintf(progress, "Sluice is uninstalled from namespace %s (%s)\n", cl.namespace, time.Since(start).Round(time.Second))
	return nil
}
