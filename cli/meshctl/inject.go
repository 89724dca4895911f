package meshctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/controlplane/inject/manifest"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/version"
)

// clusterTimeout bounds reading the installed values from the cluster.
const clusterTimeout = 10 * time.Second

// manifestExts are the files a directory argument contributes.
var manifestExts = []string{".yaml", ".yml", ".json"}

type injectOptions struct {
	kubeFlags
	values        *inject.ValueFlags
	ignoreCluster bool
	namespace     string
}

func newInjectOptions() *injectOptions { return &injectOptions{} }

func (o *injectOptions) validate(args []string) error { return validateInputs(args) }

// validateInputs checks the file arguments of inject and uninject.
func validateInputs(args []string) error {
	if len(args) == 0 {
		return errors.New("no input: give files, directories or - for stdin")
	}
	n := 0
	for _, a := range args {
		if a == "-" {
			n++
		}
	}
	if n > 1 {
		return errors.New("- (stdin) may be given once")
	}
	return nil
}

func newCmdInject(_ *globalOptions) *cobra.Command {
	o := newInjectOptions()
	cmd := &cobra.Command{
		Use:   "inject (FILE | DIR | -)...",
		Short: "Add the Sluice proxy to the workloads in Kubernetes manifests",
		Long: fmt.Sprintf(`inject adds the Sluice proxy to every pod template in the manifests it reads
and writes the manifests to stdout, ready for kubectl apply -f -.

It reads files, directories (recursively, their .yaml, .yml and .json files) and
- for stdin; multi-document YAML or a stream of JSON objects, written back in
the format they came in. Pods, Deployments, ReplicaSets, StatefulSets,
DaemonSets, ReplicationControllers, Jobs and CronJobs are injected, also inside
List documents; every other document passes through unchanged, as do fields,
comments and key order outside what the proxy adds. stderr gets one line per
workload ("deployment/web injected", "pod/x skipped: hostNetwork").

The change is exactly the proxy injector's (the admission webhook) for the
same pod template, except for the annotation %[1]s. Unlike the
webhook, inject does not need %[2]s: %[3]s on the namespace
or pod; pods annotated %[2]s: %[4]s, pods on the host network
and pods that already have a proxy are left as they are, so running inject
twice changes nothing.

The installation's values (images, version, interception mode, trust anchors)
are read from the ConfigMap %[5]s (key %[6]s) in the control
plane's namespace; with --ignore-cluster, or when the cluster cannot be reached
(said on stderr), the defaults are used. The value flags override either.

Workloads without a namespace are taken to run in --namespace (default: the
kubeconfig context's namespace, else "default"), which the label
%[7]s records.

An invalid manifest fails the whole run with a message naming the file and
document; nothing is written then.`,
			meshmeta.AnnotationCreatedBy, meshmeta.AnnotationInject, meshmeta.InjectEnabled, meshmeta.InjectDisabled,
			inject.ConfigMapName, inject.ValuesKey, meshmeta.LabelWorkloadNS),
		Example: `  # Mesh a deployment
  kubectl get deploy web -o yaml | meshctl inject - | kubectl apply -f -

  # Inject every manifest of a directory with iptables interception, offline
  meshctl inject --ignore-cluster --mode iptables ./k8s/ > meshed.yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(args); err != nil {
				return err
			}
			return o.run(cmd, args)
		},
	}
	o.kubeFlags.bind(cmd)
	f := cmd.Flags()
	f.BoolVar(&o.ignoreCluster, "ignore-cluster", false, "do not read the installed values from the cluster: use the defaults and the flags")
	f.StringVarP(&o.namespace, "namespace", "n", "", `namespace of workloads whose manifest has none (default: the kubeconfig context's, else "default")`)
	o.values = inject.BindValueFlags(f)
	return cmd
}

func (o *injectOptions) run(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	stderr := cmd.ErrOrStderr()
	base := inject.DefaultValues()
	ns := o.namespace
	if !o.ignoreCluster || ns == "" {
		cc := o.clientConfig()
		if ns == "" {
			if kns, _, err := cc.Namespace(); err == nil && kns != "" {
				ns = kns
			}
		}
		if !o.ignoreCluster {
			v, err := clusterValues(ctx, cc, o.values.ControlPlaneNamespace())
			if err != nil {
				fmt.Fprintf(stderr, "meshctl inject: using the default values: cannot read the installed ones: %v (--ignore-cluster skips this)\n", err)
			} else {
				base = v
			}
		}
	}
	if ns == "" {
		ns = "default"
	}
	values, err := o.values.Apply(base)
	if err != nil {
		return err
	}
	in := inject.Injector{Values: values, CreatedBy: "meshctl " + version.Version}
	return transform(cmd, args, func(s *manifest.Stream) ([]manifest.Report, error) {
		return manifest.Inject(s, in, ns)
	})
}

// clusterValues reads the installed values through the kubeconfig.
func clusterValues(ctx context.Context, cc clientcmd.ClientConfig, namespace string) (inject.Values, error) {
	rc, err := cc.ClientConfig()
	if err != nil {
		return inject.Values{}, fmt.Errorf("no cluster: %w", err)
	}
	rc.Timeout = clusterTimeout
	rc.UserAgent = "meshctl/" + version.Version
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return inject.Values{}, fmt.Errorf("make a Kubernetes client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, clusterTimeout)
	defer cancel()
	return inject.LoadValues(ctx, client, namespace)
}

// uninjectOptions has no flags: uninject needs no values.
type uninjectOptions struct{}

func newUninjectOptions() *uninjectOptions { return &uninjectOptions{} }

func newCmdUninject(_ *globalOptions) *cobra.Command {
	o := newUninjectOptions()
	cmd := &cobra.Command{
		Use:   "uninject (FILE | DIR | -)...",
		Short: "Remove the Sluice proxy from the workloads in Kubernetes manifests",
		Long: `uninject removes from every pod template in the manifests it reads exactly what
inject (or the proxy injector) added: the sluice-proxy and sluice-init
containers, their volumes, and the labels and annotations that mark a meshed
pod. Annotations you set (sluice.io/inject, config.sluice.io/*) stay.

Inputs and output are as for inject: files, directories, - for stdin; YAML or
JSON out as it came in; one line per workload on stderr.`,
		Example: `  kubectl get deploy web -o yaml | meshctl uninject - | kubectl apply -f -`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.validate(args); err != nil {
				return err
			}
			return transform(cmd, args, manifest.Uninject)
		},
	}
	return cmd
}

func (o *uninjectOptions) validate(args []string) error { return validateInputs(args) }

// input is one manifest read.
type input struct {
	name string
	data []byte
}

// transform reads every input, applies f to each and, when all succeeded,
// writes the results to stdout and the reports to stderr.
func transform(cmd *cobra.Command, args []string, f func(*manifest.Stream) ([]manifest.Report, error)) error {
	inputs, err := readInputs(cmd.InOrStdin(), args)
	if err != nil {
		return err
	}
	var (
		streams []*manifest.Stream
		reports []manifest.Report
	)
	for _, in := range inputs {
		s, err := manifest.Read(in.data)
		if err != nil {
			return fmt.Errorf("%s: %w", in.name, err)
		}
		rs, err := f(s)
		if err != nil {
			return fmt.Errorf("%s: %w", in.name, err)
		}
		streams = append(streams, s)
		reports = append(reports, rs...)
	}
	var out bytes.Buffer
	if err := manifest.WriteAll(&out, streams...); err != nil {
		return err
	}
	if _, err := cmd.OutOrStdout().Write(out.Bytes()); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	for _, r := range reports {
		fmt.Fprintln(cmd.ErrOrStderr(), r)
	}
	return nil
}

// readInputs reads the arguments: files, directories (their manifest
// files, recursively, in lexical order) and - for stdin.
func readInputs(stdin io.Reader, args []string) ([]input, error) {
	var out []input
	for _, a := range args {
		if a == "-" {
			b, err := io.ReadAll(stdin)
			if err != nil {
				return nil, fmt.Errorf("read stdin: %w", err)
			}
			out = append(out, input{name: "stdin", data: b})
			continue
		}
		st, err := os.Stat(a)
		if err != nil {
			return nil, fmt.Errorf("read input: %w", err)
		}
		if !st.IsDir() {
			b, err := os.ReadFile(a)
			if err != nil {
				return nil, fmt.Errorf("read input: %w", err)
			}
			out = append(out, input{name: a, data: b})
			continue
		}
		err = filepath.WalkDir(a, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !hasManifestExt(path) {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			out = append(out, input{name: path, data: b})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read input: %w", err)
		}
	}
	return out, nil
}

func hasManifestExt(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	for _, e := range manifestExts {
		if ext == e {
			return true
		}
	}
	return false
}
