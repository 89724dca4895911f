package meshctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/healthcheck/ebpfcheck"
	"github.com/sluice-mesh/sluice/cli/healthcheck/kubecheck"
	"github.com/sluice-mesh/sluice/cli/install"
	"github.com/sluice-mesh/sluice/deploy/charts"
)

// errChecksFailed is returned by check when a check that is not a warning
// failed; the results have been printed already.
var errChecksFailed = reportedError{errors.New("checks failed")}

// Output formats of check.
const (
	outputTable = "table"
	outputJSON  = "json"
)

type checkOptions struct {
	clusterFlags
	pre, proxy, ebpf, local bool
	output                  string
	agentSocket             string
	// agentSocketSet says --agent-socket was given: the local eBPF checks.
	agentSocketSet     bool
	wait               time.Duration
	dataPlaneNamespace string
	agentImage         string
	probeNamespace     string

	// connect connects to the cluster; nil: the kubeconfig's. Tests
	// replace it, and now (the certificate checks' clock; nil: time.Now)
	// and probeLogs (nil: the pods/log API).
	connect   func(ctx context.Context) (*healthcheck.Cluster, error)
	now       func() time.Time
	probeLogs func(ctx context.Context, pod *corev1.Pod) ([]byte, error)
}

func newCheckOptions() *checkOptions {
	return &checkOptions{
		output:         outputTable,
		agentSocket:    api.DefaultSocket,
		probeNamespace: ebpfcheck.DefaultProbeNamespace,
	}
}

func (o *checkOptions) validate(cmd *cobra.Command) error {
	o.agentSocketSet = cmd.Flags().Changed("agent-socket")
	set := func(name string) bool { return cmd.Flags().Changed(name) }
	switch {
	case o.output != outputTable && o.output != outputJSON:
		return fmt.Errorf("invalid --output %q: use %q or %q", o.output, outputTable, outputJSON)
	case o.wait < 0:
		return fmt.Errorf("invalid --wait %s: must not be negative", o.wait)
	case o.agentSocket == "":
		return errors.New("invalid --agent-socket: empty path")
	case btoi(o.pre)+btoi(o.proxy)+btoi(o.ebpf) > 1:
		return errors.New("--pre, --proxy and --ebpf are different checks: pick one")
	case o.local && !o.ebpf, o.agentSocketSet && !o.ebpf:
		return errors.New("--local and --agent-socket go with --ebpf: `meshctl check --ebpf --local` checks this node")
	case set("namespace") && !o.proxy:
		return errors.New("-n/--namespace limits the data-plane checks: it goes with --proxy")
	case (set("agent-image") || set("probe-namespace")) && !o.pre:
		return errors.New("--agent-image and --probe-namespace go with --pre")
	case o.probeNamespace == "":
		return errors.New("invalid --probe-namespace: empty")
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func newCmdCheck(global *globalOptions) *cobra.Command {
	return newCmdCheckWith(global, newCheckOptions())
}

func newCmdCheckWith(global *globalOptions, o *checkOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check [--pre | --proxy | --ebpf [--local]]",
		Short: "Check that Sluice can be installed, and works, in the cluster or on this node",
		Long: `Check that Sluice can be installed, and works, in the cluster of the kubeconfig
(or, with --ebpf --local, on this node).

Without a flag, check an installed control plane:

  kubernetes-api        the API server answers and runs Kubernetes 1.29 or newer
  sluice-control-plane  the control plane's namespace exists, its Deployments
                        (destination, identity, proxy injector, tap, metrics
                        API, Prometheus) and the agent DaemonSet have all their
                        pods updated and ready, and every control-plane pod
                        runs without crash-looping
  sluice-identity       the trust anchors parse and stay valid for 60 days or
                        more; the issuer chains to them (and warns when it
                        expires within 60 days)
  sluice-webhook        the injector webhook's caBundle verifies the injector's
                        certificate, and a pod created in a server-side dry run
                        (in the context's namespace, else default) comes back
                        with its sluice-proxy container
  sluice-tap            the tap API service is Available
  sluice-prometheus     Prometheus answers and scrapes every control-plane pod
                        and agent (a warning when the chart's Prometheus is
                        disabled)
  sluice-metrics-api    the metrics API answers a stat query

With --proxy, also the data plane (in every namespace, or -n's):

  sluice-data-plane     every meshed pod's proxy is ready, runs the control
                        plane's version (warning otherwise), is scraped by
                        Prometheus; pods of namespaces annotated
                        sluice.io/inject: enabled all have a proxy (warning)

With --pre, before install:

  pre-kubernetes-setup  the control plane's namespace does not exist yet
                        (warning), and you may create every kind of object
                        the chart has
  node-kernels,         every Linux node runs Linux 5.10 or newer with BTF,
  kernel on <node>      the BPF filesystem and cgroup v2 mounted: asked of its
                        agent when one runs, else of a short-lived pod that
                        runs 'sluice-agent node-facts' (the agent image of the
                        chart, or --agent-image) in --probe-namespace with the
                        node's /proc and /sys mounted read-only, deleted after

With --ebpf, the eBPF data plane of every node, through the API server: the
agent DaemonSet's pods, then for each node (sluice-agent on <node>) its agent
pod is ready, its status (read from the agent's admin port through the pod
proxy) shows Linux 5.10 or newer with cgroup v2, the kernel features it needs,
its programs attached, its pins and its maps with room. Without a reachable
cluster with Sluice, and with --local or --agent-socket, --ebpf checks the node
meshctl runs on instead:

  kernel                the kernel is 5.10 or newer and has BTF, the BPF
                        filesystem is mounted at /sys/fs/bpf, and cgroup v2 is
                        mounted (unified or hybrid layout)
  sluice-agent          the node agent answers on its admin socket, with the
                        same checks of its features, programs, pins (each one
                        is looked at) and maps

Checks that need one that failed are skipped, with the reason; when the
cluster cannot be reached, or Sluice is not installed, the first check says so
and nothing else runs. Every check prints ✔ (passed), × (failed), ‼ (warning)
or - (skipped); a failure shows the error and a hint. meshctl exits non-zero
when any check that is not a warning fails.`,
		Example: `  # Check the installed control plane; wait up to 2 minutes for it to be ready
  meshctl check --wait 2m

  # Check the control plane and the meshed pods of namespace shop
  meshctl check --proxy -n shop

  # Before install: Kubernetes version, your rights and every node's kernel
  meshctl check --pre

  # The eBPF data plane of every node, as JSON
  meshctl check --ebpf -o json

  # This node's kernel and agent
  meshctl check --ebpf --local`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(cmd); err != nil {
				return err
			}
			return o.run(cmd, global)
		},
	}
	o.clusterFlags.bind(cmd)
	f := cmd.Flags()
	f.BoolVar(&o.pre, "pre", o.pre, "check the cluster before installing Sluice")
	f.BoolVar(&o.proxy, "proxy", o.proxy, "check the data plane (the meshed pods' proxies) too")
	f.BoolVar(&o.ebpf, "ebpf", o.ebpf, "check the eBPF data plane of every node (with --local: of this node)")
	f.BoolVar(&o.local, "local", o.local, "with --ebpf: check this node's kernel and agent, without the cluster")
	f.StringVarP(&o.output, "output", "o", o.output, "output format: table or json")
	f.StringVar(&o.agentSocket, "agent-socket", o.agentSocket, "unix socket of the node agent's admin API (implies --local)")
	f.DurationVar(&o.wait, "wait", o.wait,
		"keep retrying checks that may pass soon (workloads and agents becoming ready) for up to this long, e.g. 30s; 0 tries once")
	f.StringVarP(&o.dataPlaneNamespace, "namespace", "n", o.dataPlaneNamespace, "with --proxy: check the meshed pods of this namespace only")
	f.StringVar(&o.agentImage, "agent-image", o.agentImage, "with --pre: the image of the pods that read the nodes' kernel facts (default: the chart's agent image)")
	f.StringVar(&o.probeNamespace, "probe-namespace", o.probeNamespace, "with --pre: the namespace of the pods that read the nodes' kernel facts")
	return cmd
}

func (o *checkOptions) run(cmd *cobra.Command, global *globalOptions) error {
	cats := o.categories(cmd.Context(), global, cmd.ErrOrStderr())
	r := newRenderer(o.output, cmd.OutOrStdout())
	ok := healthcheck.Run(cmd.Context(), cats, &healthcheck.State{}, r.Observe)
	if err := r.Finish(ok); err != nil {
		return err
	}
	if !ok {
		return errChecksFailed
	}
	return nil
}

// categories are the checks of the mode the flags choose.
func (o *checkOptions) categories(ctx context.Context, global *globalOptions, stderr io.Writer) []healthcheck.Category {
	connect := o.connect
	if connect == nil {
		connect = o.connectKubeconfig
	}
	kube := kubecheck.Options{
		Connect: connect, Namespace: o.controlPlaneNamespace, Wait: o.wait, Now: o.now,
		DataPlaneNamespace: o.dataPlaneNamespace,
	}
	cluster := ebpfcheck.ClusterOptions{
		Requires: kubecheck.CheckKubeAPI, Namespace: o.controlPlaneNamespace, Wait: o.wait,
		Probe: ebpfcheck.ProbeOptions{Namespace: o.probeNamespace, Image: o.probeImage, Logs: o.probeLogs},
	}
	first := []healthcheck.Category{kubecheck.KubernetesAPI(kube)}
	switch {
	case o.ebpf:
		if o.local || o.agentSocketSet {
			return o.localCategories(global)
		}
		cl, err := connect(ctx)
		if err == nil {
			err = sluiceInstalled(ctx, cl)
		}
		if err != nil {
			fmt.Fprintf(stderr, "meshctl: checking this node only (--local), not the cluster: %v\n", err)
			return o.localCategories(global)
		}
		kube.Connect = func(context.Context) (*healthcheck.Cluster, error) { return cl, nil }
		return append([]healthcheck.Category{kubecheck.KubernetesAPI(kube)}, ebpfcheck.ClusterCategories(cluster)...)
	case o.pre:
		return append(append(first, kubecheck.PreInstall(kube)), ebpfcheck.NodeCategories(cluster)...)
	case o.proxy:
		return append(append(first, kubecheck.ControlPlane(kube)...), kubecheck.DataPlane(kube))
	}
	return append(first, kubecheck.ControlPlane(kube)...)
}

func (o *checkOptions) localCategories(global *globalOptions) []healthcheck.Category {
	return ebpfcheck.Categories(ebpfcheck.Options{Host: global.host, AgentSocket: o.agentSocket, Wait: o.wait})
}

// connectKubeconfig connects to the kubeconfig's cluster, with one-line
// errors when there is none or it does not answer.
func (o *checkOptions) connectKubeconfig(ctx context.Context) (*healthcheck.Cluster, error) {
	cl, err := o.clusterFlags.connect(ctx)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cl.cfg)
	if err != nil {
		return nil, fmt.Errorf("make a dynamic client for %s: %w", cl.cfg.Host, err)
	}
	return &healthcheck.Cluster{Client: cl.client, Dynamic: dyn, Namespace: cl.namespace, ContextNamespace: cl.contextNamespace}, nil
}

// sluiceInstalled fails with errNotInstalled when the control plane's
// namespace does not exist.
func sluiceInstalled(ctx context.Context, cl *healthcheck.Cluster) error {
	_, err := cl.Client.CoreV1().Namespaces().Get(ctx, cl.Namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return errNotInstalled{cl.Namespace}
	}
	return err
}

// probeImage is the image of the pods that read nodes' kernel facts:
// --agent-image, else the agent image `meshctl install` would install (the
// chart's agent DaemonSet's, rendered with the defaults).
func (o *checkOptions) probeImage() (string, corev1.PullPolicy, error) {
	if o.agentImage != "" {
		return o.agentImage, corev1.PullIfNotPresent, nil
	}
	objs, err := charts.Render(charts.Options{Namespace: o.controlPlaneNamespace})
	if err != nil {
		return "", "", fmt.Errorf("find the agent image: %w", err)
	}
	for _, obj := range objs {
		if obj.GetKind() != "DaemonSet" || obj.GetName() != install.AgentDaemonSet {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
		if len(containers) > 0 {
			c, _ := containers[0].(map[string]any)
			image, _ := c["image"].(string)
			pull, _ := c["imagePullPolicy"].(string)
			if image != "" {
				return image, corev1.PullPolicy(pull), nil
			}
		}
	}
	return "", "", fmt.Errorf("find the agent image: the chart has no daemonset %s with an image; pass --agent-image", install.AgentDaemonSet)
}

func newRenderer(output string, w io.Writer) healthcheck.Renderer {
	if output == outputJSON {
		return healthcheck.NewJSONRenderer(w)
	}
	return healthcheck.NewTableRenderer(w)
}
