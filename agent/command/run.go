// Package command holds sluice-agent's cobra commands: run, enroll,
// unenroll, list, status, uninstall, iptables-init and node-facts.
package command

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/enroll"
	"github.com/sluice-mesh/sluice/agent/iptables"
	"github.com/sluice-mesh/sluice/agent/loader"
	"github.com/sluice-mesh/sluice/agent/metrics"
	"github.com/sluice-mesh/sluice/agent/podns"
	"github.com/sluice-mesh/sluice/agent/podwatch"
	"github.com/sluice-mesh/sluice/agent/probe"
	"github.com/sluice-mesh/sluice/agent/server"
	"github.com/sluice-mesh/sluice/bpf"
	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

// Version is set at build time.
var Version = "dev"

// NewRoot returns the sluice-agent command.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "sluice-agent",
		Short: "Sluice's node agent: steers pod traffic into sidecar proxies with eBPF",
		Long: `sluice-agent loads Sluice's eBPF programs, pins them under the BPF filesystem and
attaches them at the cgroup v2 root, then enrolls pods through a local admin API
on a unix socket. Killing the agent loses no connection and no enrollment: a
restarted agent re-adopts what is pinned.`,
		SilenceUsage: true,
	}
	root.AddCommand(newCmdRun(), newCmdEnroll(), newCmdUnenroll(), newCmdList(), newCmdStatus(), newCmdUninstall(), newCmdIPTablesInit(), newCmdNodeFacts())
	return root
}

type runOptions struct {
	mode        string
	pinRoot     string
	cgroupRoot  string
	stateDir    string
	socket      string
	metricsAddr string
	noRedirect  bool
	maxPods     uint32
	logLevel    string
	netnsCookie string
	// The pod watcher's (see agent/podwatch); it runs when nodeName is set.
	kubeconfig     string
	nodeName       string
	podCgroupRoots []string
	podResync      time.Duration
}

func newRunOptions() *runOptions {
	return &runOptions{
		mode:        string(api.ModeEBPF),
		pinRoot:     loader.DefaultPinRoot,
		stateDir:    "/run/sluice",
		metricsAddr: ":9995",
		maxPods:     1024,
		logLevel:    "info",
		netnsCookie: "auto",
		nodeName:    os.Getenv("NODE_NAME"),
		podResync:   podwatch.DefaultResync,
	}
}

func (o *runOptions) validate() error {
	if o.mode != string(api.ModeEBPF) && o.mode != string(api.ModeIPTables) {
		return fmt.Errorf("--mode must be ebpf or iptables, not %q", o.mode)
	}
	switch o.netnsCookie {
	case "auto", "sockopt", "bpf":
	default:
		return fmt.Errorf("--netns-cookie must be auto, sockopt or bpf, not %q", o.netnsCookie)
	}
	if o.netnsCookie == "bpf" && o.mode != string(api.ModeEBPF) {
		return fmt.Errorf("--netns-cookie bpf needs --mode ebpf")
	}
	if o.maxPods == 0 || o.maxPods > 65536 {
		return fmt.Errorf("--max-pods must be in 1-65536")
	}
	if !filepath.IsAbs(o.pinRoot) || !filepath.IsAbs(o.stateDir) {
		return fmt.Errorf("--pin-root and --state-dir must be absolute paths")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	if o.kubeconfig != "" && o.nodeName == "" {
		return fmt.Errorf("--kubeconfig is for the pod watcher, which needs --node-name (or $NODE_NAME)")
	}
	if o.podResync <= 0 {
		return fmt.Errorf("--pod-resync must be positive")
	}
	for _, r := range o.podCgroupRoots {
		if !filepath.IsAbs(r) {
			return fmt.Errorf("--pod-cgroup-root %q must be an absolute path", r)
		}
	}
	return nil
}

func (o *runOptions) socketPath() string {
	if o.socket != "" {
		return o.socket
	}
	return filepath.Join(o.stateDir, stateSocket)
}

func newCmdRun() *cobra.Command {
	o := newRunOptions()
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Load the programs, serve the admin API and metrics until stopped",
		Long: `run probes the kernel, loads and attaches the steering programs (or adopts and,
if they changed, upgrades the ones an earlier agent pinned), then serves the
admin API on --socket and, on --metrics-addr, Prometheus metrics (/metrics),
its probes (/live, /ready) and, read-only, its status (/status, as the admin
API's /v1/status) and the node's kernel facts (/node-facts, as the node-facts
command prints them).

With --node-name (or $NODE_NAME) it also watches the node's pods through the
Kubernetes API (--kubeconfig, or the pod's service account in a cluster) and
enrolls each meshed eBPF-mode pod once its sluice-proxy container runs: its
network namespace is found through the kubelet's cgroups (kubepods/.../pod<uid>)
and /proc, so the agent needs the host's PID namespace. Pods are unenrolled
when deleted or finished, and the agent's enrollments are reconciled with the
node's pods at start and every --pod-resync. Enrollments made by hand are
left alone. Without a node name only the admin API enrolls pods.

Stopping it (SIGTERM, or even SIGKILL) detaches nothing: traffic keeps being
steered. Use 'sluice-agent uninstall' to remove everything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.mode, "mode", o.mode, "interception mode: ebpf, or iptables (per-pod REDIRECT rules like linkerd-init)")
	f.StringVar(&o.pinRoot, "pin-root", o.pinRoot, "bpffs directory for pinned programs, maps and links")
	f.StringVar(&o.cgroupRoot, "cgroup-root", "", "cgroup v2 directory to attach to (default: the cgroup v2 mount)")
	f.StringVar(&o.stateDir, "state-dir", o.stateDir, "directory of the admin socket and the enrollment record")
	f.StringVar(&o.socket, "socket", "", "admin API unix socket (default <state-dir>/agent.sock)")
	f.StringVar(&o.metricsAddr, "metrics-addr", o.metricsAddr, "address of the HTTP port of /metrics, /live, /ready, /status and /node-facts; empty disables it")
	f.BoolVar(&o.noRedirect, "no-redirect", false, "do not attach the sk_msg redirect (connections are still steered)")
	f.Uint32Var(&o.maxPods, "max-pods", o.maxPods, "capacity of the pod maps; changing it needs an uninstall")
	f.StringVar(&o.logLevel, "log-level", o.logLevel, "debug, info, warn or error")
	f.StringVar(&o.netnsCookie, "netns-cookie", o.netnsCookie, `how to learn a pod's netns cookie: sockopt (SO_NETNS_COOKIE, Linux 5.14),
bpf (a UDP connect seen by cgroup/connect4; the agent must run in a cgroup under
--cgroup-root, as it does on a node), or auto (sockopt when the kernel has it)`)
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the pod watcher (default: the pod's service account, when KUBERNETES_SERVICE_HOST is set)")
	f.StringVar(&o.nodeName, "node-name", o.nodeName, "this node's name: watch its pods and enroll the meshed ones (default $NODE_NAME; empty: no pod watcher, the admin API only)")
	f.StringSliceVar(&o.podCgroupRoots, "pod-cgroup-root", nil, `directory under which the kubelet's kubepods cgroups are looked for, in order;
repeatable (default: the cgroup v2 mount, then every cgroup v1 hierarchy)`)
	f.DurationVar(&o.podResync, "pod-resync", o.podResync, "how often the pod watcher checks every meshed pod and every enrollment of a pod again")
	return cmd
}

// agent is a running agent's parts, for status and metrics.
type agent struct {
	opts     *runOptions
	state    *loader.State
	manager  *enroll.Manager
	features []api.Feature
	redirect bool
	cgroup   string
}

func (o *runOptions) run(cmd *cobra.Command) error {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(o.logLevel))
	base := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
	log := base.With("component", "agent")

	// The Kubernetes client first: a bad --kubeconfig fails before the
	// kernel is touched.
	var kc kubernetes.Interface
	if o.nodeName != "" {
		var err error
		if kc, err = kubeClient(o.kubeconfig); err != nil {
			return err
		}
	}

	a := &agent{opts: o}
	mcfg := enroll.Config{Mode: api.Mode(o.mode), StateFile: filepath.Join(o.stateDir, "enrollments.json"), MaxPods: int(o.maxPods), Logger: log}
	if o.mode == string(api.ModeEBPF) {
		rep := probe.Run()
		a.features = rep.Features
		if err := rep.Err(); err != nil {
			return fmt.Errorf("refusing to start: %w", err)
		}
		cg := o.cgroupRoot
		if cg == "" {
			var err error
			if cg, err = loader.FindCgroup2(); err != nil {
				return err
			}
		}
		a.cgroup = cg
		a.redirect = !o.noRedirect && rep.Has(probe.SockopsNetnsCookie) && rep.Has(probe.SkMsgNetnsCookie) && rep.Has(probe.SkMsgStorage)
		if !o.noRedirect && !a.redirect {
			log.Warn("sk_msg redirect off: the kernel lacks a feature it needs (Linux 5.15)")
		}
		st, err := loader.Load(loader.Config{
			PinRoot: o.pinRoot, CgroupRoot: cg, Logger: log,
			Options: bpf.Options{SockopsNetnsCookie: rep.Has(probe.SockopsNetnsCookie), Redirect: a.redirect, GetPeerName: rep.Has(probe.SockAddrStorage) && rep.Has(probe.GetPeerName), MaxPods: o.maxPods},
		})
		if err != nil {
			return err
		}
		defer st.Close()
		a.state = st
		mcfg.State = st
		if o.netnsCookie == "bpf" || (o.netnsCookie == "auto" && !rep.Has(probe.NetnsCookieSockopt)) {
			log.Info("learning netns cookies through cgroup/connect4")
			mcfg.Cookie = func(ns *podns.NS) (uint64, error) { return st.NetnsCookie(ns.Do) }
		}
	} else {
		mcfg.Rules = &iptables.Rules{}
		if o.netnsCookie == "auto" && probe.HaveNetnsCookieSockopt() != nil {
			log.Info("no SO_NETNS_COOKIE: iptables enrollments are identified by netns inode")
			mcfg.Cookie = podns.InodeID
		}
	}
	m, err := enroll.New(mcfg)
	if err != nil {
		return err
	}
	a.manager = m

	ln, err := server.Listen(o.socketPath())
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: server.Handler(m, a.status, log), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.New(a, log), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if kc != nil {
		w, err := podwatch.New(podwatch.Config{
			Client: kc, NodeName: o.nodeName, Enroller: podwatch.Local(m), Mode: api.Mode(o.mode),
			CgroupRoots: o.podCgroupRoots, NetNSCookie: podwatch.NetNSCookieWith(mcfg.Cookie),
			Logger: base, Registerer: reg, Resync: o.podResync,
		})
		if err != nil {
			return err
		}
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			if err := w.Run(ctx); err != nil {
				log.Error("pod watcher stopped", "err", err)
			}
		}()
		defer func() { stop(); <-watched }()
	}

	if o.metricsAddr != "" {
		mln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", o.metricsAddr, err)
		}
		h := httpHandler(reg, a.status, nodefacts.Host{ProcRoot: "/proc", SysRoot: "/sys", MountsOf: "1"}.Gather)
		msrv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = msrv.Serve(mln) }()
		defer msrv.Close()
		log.Info("serving metrics", "addr", mln.Addr().String())
	}

	log.Info("agent ready", "mode", o.mode, "socket", o.socketPath(), "enrollments", m.Len(), "node", o.nodeName)
	fmt.Fprintln(cmd.OutOrStdout(), "READY")
	// Proxies' listeners are looked for every tick, so inbound steering
	// starts soon after a proxy does; gone namespaces every gcEvery ticks.
	const gcEvery = 10
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			log.Info("stopping; programs stay attached")
			return nil
		case <-tick.C:
			m.Reconcile(ctx, n%gcEvery == 0)
		}
	}
}

// httpHandler serves the agent's HTTP port (--metrics-addr, the port named
// "admin" of its DaemonSet): GET /metrics, /live and /ready for Prometheus
// and the kubelet, and, read-only, GET /status (the admin API's status) and
// GET /node-facts (the node's kernel facts, as `sluice-agent node-facts`
// prints them), which meshctl check reads through the API server's pod
// proxy. The programs are loaded and attached and the admin API serves by
// the time it is served: the agent is live and ready.
func httpHandler(g prometheus.Gatherer, status func() api.Status, facts func() nodefacts.Facts) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	for _, path := range []string{"/live", "/ready"} {
		answer := strings.TrimPrefix(path, "/") + "\n"
		mux.HandleFunc(path, func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, answer) })
	}
	mux.Handle("GET /status", server.JSONHandler(status))
	mux.Handle("GET /node-facts", server.JSONHandler(facts))
	return mux
}

// kubeClient returns a Kubernetes client from the kubeconfig at path or,
// when path is empty, from the pod's service account.
func kubeClient(path string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	switch {
	case path != "":
		if cfg, err = clientcmd.BuildConfigFromFlags("", path); err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
		}
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("load in-cluster Kubernetes config: %w", err)
		}
	default:
		return nil, errors.New("the pod watcher (--node-name) needs --kubeconfig outside a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)")
	}
	cfg.UserAgent = "sluice-agent/" + Version
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("make a Kubernetes client: %w", err)
	}
	return c, nil
}

func (a *agent) status() api.Status {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	st := api.Status{
		Version: Version, Mode: api.Mode(a.opts.mode), PinRoot: a.opts.pinRoot, CgroupV2: a.cgroup,
		Kernel: unix.ByteSliceToString(uts.Release[:]), Features: a.features,
		RedirectEnabled: a.redirect, Enrollments: a.manager.Len(),
	}
	if a.state != nil {
		st.Programs = a.state.Programs()
		st.Pins = a.state.Pins()
		st.Maps = a.state.MapUsage()
	}
	return st
}

// Counters implements metrics.Source.
func (a *agent) Counters() ([]uint64, error) {
	if a.state == nil {
		return nil, nil
	}
	return a.state.Counters()
}

// MapUsage implements metrics.Source.
func (a *agent) MapUsage() []api.MapUsage {
	if a.state == nil {
		return nil
	}
	return a.state.MapUsage()
}

// Enrollments implements metrics.Source.
func (a *agent) Enrollments() int { return a.manager.Len() }

var _ metrics.Source = (*agent)(nil)

type uninstallOptions struct {
	pinRoot  string
	stateDir string
}

func newCmdUninstall() *cobra.Command {
	o := &uninstallOptions{pinRoot: loader.DefaultPinRoot, stateDir: "/run/sluice"}
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Detach every program and remove every pin, rule and record",
		Long: `uninstall detaches the steering programs, removes everything pinned under
--pin-root, removes the iptables rules of pods enrolled in iptables mode, and
deletes the enrollment record. Stop the agent first: uninstall refuses while an
agent holds the pinned state.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd)
		},
	}
	cmd.Flags().StringVar(&o.pinRoot, "pin-root", o.pinRoot, "bpffs directory of the pinned state")
	cmd.Flags().StringVar(&o.stateDir, "state-dir", o.stateDir, "directory of the enrollment record")
	return cmd
}

func (o *uninstallOptions) run(ctx context.Context, cmd *cobra.Command) error {
	var errs []error
	err := loader.Uninstall(o.pinRoot)
	switch {
	case errors.Is(err, loader.ErrNotLoaded):
		fmt.Fprintf(cmd.OutOrStdout(), "no programs pinned under %s\n", o.pinRoot)
	case err != nil:
		return fmt.Errorf("uninstall: %w", err)
	default:
		fmt.Fprintf(cmd.OutOrStdout(), "removed programs and pins under %s\n", o.pinRoot)
	}
	stateFile := filepath.Join(o.stateDir, "enrollments.json")
	n, err := removeIPTables(ctx, stateFile)
	if err != nil {
		errs = append(errs, err)
	}
	if n > 0 {
		fmt.Fprintf(cmd.OutOrStdout(), "removed iptables rules of %d pods\n", n)
	}
	// The enrollment record, a stale admin socket (the agent is gone), and
	// the directory itself unless something else lives there or it is a
	// mount point (a container's view of the host's directory).
	for _, f := range []string{stateFile, filepath.Join(o.stateDir, stateSocket)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", f, err))
		}
	}
	switch err := os.Remove(o.stateDir); {
	case err == nil:
		fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", o.stateDir)
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.EBUSY):
	case errors.Is(err, syscall.ENOTEMPTY), errors.Is(err, syscall.EEXIST):
		fmt.Fprintf(cmd.OutOrStdout(), "left %s: it holds files that are not the agent's\n", o.stateDir)
	default:
		errs = append(errs, fmt.Errorf("remove %s: %w", o.stateDir, err))
	}
	return errors.Join(errs...)
}

// stateSocket is the admin socket's name in the state directory.
const stateSocket = "agent.sock"
