package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sluice-mesh/sluice/test/cluster/addons"
	"github.com/sluice-mesh/sluice/test/cluster/build"
)

// OwnPrograms are the commands of this module the cluster runs.
var OwnPrograms = []string{
	"github.com/sluice-mesh/sluice/test/cluster/cmd/procri",
	"github.com/sluice-mesh/sluice/test/cluster/cmd/echo",
}

// Cluster is a running cluster.
type Cluster struct {
	cfg   Config
	l     layout
	nodes []node
	bins  build.Binaries
	log   *slog.Logger
}

// Kubeconfig is the admin kubeconfig's path: <Dir>/kubeconfig (user
// kubernetes-admin, group system:masters).
func (c *Cluster) Kubeconfig() string { return c.l.adminKubeconfig() }

// RESTConfig is the admin's client configuration.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", c.Kubeconfig(), err)
	}
	return cfg, nil
}

// Client is an admin clientset.
func (c *Cluster) Client() (kubernetes.Interface, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("clientset: %w", err)
	}
	return cs, nil
}

// NodeName is the (first) node's name.
func (c *Cluster) NodeName() string { return c.nodes[0].name }

// Binaries are the programs the cluster runs.
func (c *Cluster) Binaries() build.Binaries { return c.bins }

// Dir is the cluster's state root.
func (c *Cluster) Dir() string { return c.l.dir }

// MapImage adds m to the running runtime's image table (replacing an entry
// with the same image); procri reads the table again when it changes.
func (c *Cluster) MapImage(m ImageMapping) error {
	return mapImage(c.l, m)
}

// MapImage adds m to the image table of the cluster whose state root cfg
// names, which Up must have made; procri reads the table again when it
// changes.
func MapImage(cfg Config, m ImageMapping) error {
	l := layout{cfg.dir()}
	if _, err := os.Stat(l.images()); err != nil {
		return fmt.Errorf("map image %s: no cluster's image table (run cluster up first): %w", m.Image, err)
	}
	return mapImage(l, m)
}

func mapImage(l layout, m ImageMapping) error {
	table, err := readImages(l.images())
	if err != nil {
		return err
	}
	return writeImages(l.images(), append(table, m))
}

func (cfg Config) dir() string {
	if cfg.Dir != "" {
		return cfg.Dir
	}
	return DefaultDir()
}

func (cfg Config) out() io.Writer {
	if cfg.Out != nil {
		return cfg.Out
	}
	return os.Stderr
}

func (cfg Config) log() *slog.Logger {
	if cfg.Log != nil {
		return cfg.Log.With("component", "cluster")
	}
	return slog.New(slog.DiscardHandler)
}

// Up starts the cluster, or what of it is not running, and returns once the
// node and CoreDNS are Ready. A daemon already running with the same
// program, flags and configuration files, and healthy, is left alone, so
// Up on a healthy cluster changes nothing. It prints one line per step with
// the time it took.
func Up(ctx context.Context, cfg Config) (*Cluster, error) {
	return up(ctx, cfg, true)
}

// up is Up; without withNodes it stops once the control plane runs (etcd,
// the API server, the controller manager and the scheduler).
func up(ctx context.Context, cfg Config, withNodes bool) (*Cluster, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("cluster up: must run as root (it starts the kubelet, creates links and cgroups)")
	}
	if _, err := os.Stat(etcdPath); err != nil {
		return nil, fmt.Errorf("cluster up: etcd not found at %s: install Debian's etcd-server (apt-get install -y etcd-server)", etcdPath)
	}
	for _, prog := range []string{"iptables", "ip6tables", "mount"} {
		if _, err := exec.LookPath(prog); err != nil {
			return nil, fmt.Errorf("cluster up: %s not found: install the packages of test/cluster/deps.txt", prog)
		}
	}
	c := &Cluster{cfg: cfg, l: layout{dir: cfg.dir()}, nodes: clusterNodes(), log: cfg.log()}
	// One cluster per machine: ports, pods' cgroups, chains and links are
	// the machine's.
	others, err := foreign(c.l.dir, []string{"kube-apiserver", "kubelet", "procri", "kube-proxy"})
	if err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	if len(others) > 0 {
		return nil, fmt.Errorf("cluster up: another cluster (another state directory than %s) runs on this machine; bring it down first (cluster down --dir <its dir>):\n  %s",
			c.l.dir, strings.Join(others, "\n  "))
	}
	out := cfg.out()
	begin := time.Now()
	step := func(what string, f func() (string, error)) error {
		start := time.Now()
		note, err := f()
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s %s (%.1fs)\n", what, note, time.Since(start).Seconds())
		return nil
	}

	if cfg.Cache.Out == nil {
		cfg.Cache.Out = out
	}
	if cfg.Cache.Log == nil {
		cfg.Cache.Log = c.log
	}
	var crts certs
	err = step("programs", func() (string, error) {
		var err error
		own := OwnPrograms
		if !withNodes {
			own = nil
		}
		c.bins, err = cfg.Cache.All(ctx, own...)
		return "built", err
	})
	if err == nil {
		err = step("certificates and kubeconfigs", func() (string, error) {
			if err := os.MkdirAll(c.l.dir, 0o755); err != nil {
				return "", fmt.Errorf("create %s: %w", c.l.dir, err)
			}
			var err error
			crts, err = setupPKI(c.l, c.nodes)
			return "ready", err
		})
	}
	if err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	admin, err := c.RESTConfig()
	if err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	// A daemon no pid file records would hold the ports of the one Up
	// starts.
	if err := killStrays(ctx, c.l, c.log); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	ds := daemons{l: c.l, log: c.log}
	ensure := func(d *daemon) (string, error) {
		reused, err := ds.ensure(ctx, d)
		if reused {
			return "running (reused)", err
		}
		return "ready", err
	}
	k := c.bins.Kubernetes
	if err := step("etcd", func() (string, error) { return ensure(etcdDaemon(c.l)) }); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	if err := step("kube-apiserver", func() (string, error) {
		return ensure(apiserverDaemon(c.l, k["kube-apiserver"], crts, c.nodes[0], admin))
	}); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	if err := parallel(
		func() error {
			return step("kube-controller-manager", func() (string, error) {
				return ensure(controllerManagerDaemon(c.l, k["kube-controller-manager"], crts))
			})
		},
		func() error {
			return step("kube-scheduler", func() (string, error) { return ensure(schedulerDaemon(c.l, k["kube-scheduler"])) })
		},
	); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	if !withNodes {
		fmt.Fprintf(out, "control plane up in %.1fs; kubeconfig %s\n", time.Since(begin).Seconds(), c.Kubeconfig())
		return c, nil
	}
	if err := step("image table", func() (string, error) {
		// Entries mapped while the cluster ran (MapImage) stay, unless the
		// defaults or cfg.Images map the same image.
		table, err := readImages(c.l.images())
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("image table unreadable: rewriting it", "err", err)
			table = nil
		}
		table = append(append(table, DefaultImages(c.bins)...), cfg.Images...)
		return "written", writeImages(c.l.images(), table)
	}); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	for _, n := range c.nodes {
		if err := c.upNode(ctx, ds, n, crts, step, ensure); err != nil {
			return nil, fmt.Errorf("cluster up: %w", err)
		}
	}
	if err := step("addons", func() (string, error) {
		objs, err := addons.Objects()
		if err != nil {
			return "", err
		}
		return "applied", addons.Apply(ctx, admin, fieldManager, objs)
	}); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	if err := step("CoreDNS", func() (string, error) { return "Ready", c.waitCoreDNS(ctx) }); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	if err := step("cluster DNS", func() (string, error) { return "answers", waitDNS(ctx) }); err != nil {
		return nil, fmt.Errorf("cluster up: %w", err)
	}
	fmt.Fprintf(out, "cluster up in %.1fs; kubeconfig %s\n", time.Since(begin).Seconds(), c.Kubeconfig())
	return c, nil
}

// upNode brings up node n: its link, the kernel settings the pods need,
// its runtime, kubelet and kube-proxy, and waits until the Node is Ready.
func (c *Cluster) upNode(ctx context.Context, ds daemons, n node, crts certs,
	step func(string, func() (string, error)) error, ensure func(*daemon) (string, error)) error {
	k := c.bins.Kubernetes
	steps := []struct {
		what string
		f    func() (string, error)
	}{
		{"node " + n.name + " network", func() (string, error) {
			if err := n.setupLink(); err != nil {
				return "", err
			}
			if err := c.setKernelSettings(); err != nil {
				return "", err
			}
			return "ready", writeNodeConfig(c.l, n, crts)
		}},
		{"procri" + n.suffix(), func() (string, error) { return ensure(procriDaemon(c.l, n, c.bins.Own["procri"], c.bins.CNIDir)) }},
		{"kubelet" + n.suffix(), func() (string, error) { return ensure(kubeletDaemon(c.l, n, k["kubelet"])) }},
		{"kube-proxy" + n.suffix(), func() (string, error) { return ensure(kubeProxyDaemon(c.l, n, k["kube-proxy"])) }},
		{"node " + n.name, func() (string, error) { return "Ready", c.waitNodeReady(ctx, n) }},
	}
	for _, s := range steps {
		if err := step(s.what, s.f); err != nil {
			return err
		}
	}
	return nil
}

// parallel runs fs at once and returns their errors joined.
func parallel(fs ...func() error) error {
	errs := make([]error, len(fs))
	var wg sync.WaitGroup
	for i, f := range fs {
		wg.Go(func() { errs[i] = f() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitNodeReady waits until node n is registered and Ready.
func (c *Cluster) waitNodeReady(ctx context.Context, n node) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	var why string
	err = poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			why = err.Error()
			return false, nil
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				why = fmt.Sprintf("Ready=%s: %s: %s", cond.Status, cond.Reason, cond.Message)
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		why = "no Ready condition yet"
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s is not Ready (%s): %w; last lines of %s:\n%s", n.name, why, err,
			c.l.logFile("kubelet"+n.suffix()), tail(c.l.logFile("kubelet"+n.suffix()), 30))
	}
	return nil
}

// waitCoreDNS waits until every CoreDNS replica is Ready.
func (c *Cluster) waitCoreDNS(ctx context.Context) error {
	cs, err := c.Client()
	if err != nil {
		return err
	}
	var why string
	err = poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
		if err != nil {
			why = err.Error()
			return false, nil
		}
		if len(pods.Items) == 0 {
			why = "no CoreDNS pod yet"
			return false, nil
		}
		for _, p := range pods.Items {
			if !podReady(&p) {
				why = describePod(ctx, cs, &p)
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("CoreDNS is not Ready (%s): %w", why, err)
	}
	return nil
}

// waitDNS waits until the kube-dns Service answers for the kubernetes
// Service: kube-proxy forwards the Service address to CoreDNS (a Ready
// CoreDNS pod is not yet a rule of kube-proxy's), and CoreDNS knows the
// cluster's Services.
func waitDNS(ctx context.Context) error {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(DNSServiceIP.String(), "53"))
	}}
	name := "kubernetes.default.svc." + ClusterDomain
	var why error
	err := poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		addrs, err := r.LookupHost(ctx, name)
		if err != nil {
			why = err
			return false, nil
		}
		why = fmt.Errorf("%s is %v", name, addrs)
		return slices.Contains(addrs, KubernetesServiceIP.String()), nil
	})
	if err != nil {
		return fmt.Errorf("cluster DNS at %s does not resolve %s to %s (%v): %w", DNSServiceIP, name, KubernetesServiceIP, why, err)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// describePod says why a pod is not Ready: its phase, its containers'
// states and its latest events.
func describePod(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) string {
	s := fmt.Sprintf("pod %s/%s %s", p.Namespace, p.Name, p.Status.Phase)
	for _, st := range p.Status.ContainerStatuses {
		switch {
		case st.State.Waiting != nil:
			s += fmt.Sprintf("; %s waiting: %s %s", st.Name, st.State.Waiting.Reason, st.State.Waiting.Message)
		case st.State.Terminated != nil:
			s += fmt.Sprintf("; %s terminated: %s (exit %d) %s", st.Name, st.State.Terminated.Reason, st.State.Terminated.ExitCode, st.State.Terminated.Message)
		case st.State.Running != nil:
			s += fmt.Sprintf("; %s running, ready=%t (restarts %d)", st.Name, st.Ready, st.RestartCount)
		}
	}
	evs, err := cs.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.uid=" + string(p.UID)})
	if err == nil {
		items := evs.Items
		if len(items) > 5 {
			items = items[len(items)-5:]
		}
		for _, e := range items {
			s += fmt.Sprintf("; event %s %s: %s", e.Type, e.Reason, e.Message)
		}
	}
	return s
}

// poll calls f every 250ms until it returns true or an error, or timeout
// passes (a hang guard).
func poll(ctx context.Context, timeout time.Duration, f func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := f(ctx)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %s: %w", timeout, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
