package podwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/enroll"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// watchFixture runs a Watcher over a fake clientset, a fakeHost and a
// fakeEnroller.
type watchFixture struct {
	t      *testing.T
	host   *fakeHost
	client *fake.Clientset
	en     *fakeEnroller
	reg    *prometheus.Registry
	logs   *syncBuffer
	mode   api.Mode
	resync time.Duration
	stop   func()
}

func newWatchFixture(t *testing.T) *watchFixture {
	h := newFakeHost(t)
	return &watchFixture{
		t: t, host: h, client: fake.NewClientset(), en: newFakeEnroller(h.proc),
		reg: prometheus.NewRegistry(), logs: &syncBuffer{}, mode: api.ModeEBPF, resync: time.Hour,
	}
}

// start runs the watcher and waits for its first reconcile, after which
// the informer has synced and events arrive in order.
func (f *watchFixture) start() {
	f.t.Helper()
	w, err := New(Config{
		Client: f.client, NodeName: testNode, Enroller: f.en, Mode: f.mode,
		CgroupRoots: f.host.roots(), ProcRoot: f.host.proc, NetNSCookie: fakeCookie,
		Logger:     slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: f.reg, Resync: f.resync, RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	f.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("Run: %v", err)
		}
	})
	stop := f.stop
	f.t.Cleanup(func() {
		stop()
		if f.t.Failed() {
			f.t.Logf("watcher log:\n%s", f.logs.String())
		}
	})
	f.eventually("the first reconcile", func() bool { return f.metric("sluice_agent_pod_reconciles_total", "") >= 1 })
}

func (f *watchFixture) create(p *corev1.Pod) {
	f.t.Helper()
	if _, err := f.client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *watchFixture) update(name string, mod func(*corev1.Pod)) {
	f.t.Helper()
	pods := f.client.CoreV1().Pods("default")
	p, err := pods.Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	mod(p)
	if _, err := pods.Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *watchFixture) delete(name string) {
	f.t.Helper()
	if err := f.client.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// runningPod gives the pod of uid processes in netns ino (pid and pid+1)
// in its besteffort cgroup under the v2 root, and creates it.
func (f *watchFixture) runningPod(p *corev1.Pod, pid int, ino uint64) {
	f.t.Helper()
	f.host.process(pid, ino)
	f.host.process(pid+1, ino)
	f.host.cgroup(f.host.v2, "kubepods/besteffort/pod"+string(p.UID)+"/proxy", pid, pid+1)
	f.create(p)
}

// enrolled waits until the pod named name is enrolled and returns it.
func (f *watchFixture) enrolled(name string) api.Enrollment {
	f.t.Helper()
	var en api.Enrollment
	f.eventually("pod "+name+" enrolled", func() bool {
		var ok bool
		en, ok = f.en.byPod(name)
		return ok
	})
	return en
}

// unenrolled waits until the pod named name has no enrollment.
func (f *watchFixture) unenrolled(name string) {
	f.t.Helper()
	f.eventually("pod "+name+" unenrolled", func() bool {
		_, ok := f.en.byPod(name)
		return !ok
	})
}

// barrier creates a pod that is enrolled at once and waits for it: every
// event queued before it has been handled by then (one worker, FIFO).
func (f *watchFixture) barrier(name string, pid int, ino uint64) {
	f.t.Helper()
	p := testPod(name, fmt.Sprintf("00000000-0000-0000-0000-%012d", pid), func(p *corev1.Pod) {
		ip := fmt.Sprintf("10.244.1.%d", pid%250)
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	})
	f.runningPod(p, pid, ino)
	f.enrolled(name)
}

func (f *watchFixture) eventually(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s\nlog:\n%s", what, f.logs.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// metric returns the value of the series name{label} ("k=v" or "").
func (f *watchFixture) metric(name, label string) float64 {
	f.t.Helper()
	mfs, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || hasLabel(m, label) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return -1
}

func hasLabel(m *dto.Metric, kv string) bool {
	k, v, _ := strings.Cut(kv, "=")
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A pod is enrolled once its proxy runs and its processes are visible,
// whichever comes last, with its name, UID, IPs, one of its processes and
// the configuration of its annotations.
func TestEnrollsWhenProxyRunsAndProcessesAppear(t *testing.T) {
	f := newWatchFixture(t)
	f.start()
	web := testPod("web", string(testUID), proxyWaiting,
		annotate(meshmeta.AnnotationSkipOutboundPorts, "5432"),
		annotate(meshmeta.AnnotationSkipSubnets, "10.96.0.0/12"))
	f.create(web)
	f.barrier("barrier1", 900, 4026532900)
	if _, ok := f.en.byPod("web"); ok || f.en.enrollCalls("web") != 0 {
		t.Fatalf("pod enrolled before its proxy started")
	}
	if got := f.metric("sluice_agent_pods_pending", ""); got != 0 {
		t.Errorf("pods pending before the proxy started: %v, want 0", got)
	}

	// The proxy runs, but the runtime has not put the processes in place.
	f.update("web", func(p *corev1.Pod) {
		p.Status.InitContainerStatuses[0].State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	})
	f.eventually("the pod pending", func() bool { return f.metric("sluice_agent_pods_pending", "") == 1 })
	if f.en.enrollCalls("web") != 0 {
		t.Fatalf("enrolled without a process")
	}

	f.host.process(4242, 4026532111)
	f.host.cgroup(f.host.v2, "kubepods/besteffort/pod"+string(testUID)+"/proxy", 4242)
	en := f.enrolled("web")
	if en.NetNSCookie != 4026532111 || en.NetNS != "/proc/4242/ns/net" {
		t.Errorf("enrolled netns %s (cookie %d), want pid 4242's (4026532111)", en.NetNS, en.NetNSCookie)
	}
	if en.Pod != (api.PodRef{Namespace: "default", Name: "web", UID: string(testUID)}) {
		t.Errorf("pod ref %+v", en.Pod)
	}
	if want := []netip.Addr{netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00:10:244::7")}; fmt.Sprint(en.Addresses) != fmt.Sprint(want) {
		t.Errorf("addresses %v, want %v", en.Addresses, want)
	}
	c := en.Config
	if c.ProxyUID != 2102 || c.ProbePort != api.DefaultProbePort || fmt.Sprint(c.SkipOutboundPorts) != "[5432]" || fmt.Sprint(c.SkipSubnets) != "[10.96.0.0/12]" {
		t.Errorf("config %+v", c)
	}
	f.eventually("nothing pending", func() bool { return f.metric("sluice_agent_pods_pending", "") == 0 })
	if got := f.metric("sluice_agent_pod_enrollments_total", "outcome=enrolled"); got != 2 {
		t.Errorf("enrollments_total{outcome=enrolled} = %v, want 2 (web and the barrier)", got)
	}
}

// Pods whose processes exist before the pod object reaches the watcher are
// enrolled at once, in either cgroup driver's layout and in a v1 hierarchy.
func TestEnrollsExistingProcesses(t *testing.T) {
	const sysUID = "3f2a9c1e_5b7d_4e8f_9a0b_1c2d3e4f5a6b"
	for _, tc := range []struct{ name, rel string }{
		{"cgroupfs v2", "kubepods/burstable/pod" + string(testUID) + "/c"},
		{"systemd v2", "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + sysUID + ".slice/cri-containerd-c.scope"},
		{"cgroupfs v1 only", "v1:kubepods/pod" + string(testUID) + "/c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newWatchFixture(t)
			f.start()
			root, rel := f.host.v2, tc.rel
			if r, ok := strings.CutPrefix(rel, "v1:"); ok {
				root, rel = f.host.v1, r
			}
			f.host.process(500, 4026532500)
			f.host.cgroup(root, rel, 500)
			f.create(testPod("web", string(testUID)))
			if en := f.enrolled("web"); en.NetNSCookie != 4026532500 {
				t.Errorf("enrolled cookie %d, want 4026532500", en.NetNSCookie)
			}
		})
	}
}

// A pod is unenrolled when it is deleted, finishes, loses its label or is
// switched to iptables mode.
func TestUnenrolls(t *testing.T) {
	cases := []struct {
		name   string
		change func(f *watchFixture)
		reason string
	}{
		{"deleted", func(f *watchFixture) { f.delete("web") }, ReasonDeleted},
		{"succeeded", func(f *watchFixture) { f.update("web", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }) }, ReasonFinished},
		{"failed", func(f *watchFixture) { f.update("web", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }) }, ReasonFinished},
		{"label removed", func(f *watchFixture) {
			f.update("web", func(p *corev1.Pod) { delete(p.Labels, meshmeta.LabelControlPlaneNS) })
		}, ReasonUnmeshed},
		{"switched to iptables", func(f *watchFixture) {
			f.update("web", func(p *corev1.Pod) { p.Annotations[meshmeta.AnnotationMode] = meshmeta.ModeIPTables })
		}, ReasonUnmeshed},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			f := newWatchFixture(t)
			f.start()
			f.runningPod(testPod("web", string(testUID)), 500, 4026532500)
			f.enrolled("web")
			// Terminating is not enough: the proxy still carries traffic.
			now := metav1.Now()
			f.update("web", func(p *corev1.Pod) { p.DeletionTimestamp = &now })
			f.barrier("barrier1", 900, 4026532900)
			if _, ok := f.en.byPod("web"); !ok {
				t.Fatalf("unenrolled while terminating")
			}
			tc.change(f)
			f.unenrolled("web")
			if got := f.metric("sluice_agent_pod_unenrollments_total", "reason="+tc.reason); got != 1 {
				t.Errorf("unenrollments_total{reason=%s} = %v, want 1", tc.reason, got)
			}
			if _, ok := f.en.byPod("barrier1"); !ok {
				t.Errorf("another pod was unenrolled too")
			}
		})
	}
}

// Pods that are not the agent's to steer are never enrolled; those that
// ask for something it cannot give are logged once with the pod and, for a
// bad annotation, the annotation.
func TestLeavesAlone(t *testing.T) {
	cases := []struct {
		name  string
		mode  api.Mode
		pod   *corev1.Pod
		logs  []string // in the watcher's log, "" for no warning
		rejet bool     // counted as a rejected enrollment
	}{
		{"not meshed", api.ModeEBPF, testPod("p", string(testUID), func(p *corev1.Pod) { delete(p.Labels, meshmeta.LabelControlPlaneNS) }), nil, false},
		{"iptables pod", api.ModeEBPF, testPod("p", string(testUID), annotate(meshmeta.AnnotationMode, meshmeta.ModeIPTables)), nil, false},
		{"iptables pod, iptables agent", api.ModeIPTables, testPod("p", string(testUID), annotate(meshmeta.AnnotationMode, meshmeta.ModeIPTables)), nil, false},
		{"ebpf pod, iptables agent", api.ModeIPTables, testPod("p", string(testUID)), []string{"pod=default/p", "agent runs in iptables mode"}, false},
		{"host network", api.ModeEBPF, testPod("p", string(testUID), func(p *corev1.Pod) { p.Spec.HostNetwork = true }), []string{"pod=default/p", "host network"}, false},
		{"another node", api.ModeEBPF, testPod("p", string(testUID), func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }), nil, false},
		{"unknown mode", api.ModeEBPF, testPod("p", string(testUID), annotate(meshmeta.AnnotationMode, "nftables")), []string{"pod=default/p", "sluice.io/interception-mode"}, false},
		{"bad skip-inbound-ports", api.ModeEBPF, testPod("p", string(testUID), annotate(meshmeta.AnnotationSkipInboundPorts, "22,http")),
			[]string{"pod=default/p", "annotation=config.sluice.io/skip-inbound-ports", `value=22,http`}, true},
		{"skip-inbound-ports holding the proxy's port", api.ModeEBPF, testPod("p", string(testUID), annotate(meshmeta.AnnotationSkipInboundPorts, "4143")),
			[]string{"pod=default/p", "annotation=config.sluice.io/skip-inbound-ports", "inbound port 4143"}, true},
		{"bad skip-subnets", api.ModeEBPF, testPod("p", string(testUID), annotate(meshmeta.AnnotationSkipSubnets, "10.0.0.0/8,everything")),
			[]string{"pod=default/p", "annotation=config.sluice.io/skip-subnets"}, true},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			f := newWatchFixture(t)
			f.mode = tc.mode
			f.start()
			f.runningPod(tc.pod, 500, 4026532500)
			// The pod changes again: still not enrolled, and not logged twice.
			f.update("p", func(p *corev1.Pod) { p.Labels["touched"] = "yes" })
			if tc.mode == api.ModeEBPF {
				f.barrier("barrier1", 900, 4026532900)
			} else {
				// An iptables-mode agent enrolls nothing: wait for a pod
				// it warns about instead.
				f.runningPod(testPod("barrier1", "00000000-0000-0000-0000-000000000900", func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "10.244.1.9", nil }), 900, 4026532900)
				f.eventually("the barrier's warning", func() bool { return strings.Contains(f.logs.String(), "pod=default/barrier1") })
			}
			if n := f.en.enrollCalls("p"); n != 0 {
				t.Errorf("%d enroll requests for the pod, want none", n)
			}
			logs := f.logs.String()
			var warnings []string
			for _, l := range strings.Split(logs, "\n") {
				if strings.Contains(l, "level=WARN") && strings.Contains(l, "pod=default/p ") {
					warnings = append(warnings, l)
				}
			}
			if len(tc.logs) == 0 && len(warnings) > 0 {
				t.Errorf("unexpected warnings: %q", warnings)
			}
			if len(tc.logs) > 0 {
				if len(warnings) != 1 {
					t.Fatalf("%d warnings about the pod, want 1: %q", len(warnings), warnings)
				}
				for _, want := range tc.logs {
					if !strings.Contains(warnings[0], want) {
						t.Errorf("warning %q lacks %q", warnings[0], want)
					}
				}
			}
			want := 0.0
			if tc.rejet {
				want = 1
			}
			if got := f.metric("sluice_agent_pod_enrollments_total", "outcome=rejected"); got != want {
				t.Errorf("enrollments_total{outcome=rejected} = %v, want %v", got, want)
			}
		})
	}
}

// A recreated sandbox is a new network namespace: the old enrollment goes
// and the new namespace is enrolled.
func TestSandboxRecreated(t *testing.T) {
	f := newWatchFixture(t)
	f.start()
	f.runningPod(testPod("web", string(testUID)), 500, 4026532500)
	if en := f.enrolled("web"); en.NetNSCookie != 4026532500 {
		t.Fatalf("enrolled cookie %d", en.NetNSCookie)
	}
	// The kubelet kills the pod's processes and starts new ones in a new
	// sandbox, with the same IP; the status shows the restarted proxy.
	f.host.exit(500)
	f.host.exit(501)
	f.host.process(700, 4026532700)
	f.host.cgroup(f.host.v2, "kubepods/besteffort/pod"+string(testUID)+"/proxy", 700)
	f.update("web", func(p *corev1.Pod) { p.Status.InitContainerStatuses[0].RestartCount = 1 })
	f.eventually("the new namespace enrolled", func() bool {
		en, ok := f.en.byPod("web")
		return ok && en.NetNSCookie == 4026532700
	})
	ens, _ := f.en.List(context.Background())
	if len(ens) != 1 {
		t.Errorf("enrollments %+v, want only the new namespace's", ens)
	}
	if got := f.metric("sluice_agent_pod_unenrollments_total", "reason="+ReasonSandbox); got != 1 {
		t.Errorf("unenrollments_total{reason=sandbox_recreated} = %v, want 1", got)
	}
}

// A pod deleted and created again under the same name is a new pod: the
// old one's enrollment goes even if the delete was never seen.
func TestReplacedPod(t *testing.T) {
	f := newWatchFixture(t)
	f.start()
	f.runningPod(testPod("db-0", string(testUID)), 500, 4026532500)
	f.enrolled("db-0")
	f.stop()
	f.delete("db-0")
	const newUID = "99999999-0000-0000-0000-000000000001"
	f.runningPod(testPod("db-0", newUID), 600, 4026532600)
	f.reg = prometheus.NewRegistry()
	f.start()
	f.eventually("the new pod enrolled", func() bool {
		en, ok := f.en.byPod("db-0")
		return ok && en.Pod.UID == newUID && en.NetNSCookie == 4026532600
	})
	if ens, _ := f.en.List(context.Background()); len(ens) != 1 {
		t.Errorf("enrollments %+v, want only the new pod's", ens)
	}
}

// After a restart the watcher removes what went stale while it was away,
// enrolls what it missed, keeps what is right, and never touches an
// enrollment made by hand.
func TestReconcileAfterRestart(t *testing.T) {
	f := newWatchFixture(t)
	const (
		uidKept    = "00000000-0000-0000-0000-00000000000a"
		uidGone    = "00000000-0000-0000-0000-00000000000b"
		uidUnmesh  = "00000000-0000-0000-0000-00000000000c"
		uidMissed  = "00000000-0000-0000-0000-00000000000d"
		uidHandNS  = "00000000-0000-0000-0000-00000000000e"
		uidOtherNd = "00000000-0000-0000-0000-00000000000f"
	)
	ip := func(s string) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = s, []corev1.PodIP{{IP: s}} }
	}
	ref := func(name, uid string) api.PodRef { return api.PodRef{Namespace: "default", Name: name, UID: uid} }
	pre := []api.Enrollment{
		{NetNSCookie: 4026532001, NetNS: "/proc/101/ns/net", Pod: ref("kept", uidKept), Addresses: []netip.Addr{netip.MustParseAddr("10.244.0.1")}},
		{NetNSCookie: 4026532002, NetNS: "/proc/102/ns/net", Pod: ref("gone", uidGone)},
		{NetNSCookie: 4026532003, NetNS: "/proc/103/ns/net", Pod: ref("unmeshed", uidUnmesh)},
		{NetNSCookie: 4026532006, NetNS: "/proc/106/ns/net", Pod: ref("moved", uidOtherNd)},
		// By hand: one naming a pod that does not exist, one holding the
		// namespace of a meshed pod, one naming nothing.
		{NetNSCookie: 4026532007, NetNS: "/run/netns/x", Pod: api.PodRef{Namespace: "default", Name: "gone"}},
		{NetNSCookie: 4026532005, NetNS: "/run/netns/y", Pod: api.PodRef{Namespace: "default", Name: "handns"}},
		{NetNSCookie: 4026532008, NetNS: "/run/netns/z"},
	}
	f.en = newFakeEnroller(f.host.proc, pre...)
	f.runningPod(testPod("kept", uidKept, ip("10.244.0.1")), 110, 4026532001)
	f.runningPod(testPod("unmeshed", uidUnmesh, ip("10.244.0.3"), func(p *corev1.Pod) { delete(p.Labels, meshmeta.LabelControlPlaneNS) }), 130, 4026532003)
	f.runningPod(testPod("missed", uidMissed, ip("10.244.0.4")), 140, 4026532004)
	f.runningPod(testPod("handns", uidHandNS, ip("10.244.0.5")), 150, 4026532005)
	f.runningPod(testPod("moved", uidOtherNd, ip("10.244.0.6"), func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }), 160, 4026532006)

	f.start()
	f.enrolled("missed")
	f.eventually("stale enrollments removed", func() bool {
		ens, _ := f.en.List(context.Background())
		for _, e := range ens {
			if e.Pod.UID == uidGone || e.Pod.UID == uidUnmesh || e.Pod.UID == uidOtherNd {
				return false
			}
		}
		return true
	})
	f.eventually("the hand-made enrollment of a meshed pod noted", func() bool {
		return strings.Contains(f.logs.String(), "enrolled by hand")
	})
	ens, _ := f.en.List(context.Background())
	var cookies []uint64
	for _, e := range ens {
		cookies = append(cookies, e.NetNSCookie)
	}
	if want := []uint64{4026532001, 4026532004, 4026532005, 4026532007, 4026532008}; fmt.Sprint(cookies) != fmt.Sprint(want) {
		t.Errorf("enrollments %v, want %v (kept, missed, and the three made by hand)", cookies, want)
	}
	for _, name := range []string{"kept", "handns"} {
		if n := f.en.enrollCalls(name); n != 0 {
			t.Errorf("%d enroll requests for %s, want none", n, name)
		}
	}
	if got := f.metric("sluice_agent_pod_unenrollments_total", "reason="+ReasonDeleted); got != 2 {
		t.Errorf("unenrollments_total{reason=deleted} = %v, want 2 (gone, moved)", got)
	}
	if got := f.metric("sluice_agent_pod_unenrollments_total", "reason="+ReasonUnmeshed); got != 1 {
		t.Errorf("unenrollments_total{reason=unmeshed} = %v, want 1", got)
	}
}

// A failed enrollment is retried with backoff.
func TestRetriesFailedEnrollment(t *testing.T) {
	f := newWatchFixture(t)
	f.en.failOnce(fmt.Errorf("%w: the pods map is full (1 pods)", enroll.ErrFull))
	f.start()
	f.runningPod(testPod("web", string(testUID)), 500, 4026532500)
	f.enrolled("web")
	if got := f.metric("sluice_agent_pod_enrollments_total", "outcome=failed"); got != 1 {
		t.Errorf("enrollments_total{outcome=failed} = %v, want 1", got)
	}
	if !strings.Contains(f.logs.String(), "map is full") {
		t.Errorf("the failure is not logged")
	}
}

// Every Resync the watcher checks again: an enrollment lost behind its
// back (no pod event tells) is made again.
func TestResyncRestoresLostEnrollment(t *testing.T) {
	f := newWatchFixture(t)
	f.resync = 20 * time.Millisecond
	f.start()
	f.runningPod(testPod("web", string(testUID)), 500, 4026532500)
	en := f.enrolled("web")
	f.en.remove(en.NetNSCookie)
	f.enrolled("web")
	if n := f.en.enrollCalls("web"); n != 2 {
		t.Errorf("%d enroll requests, want 2", n)
	}
	if got := f.metric("sluice_agent_pod_reconciles_total", ""); got < 2 {
		t.Errorf("reconciles_total %v, want periodic runs", got)
	}
}

func TestNewRefusesIncompleteConfig(t *testing.T) {
	h := newFakeHost(t)
	ok := Config{Client: fake.NewClientset(), NodeName: testNode, Enroller: newFakeEnroller(h.proc), CgroupRoots: h.roots()}
	cases := []struct {
		name   string
		mod    func(*Config)
		errHas string
	}{
		{"no client", func(c *Config) { c.Client = nil }, "no Kubernetes client"},
		{"no node", func(c *Config) { c.NodeName = "" }, "no node name"},
		{"no enroller", func(c *Config) { c.Enroller = nil }, "no enroller"},
		{"bad mode", func(c *Config) { c.Mode = "nftables" }, "unknown mode"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			c := ok
			tc.mod(&c)
			if _, err := New(c); err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("New: %v, want an error saying %q", err, tc.errHas)
			}
		})
	}
	reg := prometheus.NewRegistry()
	c := ok
	c.Registerer = reg
	if _, err := New(c); err != nil {
		t.Fatal(err)
	}
	if _, err := New(c); err == nil || !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		t.Errorf("second watcher on one registry: %v, want AlreadyRegisteredError", err)
	}
}
