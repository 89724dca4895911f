package ebpfcheck

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/healthcheck/kubecheck"
	"github.com/sluice-mesh/sluice/cli/internal/checktest"
	"github.com/sluice-mesh/sluice/cli/internal/fakekube"
	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

func clusterOptions(c *fakekube.Cluster) ClusterOptions {
	return ClusterOptions{
		Requires:  kubecheck.CheckKubeAPI,
		Namespace: fakekube.Namespace,
		Probe: ProbeOptions{
			Image: func() (string, corev1.PullPolicy, error) {
				return "ghcr.io/sluice-mesh/agent:dev", corev1.PullIfNotPresent, nil
			},
			Poll: time.Millisecond,
			Logs: c.ProbeLogs,
		},
	}
}

// runCluster runs the Kubernetes API checks then cats, and returns the
// results of cats by checktest.Key.
func runCluster(t *testing.T, c *fakekube.Cluster, cats []healthcheck.Category) (map[string]healthcheck.Result, bool) {
	t.Helper()
	got, ok := checktest.Run(t, append([]healthcheck.Category{kubecheck.KubernetesAPI(kubecheck.Options{Connect: c.Connect})}, cats...))
	for key, r := range got {
		if r.Category == kubecheck.CategoryKubernetesAPI {
			delete(got, key)
		}
	}
	return got, ok
}

func healthyAgents() map[string]expect {
	pass := expect{outcome: healthcheck.OutcomeSuccess}
	w := map[string]expect{"sluice-agents: agent DaemonSet has pods": pass}
	for _, n := range fakekube.Nodes {
		for _, d := range []string{
			"agent pod is running and ready", "agent is reachable", "kernel is 5.10 or newer", "cgroup v2 is mounted",
			"kernel supports BPF_PROG_TYPE_SK_LOOKUP", "kernel supports attach type cgroup/connect4",
			"kernel supports bpf_get_netns_cookie in sk_msg", "programs are attached", "pins are present", "maps have room",
		} {
			w["sluice-agent on "+n+": "+d] = pass
		}
	}
	return w
}

func TestClusterAgents(t *testing.T) {
	const onB = "sluice-agent on node-b: "
	skipped := func(what string) expect {
		return expect{healthcheck.OutcomeSkipped, `not run: requires "` + what + `", which failed`}
	}
	agentChecks := []string{"kernel is 5.10 or newer", "cgroup v2 is mounted", "kernel features are supported",
		"programs are attached", "pins are present", "maps have room"}
	dropFeatures := func(w map[string]expect) {
		for k := range w {
			if strings.HasPrefix(k, onB+"kernel supports") {
				delete(w, k)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, c *fakekube.Cluster)
		wantOK bool
		want   func(w map[string]expect)
	}{
		{name: "healthy", wantOK: true, want: func(map[string]expect) {}},
		{
			name: "agent pod crash-looping",
			break_: func(t *testing.T, c *fakekube.Cluster) {
				pods := c.Client.CoreV1().Pods(fakekube.Namespace)
				p, _ := pods.Get(context.Background(), "sluice-agent-node-b", metav1.GetOptions{})
				p.Status.ContainerStatuses[0].Ready = false
				p.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
				if _, err := pods.UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				dropFeatures(w)
				w[onB+"agent pod is running and ready"] = expect{healthcheck.OutcomeError, "pod sluice/sluice-agent-node-b: container agent is waiting: CrashLoopBackOff"}
				w[onB+"agent is reachable"] = skipped("agent pod is running and ready")
				for _, d := range agentChecks {
					w[onB+d] = expect{healthcheck.OutcomeSkipped, "which was skipped"}
				}
			},
		},
		{
			name:   "status unreachable",
			break_: func(_ *testing.T, c *fakekube.Cluster) { delete(c.Pods, "sluice-agent-node-b:9995") },
			want: func(w map[string]expect) {
				dropFeatures(w)
				w[onB+"agent is reachable"] = expect{healthcheck.OutcomeError,
					"GET /status of agent pod sluice/sluice-agent-node-b:9995: Internal error occurred: error trying to reach service: dial tcp 10.0.0.1:9995: connect: connection refused"}
				for _, d := range agentChecks {
					w[onB+d] = skipped("agent is reachable")
				}
			},
		},
		{
			name: "old agent without /status",
			break_: func(_ *testing.T, c *fakekube.Cluster) {
				c.Pods["sluice-agent-node-b:9995"] = http.NotFoundHandler()
			},
			want: func(w map[string]expect) {
				dropFeatures(w)
				w[onB+"agent is reachable"] = expect{healthcheck.OutcomeError, "GET /status of agent pod sluice/sluice-agent-node-b:9995: the server could not find the requested resource"}
				for _, d := range agentChecks {
					w[onB+d] = skipped("agent is reachable")
				}
			},
		},
		{
			name: "old kernel, no cgroup v2, program detached, pin gone, map full",
			break_: func(_ *testing.T, c *fakekube.Cluster) {
				st := c.Agents["node-b"]
				st.Kernel, st.CgroupV2 = "5.4.0-150-generic", ""
				st.Programs[1].Attached = false
				st.Pins = st.Pins[1:]
				st.Maps[0].Entries = 1000
			},
			want: func(w map[string]expect) {
				w[onB+"kernel is 5.10 or newer"] = expect{healthcheck.OutcomeError, "kernel 5.4.0-150-generic is older than 5.10"}
				w[onB+"cgroup v2 is mounted"] = expect{healthcheck.OutcomeError, "no cgroup2 mount"}
				w[onB+"programs are attached"] = expect{healthcheck.OutcomeError, "programs not attached (1 of 2):\n  sluice_sk_msg (SkMsg/SkMsgVerdict on map sock_pairs)"}
				// With no cgroup root, no link is expected: only the pins of programs and maps.
				w[onB+"pins are present"] = expect{outcome: healthcheck.OutcomeSuccess}
				w[onB+"maps have room"] = expect{healthcheck.OutcomeError, "map pods is 97% full (1000/1024 entries)"}
			},
		},
		{
			name: "pins missing",
			break_: func(_ *testing.T, c *fakekube.Cluster) {
				st := c.Agents["node-b"]
				st.Pins = []string{"progs/sluice_connect4"}
			},
			want: func(w map[string]expect) {
				w[onB+"pins are present"] = expect{healthcheck.OutcomeError, "pins missing under /sys/fs/bpf/sluice (3 of 4):\n  links/sluice_connect4\n  progs/sluice_sk_msg\n  maps/pods"}
			},
		},
		{
			name:   "iptables mode",
			wantOK: true,
			break_: func(_ *testing.T, c *fakekube.Cluster) {
				*c.Agents["node-b"] = api.Status{Version: "dev", Mode: api.ModeIPTables, Kernel: "4.19.0", Enrollments: 3}
			},
			want: func(w map[string]expect) {
				dropFeatures(w)
				for _, d := range agentChecks {
					w[onB+d] = expect{healthcheck.OutcomeSkipped, "not run: the agent runs in iptables mode"}
				}
			},
		},
		{
			name: "no agent DaemonSet",
			break_: func(t *testing.T, c *fakekube.Cluster) {
				if err := c.Client.AppsV1().DaemonSets(fakekube.Namespace).Delete(context.Background(), "sluice-agent", metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				for k := range w {
					delete(w, k)
				}
				w["sluice-agents: agent DaemonSet has pods"] = expect{healthcheck.OutcomeError, "no daemonset sluice/sluice-agent: is Sluice installed in namespace sluice?"}
				w["sluice-agents: every node's agent is checked"] = skipped("agent DaemonSet has pods")
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakekube.Healthy(t)
			if tc.break_ != nil {
				tc.break_(t, c)
			}
			want := healthyAgents()
			tc.want(want)
			got, ok := runCluster(t, c, ClusterCategories(clusterOptions(c)))
			if ok != tc.wantOK {
				t.Errorf("run passed = %v, want %v", ok, tc.wantOK)
			}
			compare(t, got, want)
		})
	}
}

func TestClusterAgentDetails(t *testing.T) {
	c := fakekube.Healthy(t)
	got, _ := runCluster(t, c, ClusterCategories(clusterOptions(c)))
	for key, want := range map[string]string{
		"sluice-agents: agent DaemonSet has pods":                "2 pods",
		"sluice-agent on node-a: agent pod is running and ready": "sluice-agent-node-a",
		"sluice-agent on node-a: agent is reachable":             "dev ebpf mode",
		"sluice-agent on node-a: kernel is 5.10 or newer":        fakekube.Kernel,
		"sluice-agent on node-b: cgroup v2 is mounted":           "at /sys/fs/cgroup/unified",
	} {
		if d := got[key].Detail; d != want {
			t.Errorf("%s: detail %q, want %q", key, d, want)
		}
	}
}

func healthyNodes() map[string]expect {
	pass := expect{outcome: healthcheck.OutcomeSuccess}
	w := map[string]expect{"node-kernels: kernel facts are read from every node": pass}
	for _, n := range fakekube.Nodes {
		for _, d := range []string{"kernel facts are read", "kernel is 5.10 or newer", "kernel BTF is present", "BPF filesystem is mounted", "cgroup v2 is mounted"} {
			w["kernel on "+n+": "+d] = pass
		}
	}
	return w
}

func TestNodeFacts(t *testing.T) {
	const onB = "kernel on node-b: "
	skippedB := func(w map[string]expect) {
		for _, d := range []string{"kernel is 5.10 or newer", "kernel BTF is present", "BPF filesystem is mounted", "cgroup v2 is mounted"} {
			w[onB+d] = expect{healthcheck.OutcomeSkipped, `not run: requires "kernel facts are read", which failed`}
		}
	}
	for _, tc := range []struct {
		name       string
		installed  bool
		break_     func(t *testing.T, c *fakekube.Cluster, o *ClusterOptions)
		wantOK     bool
		want       func(w map[string]expect)
		wantProbes int
		wantDetail string
	}{
		{name: "probe pods", wantOK: true, wantProbes: 2, wantDetail: "2 nodes: 2 from probe pods"},
		{name: "agents", installed: true, wantOK: true, wantDetail: "2 nodes: 2 from agents"},
		{
			name: "agent without node-facts", installed: true, wantOK: true, wantProbes: 1, wantDetail: "2 nodes: 1 from agents, 1 from probe pods",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *ClusterOptions) {
				c.Pods["sluice-agent-node-b:9995"] = http.NotFoundHandler()
			},
		},
		{
			name: "old kernel without BTF, cgroup v1, no bpffs", wantProbes: 2, wantDetail: "2 nodes: 2 from probe pods",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *ClusterOptions) {
				c.Facts["node-b"] = (nodefacts.Host{ProcRoot: "/nonexistent", SysRoot: "/nonexistent",
					Uname: func() (string, error) { return "4.19.0-17-amd64", nil }}).Gather()
			},
			want: func(w map[string]expect) {
				w[onB+"kernel is 5.10 or newer"] = expect{healthcheck.OutcomeError, "kernel 4.19.0-17-amd64 is older than 5.10"}
				w[onB+"kernel BTF is present"] = expect{healthcheck.OutcomeError, "find kernel BTF: stat /nonexistent/kernel/btf/vmlinux"}
				w[onB+"BPF filesystem is mounted"] = expect{healthcheck.OutcomeError, "read mounts"}
				w[onB+"cgroup v2 is mounted"] = expect{healthcheck.OutcomeError, "read mounts"}
			},
		},
		{
			name: "probe fails", wantProbes: 2, wantDetail: "2 nodes: 1 from probe pods, 1 not read",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *ClusterOptions) {
				c.Probe = func(node string) (corev1.PodPhase, string) {
					if node == "node-b" {
						return corev1.PodFailed, `Error: unknown command "node-facts" for "sluice-agent"`
					}
					return corev1.PodSucceeded, `{"kernel":"6.1.0","btf":true,"cgroup2Mount":"/sys/fs/cgroup","bpffsMounted":true}`
				}
			},
			want: func(w map[string]expect) {
				w[onB+"kernel facts are read"] = expect{healthcheck.OutcomeError, `probe pod default/sluice-node-facts-`}
				skippedB(w)
			},
		},
		{
			name: "image not pulled", wantProbes: 2, wantDetail: "2 nodes: 2 not read",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *ClusterOptions) {
				c.Probe = func(string) (corev1.PodPhase, string) { return corev1.PodPending, "rpc error: not found" }
			},
			want: func(w map[string]expect) {
				for _, n := range []string{"node-a", "node-b"} {
					w["kernel on "+n+": kernel facts are read"] = expect{healthcheck.OutcomeError, "cannot start: ImagePullBackOff: rpc error: not found"}
				}
				skippedB(w)
				for _, d := range []string{"kernel is 5.10 or newer", "kernel BTF is present", "BPF filesystem is mounted", "cgroup v2 is mounted"} {
					w["kernel on node-a: "+d] = w[onB+d]
				}
			},
		},
		{
			name: "probe never ends", wantProbes: 2, wantDetail: "2 nodes: 1 from probe pods, 1 not read",
			break_: func(_ *testing.T, c *fakekube.Cluster, o *ClusterOptions) {
				o.Probe.Timeout = 50 * time.Millisecond
				c.Probe = func(node string) (corev1.PodPhase, string) {
					if node == "node-b" {
						return corev1.PodRunning, ""
					}
					return corev1.PodSucceeded, "log line\n" + `{"kernel":"6.1.0","btf":true,"cgroup2Mount":"/sys/fs/cgroup","bpffsMounted":true}` + "\n"
				}
			},
			want: func(w map[string]expect) {
				w[onB+"kernel facts are read"] = expect{healthcheck.OutcomeError, "did not finish within 50ms"}
				skippedB(w)
			},
		},
		{
			name: "node not ready", wantDetail: "2 nodes: 1 from probe pods, 1 not read", wantProbes: 1,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *ClusterOptions) {
				n, _ := c.Client.CoreV1().Nodes().Get(context.Background(), "node-b", metav1.GetOptions{})
				n.Status.Conditions[0].Status, n.Status.Conditions[0].Reason = corev1.ConditionUnknown, "NodeStatusUnknown"
				if _, err := c.Client.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w[onB+"kernel facts are read"] = expect{healthcheck.OutcomeError, "node is not ready: NodeStatusUnknown"}
				skippedB(w)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakekube.Empty(t)
			if tc.installed {
				c = fakekube.Healthy(t)
			}
			o := clusterOptions(c)
			if tc.break_ != nil {
				tc.break_(t, c, &o)
			}
			want := healthyNodes()
			if tc.want != nil {
				tc.want(want)
			}
			got, ok := runCluster(t, c, NodeCategories(o))
			if ok != tc.wantOK {
				t.Errorf("run passed = %v, want %v", ok, tc.wantOK)
			}
			compare(t, got, want)
			if d := got["node-kernels: kernel facts are read from every node"].Detail; d != tc.wantDetail {
				t.Errorf("detail %q, want %q", d, tc.wantDetail)
			}
			if len(c.Probes) != tc.wantProbes {
				t.Errorf("%d probe pods created, want %d", len(c.Probes), tc.wantProbes)
			}
			if !slices.Equal(slices.Sorted(slices.Values(c.Probes)), slices.Sorted(slices.Values(c.Deleted))) {
				t.Errorf("probe pods %v, deleted %v: every one must be deleted", c.Probes, c.Deleted)
			}
			left, err := c.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: ProbeLabel})
			if err != nil || len(left.Items) != 0 {
				t.Errorf("probe pods left: %v %v", left, err)
			}
		})
	}
}

func TestProbeImageError(t *testing.T) {
	c := fakekube.Empty(t)
	o := clusterOptions(c)
	calls := 0
	o.Probe.Image = func() (string, corev1.PullPolicy, error) {
		calls++
		return "", "", errTest
	}
	got, _ := runCluster(t, c, NodeCategories(o))
	if r := got["kernel on node-a: kernel facts are read"]; r.Outcome != healthcheck.OutcomeError || !strings.Contains(r.Err.Error(), errTest.Error()) {
		t.Errorf("facts read without an image: %s %v", r.Outcome, r.Err)
	}
	if calls != 1 || len(c.Probes) != 0 {
		t.Errorf("image asked %d times, %d probe pods; want once, none", calls, len(c.Probes))
	}
}

var errTest = errors.New("render the chart: boom")

func TestProbePod(t *testing.T) {
	p := probePod("default", "node-a", probeImage{"ghcr.io/sluice-mesh/agent:dev", corev1.PullIfNotPresent})
	ctr := p.Spec.Containers[0]
	if p.Spec.NodeName != "node-a" || p.Spec.RestartPolicy != corev1.RestartPolicyNever || p.Spec.HostPID || p.Spec.HostNetwork {
		t.Errorf("pod spec: %+v", p.Spec)
	}
	if got := strings.Join(ctr.Args, " "); got != "node-facts --proc-root=/host/proc --sys-root=/host/sys --mounts-of=1" {
		t.Errorf("args %q", got)
	}
	for _, m := range ctr.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("mount %s is writable", m.MountPath)
		}
	}
	for _, v := range p.Spec.Volumes {
		if v.HostPath == nil || (v.HostPath.Path != "/proc" && v.HostPath.Path != "/sys") {
			t.Errorf("volume %+v", v)
		}
	}
	sc := ctr.SecurityContext
	if sc == nil || sc.Privileged != nil || *sc.AllowPrivilegeEscalation || !*sc.RunAsNonRoot || len(sc.Capabilities.Drop) != 1 || len(sc.Capabilities.Add) != 0 {
		t.Errorf("security context %+v", sc)
	}
	if p.Annotations["sluice.io/inject"] != "disabled" || p.Labels[ProbeLabel] != "true" {
		t.Errorf("metadata %+v", p.ObjectMeta)
	}
}

func TestParseNodeFacts(t *testing.T) {
	f, err := ParseNodeFacts([]byte("warning: x\n{\"kernel\":\"5.10.0\",\"btf\":true}\n\n"))
	if err != nil || f.Kernel != "5.10.0" || !f.BTF {
		t.Errorf("ParseNodeFacts = %+v, %v", f, err)
	}
	for _, bad := range []string{"", "fake logs", "{not json\n"} {
		if _, err := ParseNodeFacts([]byte(bad)); err == nil {
			t.Errorf("ParseNodeFacts(%q) succeeded", bad)
		}
	}
}

// TestGetFromAgentPath checks, with a real client against a fake API
// server, the URL the agent's status is read from: the pod proxy of the
// agent pod's port named admin.
func TestGetFromAgentPath(t *testing.T) {
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.Path)
		if strings.HasSuffix(r.URL.Path, "/node-facts") {
			http.Error(w, "404 page not found", http.StatusNotFound)
			return
		}
		io.WriteString(w, `{"version":"v1","mode":"ebpf"}`)
	}))
	defer srv.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sluice-agent-x7k2p", Namespace: "sluice"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Ports: []corev1.ContainerPort{
			{Name: "metrics", ContainerPort: 1}, {Name: "admin", ContainerPort: 9995},
		}}}},
	}
	st, err := PodStatusSource(client, pod)(context.Background())
	if err != nil || st.Version != "v1" {
		t.Errorf("status = %+v, %v", st, err)
	}
	_, err = GetFromAgent(context.Background(), client, pod, "/node-facts")
	if err == nil || !strings.Contains(err.Error(), "GET /node-facts of agent pod sluice/sluice-agent-x7k2p:9995: the server could not find the requested resource") {
		t.Errorf("404: %v", err)
	}
	want := []string{"/api/v1/namespaces/sluice/pods/sluice-agent-x7k2p:9995/proxy/status", "/api/v1/namespaces/sluice/pods/sluice-agent-x7k2p:9995/proxy/node-facts"}
	if !slices.Equal(paths, want) {
		t.Errorf("paths %q, want %q", paths, want)
	}
	pod.Spec.Containers[0].Ports = nil
	if _, err := GetFromAgent(context.Background(), client, pod, "/status"); err == nil || !strings.Contains(err.Error(), `has no port named "admin"`) {
		t.Errorf("no admin port: %v", err)
	}
}
