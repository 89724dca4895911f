package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// testConfig is a configuration with a state root of the test's own and
// Down (then a check that nothing is left) in the test's cleanup.
func testConfig(t *testing.T) (Config, *testenv.Buffer) {
	t.Helper()
	testenv.RequireRoot(t)
	if _, err := os.Stat(etcdPath); err != nil {
		testenv.Missing(t, "test needs Debian's etcd-server (%s): %v", etcdPath, err)
	}
	testenv.RequireCommand(t, "iptables")
	lockCtx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // hang guard: another package's cluster test
	defer cancel()
	unlock, err := LockMachine(lockCtx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	out := &testenv.Buffer{}
	cfg := Config{
		Dir: filepath.Join(t.TempDir(), "state"),
		Out: out,
		Log: slog.New(slog.NewTextHandler(out, nil)),
	}
	cfg.Cache.ModuleDir = filepath.Dir(wd)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := Down(ctx, cfg); err != nil {
			t.Errorf("Down: %v", err)
		}
		left, err := Leftovers(cfg)
		if err != nil {
			t.Errorf("Leftovers: %v", err)
		}
		if len(left) > 0 {
			t.Errorf("Down left:\n  %s", strings.Join(left, "\n  "))
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("progress:\n%s", out)
		}
	})
	return cfg, out
}

// TestControlPlane brings up etcd, the API server, the controller manager
// and the scheduler, checks them with client-go, and checks that a second
// start reuses them.
func TestControlPlane(t *testing.T) {
	cfg, out := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // hang guard (a cold build)
	defer cancel()

	c, err := up(ctx, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.34.4" {
		t.Errorf("API server version %s, want v1.34.4", v.GitVersion)
	}
	// The controller manager runs: it creates the default ServiceAccount of
	// every namespace, and the root CA ConfigMap.
	err = poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		_, err1 := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		_, err2 := cs.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err1 == nil && err2 == nil, nil
	})
	if err != nil {
		t.Fatalf("controller manager did not create the default ServiceAccount and kube-root-ca.crt: %v", err)
	}
	svc, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.ClusterIP != KubernetesServiceIP.String() {
		t.Errorf("kubernetes Service at %s, want %s", svc.Spec.ClusterIP, KubernetesServiceIP)
	}
	eps, err := cs.DiscoveryV1().EndpointSlices("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(eps.Endpoints) != 1 || eps.Endpoints[0].Addresses[0] != "10.99.0.1" {
		t.Errorf("kubernetes EndpointSlice endpoints %+v, want the node address 10.99.0.1", eps.Endpoints)
	}

	before := map[string]daemonState{}
	ds := daemons{l: c.l, log: c.log}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		st, ok := ds.running(name)
		if !ok {
			t.Fatalf("%s not running after Up", name)
		}
		before[name] = st
	}
	if _, err := up(ctx, cfg, false); err != nil {
		t.Fatal(err)
	}
	for name, st := range before {
		if now, ok := ds.running(name); !ok || now.PID != st.PID {
			t.Errorf("second Up restarted %s (pid %d, now %d)", name, st.PID, now.PID)
		}
	}
	if !strings.Contains(out.String(), "etcd running (reused)") {
		t.Errorf("second Up did not say it reused etcd:\n%s", out)
	}
}

// TestDownAfterCrash kills the control plane as a crash would, removes its
// pid files, and plants what a crashed node leaves (a pod process in the
// kubepods cgroups, a kubelet tmpfs mount, kube-proxy's and the CNI
// plugins' iptables chains, the bridge and the node link, a
// /var/log/containers link): Leftovers names each, and Down removes them
// all.
func TestDownAfterCrash(t *testing.T) {
	cfg, _ := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute) // hang guard
	defer cancel()
	c, err := up(ctx, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	ds := daemons{l: c.l, log: c.log}
	var pids []int
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		st, ok := ds.running(name)
		if !ok {
			t.Fatalf("%s not running", name)
		}
		pids = append(pids, st.PID)
		syscall.Kill(st.PID, syscall.SIGKILL)
	}
	// The daemons are children of this test process: reaped by Up's
	// goroutines. Start them again without pid files, as strays.
	if err := os.RemoveAll(c.l.run()); err != nil {
		t.Fatal(err)
	}
	if _, err := up(ctx, cfg, false); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(c.l.run()); err != nil {
		t.Fatal(err)
	}

	n := c.nodes[0]
	if err := n.setupLink(); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge}}); err != nil {
		t.Fatal(err)
	}
	m, err := cgroup.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	podCgroup := fmt.Sprintf("/kubepods/besteffort/pod-crashtest-%d", os.Getpid())
	if err := m.Create(podCgroup, cgroup.Resources{}); err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "1000")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	go sleep.Wait()
	if err := m.Add(podCgroup, sleep.Process.Pid); err != nil {
		t.Fatal(err)
	}
	volume := c.l.path("kubelet", "pods", "uid", "volumes", "kubernetes.io~projected", "token")
	if err := os.MkdirAll(volume, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", volume, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	chain := fmt.Sprintf("KUBE-CRASHTEST-%d", os.Getpid())
	cniChain := fmt.Sprintf("CNI-crashtest-%d", os.Getpid())
	comment := fmt.Sprintf("name: %q id: \"crashtest\"", CNINetwork)
	for _, args := range [][]string{
		{"iptables", "-t", "nat", "-N", chain},
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.96.255.254/32", "-j", chain},
		{"ip6tables", "-t", "filter", "-N", chain},
		{"iptables", "-t", "nat", "-N", cniChain},
		{"iptables", "-t", "nat", "-A", cniChain, "-d", "10.244.0.0/24", "-m", "comment", "--comment", comment, "-j", "ACCEPT"},
		{"iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.244.0.250/32", "-m", "comment", "--comment", comment, "-j", cniChain},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	logLink := fmt.Sprintf("/var/log/containers/crashtest-%d.log", os.Getpid())
	os.MkdirAll("/var/log/containers", 0o755)
	if err := os.Symlink(c.l.path("pod-logs", "x", "0.log"), logLink); err != nil {
		t.Fatal(err)
	}

	left, err := Leftovers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(left, "\n")
	for _, want := range []string{
		"(etcd)", "(kube-apiserver)", "(kube-controller)", "(kube-scheduler)", // strays, no pid files
		fmt.Sprintf("process %d (sleep, in /kubepods)", sleep.Process.Pid),
		"mount " + volume,
		"iptables chain " + chain + " (table nat)", "ip6tables chain " + chain + " (table filter)",
		"iptables chain " + cniChain + " (table nat)", "rule in POSTROUTING",
		"link " + n.bridge, "link " + n.name,
		"cgroup /sys/fs/cgroup/memory/kubepods", "cgroup /sys/fs/cgroup/unified/kubepods",
		"log link " + logLink,
		"dir " + c.l.dir,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("Leftovers does not report %q:\n%s", want, all)
		}
	}
	if err := Down(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	left, err = Leftovers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("Down left:\n  %s", strings.Join(left, "\n  "))
	}
	for _, pid := range append(pids, sleep.Process.Pid) {
		if _, state, err := procStat(pid); err == nil && state != 'Z' {
			t.Errorf("process %d still runs", pid)
		}
	}
}

// TestUp brings the whole cluster up: the node and CoreDNS are Ready, a
// pod resolves the kubernetes Service by name through CoreDNS and reaches
// the API server through kube-proxy, its output is readable as the
// kubelet's logs, a second Up reuses every daemon, and Down leaves nothing.
// Then it brings the cluster up again, starts a Deployment, kills every
// daemon with SIGKILL and removes their pid files, as a crash of the node
// would leave it: Down (in the cleanup) still leaves nothing.
func TestUp(t *testing.T) {
	cfg, out := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute) // hang guard (a cold build)
	defer cancel()
	c, err := Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	node, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, cond := range node.Status.Conditions {
		ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
	}
	if !ready || node.Status.NodeInfo.KubeletVersion != "v1.34.4" || !strings.HasPrefix(node.Status.NodeInfo.ContainerRuntimeVersion, "procri://") {
		t.Errorf("node %s: ready %t, kubelet %s, runtime %s; want Ready, v1.34.4, procri", node.Name, ready,
			node.Status.NodeInfo.KubeletVersion, node.Status.NodeInfo.ContainerRuntimeVersion)
	}
	dns, err := cs.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil {
		t.Fatal(err)
	}
	if len(dns.Items) != 1 || !podReady(&dns.Items[0]) {
		t.Fatalf("CoreDNS pods %d, want 1 Ready", len(dns.Items))
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "reach-apiserver", Namespace: "default"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name:  "curl",
				Image: "curlimages/curl:8.10.1",
				Args:  []string{"-sS", "--max-time", "10", "--cacert", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "https://kubernetes.default.svc.cluster.local/version"},
			}},
		},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var phase corev1.PodPhase
	err = poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		p, err := cs.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	if err != nil {
		t.Fatalf("pod did not finish: %v", err)
	}
	logs, err := cs.CoreV1().Pods("default").GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if phase != corev1.PodSucceeded || !strings.Contains(string(logs), `"gitVersion": "v1.34.4"`) {
		t.Errorf("pod %s; its output (the API server's /version through the kubernetes Service, by DNS name):\n%s", phase, logs)
	}

	before := Status(cfg)
	start := len(out.String())
	if _, err := Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	after := Status(cfg)
	for i, d := range before {
		if !d.Running || !after[i].Running || after[i].PID != d.PID {
			t.Errorf("%s: pid %d (running %t), after a second Up pid %d (running %t); want the same process", d.Name, d.PID, d.Running, after[i].PID, after[i].Running)
		}
	}
	t.Logf("second Up:\n%s", out.String()[start:])

	if err := Down(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if left, err := Leftovers(cfg); err != nil || len(left) > 0 {
		t.Fatalf("Down left (err %v):\n  %s", err, strings.Join(left, "\n  "))
	}

	// A crash with pods running.
	if c, err = Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if cs, err = c.Client(); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "crash"}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "crash", Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "nginx", Image: "nginx:1.27",
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(80)}}, PeriodSeconds: 1},
				}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = poll(ctx, 2*time.Minute, func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments("default").Get(ctx, "crash", metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas == 2, err
	})
	if err != nil {
		t.Fatalf("Deployment not ready: %v", err)
	}
	for _, d := range Status(cfg) {
		if !d.Running || d.PID <= 0 {
			t.Fatalf("%s not running", d.Name)
		}
		if err := syscall.Kill(d.PID, syscall.SIGKILL); err != nil {
			t.Errorf("kill %s: %v", d.Name, err)
		}
	}
	if err := os.RemoveAll(c.l.run()); err != nil {
		t.Fatal(err)
	}
	left, err := Leftovers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"(nginx, in /kubepods)", "mount " + c.l.path("kubelet"), "(table nat): -s 10.244.0.", "link sluice0",
		"log link /var/log/containers/crash-", "file /var/lib/kubelet/device-plugins/kubelet.sock"} {
		if !strings.Contains(strings.Join(left, "\n"), want) {
			t.Errorf("after the crash, Leftovers does not report %q:\n%s", want, strings.Join(left, "\n"))
		}
	}
}

// TestAnotherClusterIsLeftAlone runs a stand-in for another cluster's
// kubelet (another state root) with a pod process in the kubepods cgroups
// and a KUBE- chain: Up refuses to start beside it, and Down and Leftovers
// leave its pods, chains and cgroups alone.
func TestAnotherClusterIsLeftAlone(t *testing.T) {
	cfg, _ := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // hang guard
	defer cancel()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	kubelet := exec.Command(sleep, "1000")
	kubelet.Args[0] = "/elsewhere/kubelet" // a kubelet of another state root
	if err := kubelet.Start(); err != nil {
		t.Fatal(err)
	}
	kubeletDone := make(chan struct{})
	go func() { kubelet.Wait(); close(kubeletDone) }()
	t.Cleanup(func() {
		// Before the Down of testConfig's cleanup, which must not see this
		// stand-in any more: wait until it is gone, not only signalled.
		kubelet.Process.Kill()
		<-kubeletDone
	})

	m, err := cgroup.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	podCgroup := fmt.Sprintf("/kubepods/besteffort/pod-othertest-%d", os.Getpid())
	if err := m.Create(podCgroup, cgroup.Resources{}); err != nil {
		t.Fatal(err)
	}
	pod := exec.Command(sleep, "1000")
	if err := pod.Start(); err != nil {
		t.Fatal(err)
	}
	podDone := make(chan struct{})
	go func() { pod.Wait(); close(podDone) }()
	t.Cleanup(func() {
		// A cluster of another test run may be up too: this test's pod
		// cgroup goes whatever Down does.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		pod.Process.Kill()
		<-podDone
		m.Kill(ctx, podCgroup)
		m.Remove(podCgroup)
	})
	if err := m.Add(podCgroup, pod.Process.Pid); err != nil {
		t.Fatal(err)
	}
	chain := fmt.Sprintf("KUBE-OTHERTEST-%d", os.Getpid())
	if out, err := exec.Command("iptables", "-t", "filter", "-N", chain).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("iptables", "-t", "filter", "-X", chain).Run() })

	_, err = Up(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "another cluster") || !strings.Contains(err.Error(), fmt.Sprint(kubelet.Process.Pid)) {
		t.Fatalf("Up beside another cluster's kubelet: %v; want a refusal naming its process", err)
	}
	if err := Down(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if _, state, err := procStat(pod.Process.Pid); err != nil || state == 'Z' {
		t.Error("Down killed another cluster's pod")
	}
	if out, err := exec.Command("iptables", "-t", "filter", "-S", chain).CombinedOutput(); err != nil {
		t.Errorf("Down removed another cluster's chain %s: %s", chain, out)
	}
	left, err := Leftovers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("Leftovers lists another cluster's things:\n  %s", strings.Join(left, "\n  "))
	}
}
