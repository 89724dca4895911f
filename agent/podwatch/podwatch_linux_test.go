package podwatch_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/podns"
	"github.com/sluice-mesh/sluice/agent/podwatch"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/netns"
)

const nodeName = "node-a"

// On the real kernel, with a real agent: a netns pod whose sluice-proxy runs
// in a cgroup laid out like the kubelet's is enrolled through the admin API
// when its Pod appears, steered (the proxy answers the agent's probe and
// reports ready), and unenrolled when the Pod is deleted. A pod deleted
// while no watcher ran is unenrolled by the next one; an enrollment made by
// hand is left alone throughout.
func TestRealPodLifecycle(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireCommand(t, "nsenter")
	netns.RequireCommand(t, "sleep")
	node := netns.NewNode(t)
	agent := agenttest.Start(t, node, agenttest.Options{})
	ctx := t.Context()

	web := node.AddPod(t, "web", netns.PodOptions{})
	webUID := uuid.NewUUID()
	proxy := startProxy(t, node, web, webUID)

	db := node.AddPod(t, "db", netns.PodOptions{})
	dbUID := uuid.NewUUID()
	startInKubeletCgroup(t, node, dbUID, "besteffort", db.Command(65534, "sleep", "1000")).start(t)

	manual := node.AddPod(t, "manual", netns.PodOptions{})
	hand := agent.Enroll(t, manual, api.PodConfig{})

	client := fake.NewClientset()
	stop := startWatcher(t, client, agent, node)
	for _, p := range []struct {
		pod *netns.Pod
		uid types.UID
	}{{web, webUID}, {db, dbUID}} {
		if _, err := client.CoreV1().Pods("default").Create(ctx, podObject(p.pod, p.uid), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	en := waitEnrollment(t, agent, "web steered", func(e api.Enrollment) bool { return e.Pod.UID == string(webUID) && e.Steered })
	want, err := podns.Open(web.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	want.Close()
	if en.NetNSCookie != want.Cookie {
		t.Errorf("enrolled cookie %d, pod web's namespace has %d", en.NetNSCookie, want.Cookie)
	}
	if wantIPs := []netip.Addr{web.IPv4(), web.IPv6()}; !slices.Equal(en.Addresses, wantIPs) {
		t.Errorf("enrolled addresses %v, want the pod's %v", en.Addresses, wantIPs)
	}
	if en.Pod.Namespace != "default" || en.Pod.Name != "web" || en.Config.ProbePort != api.DefaultProbePort {
		t.Errorf("enrollment %+v", en)
	}
	waitReady(t, web, proxy)
	dbEn := waitEnrollment(t, agent, "db enrolled", func(e api.Enrollment) bool { return e.Pod.UID == string(dbUID) })

	// Deleted while the watcher runs: unenrolled, its sk_lookup link gone.
	if err := client.CoreV1().Pods("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, agent, en.NetNSCookie)
	st, err := agent.Client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(st.Pins, fmt.Sprintf("links/netns/%d", en.NetNSCookie)) {
		t.Errorf("sk_lookup link of the deleted pod still pinned: %v", st.Pins)
	}

	// Deleted while no watcher runs: the next one unenrolls it at start.
	stop()
	if err := client.CoreV1().Pods("default").Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	startWatcher(t, client, agent, node)
	waitGone(t, agent, dbEn.NetNSCookie)

	ens, err := agent.Client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ens) != 1 || ens[0].NetNSCookie != hand.NetNSCookie {
		t.Errorf("enrollments %+v, want only the one made by hand (cookie %d)", ens, hand.NetNSCookie)
	}
}

// The agent itself, run with --node-name and a kubeconfig, watches its
// node's pods through the API server: it enrolls and steers a meshed pod
// when it appears and counts it in its metrics, and after a restart it
// unenrolls a pod deleted while it was down.
func TestAgentWatchesPods(t *testing.T) {
	netns.RequireRoot(t)
	netns.RequireCommand(t, "nsenter")
	node := netns.NewNode(t)
	apiserver := startFakeAPIServer(t)
	agent := agenttest.Start(t, node, agenttest.Options{Args: []string{
		"--node-name", nodeName, "--kubeconfig", apiserver.kubeconfig(t),
		"--pod-cgroup-root", node.CgroupPath(), "--pod-resync", "2s",
	}})
	web := node.AddPod(t, "web", netns.PodOptions{})
	uid := uuid.NewUUID()
	proxy := startProxy(t, node, web, uid)

	apiserver.create(podObject(web, uid))
	en := waitEnrollment(t, agent, "web steered", func(e api.Enrollment) bool { return e.Pod.UID == string(uid) && e.Steered })
	waitReady(t, web, proxy)
	if m := agent.Metrics(t); !strings.Contains(m, `sluice_agent_pod_enrollments_total{outcome="enrolled"} 1`) ||
		!strings.Contains(m, "sluice_agent_pod_reconciles_total") {
		t.Errorf("agent metrics lack the pod watcher's enrollment:\n%s", m)
	}

	agent.Kill9()
	apiserver.delete("web")
	agent.Restart(t)
	waitGone(t, agent, en.NetNSCookie)
	if m := agent.Metrics(t); !strings.Contains(m, `sluice_agent_pod_unenrollments_total{reason="deleted"} 1`) {
		t.Errorf("agent metrics lack the unenrollment:\n%s", m)
	}
}

// startProxy runs sluice-proxy in pod as uid 2102, in the kubelet-style
// cgroup of the pod with uid, with no discovery: it answers the agent's
// steering probe and reports ready once it has.
func startProxy(t *testing.T, node *netns.Node, pod *netns.Pod, uid types.UID) *kubeletProcess {
	t.Helper()
	proxy := startInKubeletCgroup(t, node, uid, "burstable", pod.Command(api.DefaultProxyUID, netns.BuildTool(t, "./proxy/cmd/sluice-proxy")))
	proxy.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"SLUICE_PROXY_POD_NAMESPACE=default",
		"SLUICE_PROXY_LOG_LEVEL=debug",
		"SLUICE_PROXY_LOG_FORMAT=text",
	}
	proxy.start(t)
	return proxy
}

// podObject is the Pod a kubelet would report for pod: meshed, its proxy
// running as a native sidecar, its IPs those of the netns pod.
func podObject(pod *netns.Pod, uid types.UID) *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   "default",
			Name:        pod.Name(),
			UID:         uid,
			Labels:      map[string]string{meshmeta.LabelControlPlaneNS: meshmeta.DefaultNamespace},
			Annotations: map[string]string{meshmeta.AnnotationMode: meshmeta.ModeEBPF},
		},
		Spec: corev1.PodSpec{
			NodeName:       nodeName,
			InitContainers: []corev1.Container{{Name: meshmeta.ProxyContainerName, RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app"}},
		},
		Status: corev1.PodStatus{
			Phase:  corev1.PodPending,
			PodIP:  pod.IPv4().String(),
			PodIPs: []corev1.PodIP{{IP: pod.IPv4().String()}, {IP: pod.IPv6().String()}},
			InitContainerStatuses: []corev1.ContainerStatus{{
				Name:  meshmeta.ProxyContainerName,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
			}},
		},
	}
}

// startWatcher runs a watcher on the node, enrolling through the agent's
// admin API; the returned func (also run at cleanup) stops it.
func startWatcher(t *testing.T, client *fake.Clientset, agent *agenttest.Agent, node *netns.Node) func() {
	t.Helper()
	logs := &lockedBuffer{}
	w, err := podwatch.New(podwatch.Config{
		Client: client, NodeName: nodeName, Enroller: agent.Client, Mode: api.ModeEBPF,
		CgroupRoots: []string{node.CgroupPath()},
		Logger:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		RetryMin:    50 * time.Millisecond, RetryMax: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watcher: %v", err)
		}
	})
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("watcher log:\n%s", logs.String())
		}
	})
	return stop
}

// kubeletProcess is a process started into a cgroup laid out as the
// kubelet's cgroupfs driver lays it out, under the node's cgroup:
// <node>/kubepods/<qos>/pod<uid>/<container>.
type kubeletProcess struct {
	cmd  *exec.Cmd
	dirs []string // created cgroups, outermost first
	log  *lockedBuffer
	exit chan struct{}
}

func startInKubeletCgroup(t *testing.T, node *netns.Node, uid types.UID, qos string, cmd *exec.Cmd) *kubeletProcess {
	t.Helper()
	kp := &kubeletProcess{cmd: cmd, log: &lockedBuffer{}, exit: make(chan struct{})}
	// Cleanups run in reverse: processes die before their cgroups go.
	t.Cleanup(func() {
		for i := len(kp.dirs) - 1; i >= 0; i-- {
			if err := rmdirCgroup(kp.dirs[i]); err != nil {
				t.Errorf("remove cgroup: %v", err)
			}
		}
	})
	dir := node.CgroupPath()
	for _, d := range []string{"kubepods", qos, "pod" + string(uid), "c0ffee"} {
		dir = filepath.Join(dir, d)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("create cgroup: %v", err)
		} else if err == nil {
			kp.dirs = append(kp.dirs, dir)
		}
	}
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cg.Close() })
	cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	cmd.Stdout, cmd.Stderr = kp.log, kp.log
	return kp
}

func (kp *kubeletProcess) start(t *testing.T) {
	t.Helper()
	if err := kp.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", kp.cmd.Path, err)
	}
	go func() { _ = kp.cmd.Wait(); close(kp.exit) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-kp.cmd.Process.Pid, syscall.SIGKILL)
		<-kp.exit
		if t.Failed() {
			t.Logf("output of %v:\n%s", kp.cmd.Args, kp.log.String())
		}
	})
}

// rmdirCgroup removes an empty cgroup, waiting while exiting processes
// keep it busy.
func rmdirCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("rmdir %s: %w", dir, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitEnrollment(t *testing.T, agent *agenttest.Agent, what string, match func(api.Enrollment) bool) api.Enrollment {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ens, err := agent.Client.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ens {
			if match(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 60s; enrollments %+v\nagent:\n%s", what, ens, agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitGone(t *testing.T, agent *agenttest.Agent, cookie uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ens, err := agent.Client.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(ens, func(e api.Enrollment) bool { return e.NetNSCookie == cookie }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("netns %d still enrolled after 30s: %+v", cookie, ens)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitReady waits until the proxy reports ready, which it does only once
// the agent's steering probe reached it.
func waitReady(t *testing.T, pod *netns.Pod, proxy *kubeletProcess) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := fmt.Sprintf("http://%s/ready", netip.AddrPortFrom(pod.IPv4(), api.DefaultAdminPort))
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not 200 after 30s (%v)\nproxy:\n%s", url, err, proxy.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
