package ebpfcheck

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/healthcheck/kubecheck"
	"github.com/sluice-mesh/sluice/cli/install"
)

// The categories of the cluster-wide checks that come before the
// categories of each node.
const (
	CategoryAgents healthcheck.CategoryID = "sluice-agents"
	CategoryNodes  healthcheck.CategoryID = "node-kernels"
)

// IDs of the cluster-wide checks.
const (
	// CheckAgentPods fills State.AgentPods.
	CheckAgentPods healthcheck.CheckID = "agent-pods"
	// CheckNodeFacts fills State.NodeFacts.
	CheckNodeFacts healthcheck.CheckID = "node-facts"
	checkAgentPod  healthcheck.CheckID = "agent-pod"
)

// AgentPortName names the agent container's port that serves /status and
// /node-facts (as well as /metrics and the probes).
const AgentPortName = "admin"

// remoteAttemptTimeout bounds one call through the API server's pod proxy.
const remoteAttemptTimeout = 15 * time.Second

// AgentCategory is the category of the checks of the agent on node.
func AgentCategory(node string) healthcheck.CategoryID {
	return healthcheck.CategoryID("sluice-agent on " + node)
}

// ClusterOptions configure the cluster-wide eBPF checks.
type ClusterOptions struct {
	// Requires is the check that fills State.Cluster
	// (kubecheck.CheckKubeAPI).
	Requires healthcheck.CheckID
	// Namespace is the control plane's, as the user gave it (for hints).
	Namespace string
	// Wait is how long checks that may pass soon (an agent starting) keep
	// retrying. Zero tries once.
	Wait time.Duration
	// Probe says how NodeCategories reads the kernel facts of nodes
	// without a running agent.
	Probe ProbeOptions
}

// ClusterCategories returns the checks of the agents of every node: the
// agent DaemonSet's pods are listed, then each node's agent is checked in a
// category of its own (AgentCategory): its pod runs and is ready, its
// status can be read through the API server's pod proxy, and it reports a
// kernel of 5.10 or newer with cgroup v2, the kernel features it needs,
// its programs attached, its pins and maps.
func ClusterCategories(o ClusterOptions) []healthcheck.Category {
	return []healthcheck.Category{{ID: CategoryAgents, Checkers: []healthcheck.Checker{
		{
			ID:          CheckAgentPods,
			Description: "agent DaemonSet has pods",
			Hint: fmt.Sprintf("the agent runs as daemonset %s/%s on every Linux node: `kubectl -n %s describe daemonset %s` "+
				"says why it has no pods", o.Namespace, install.AgentDaemonSet, o.Namespace, install.AgentDaemonSet),
			Requires: []healthcheck.CheckID{o.Requires},
			Check:    listAgentPods,
			Detail:   func(s *healthcheck.State) string { return plural(len(s.AgentPods), "pod") },
		},
		{
			Description: "every node's agent is checked",
			Requires:    []healthcheck.CheckID{CheckAgentPods},
			Expand: func(s *healthcheck.State) []healthcheck.Checker {
				var out []healthcheck.Checker
				for _, p := range s.AgentPods {
					out = append(out, o.agentPodCheckers(s.Cluster, p)...)
				}
				return out
			},
		},
	}}}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// listAgentPods fills State.AgentPods with the agent DaemonSet's pods,
// ordered by node.
func listAgentPods(ctx context.Context, s *healthcheck.State) error {
	cl := s.Cluster
	pods, err := agentPods(ctx, cl)
	if err != nil {
		return err
	}
	if len(pods) == 0 {
		return fmt.Errorf("daemonset %s/%s has no pods", cl.Namespace, install.AgentDaemonSet)
	}
	s.AgentPods = pods
	return nil
}

// agentPods returns the agent DaemonSet's pods, ordered by node and name.
func agentPods(ctx context.Context, cl *healthcheck.Cluster) ([]corev1.Pod, error) {
	ds, err := cl.Client.AppsV1().DaemonSets(cl.Namespace).Get(ctx, install.AgentDaemonSet, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("no daemonset %s/%s: is Sluice installed in namespace %s?", cl.Namespace, install.AgentDaemonSet, cl.Namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("read daemonset %s/%s: %w", cl.Namespace, install.AgentDaemonSet, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("daemonset %s/%s: %w", cl.Namespace, install.AgentDaemonSet, err)
	}
	l, err := cl.Client.CoreV1().Pods(cl.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list the agent's pods: %w", err)
	}
	pods := l.Items
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].Spec.NodeName != pods[j].Spec.NodeName {
			return pods[i].Spec.NodeName < pods[j].Spec.NodeName
		}
		return pods[i].Name < pods[j].Name
	})
	return pods, nil
}

// agentPodCheckers are the checks of the agent of one pod, reported under
// its node's category.
func (o ClusterOptions) agentPodCheckers(cl *healthcheck.Cluster, p corev1.Pod) []healthcheck.Checker {
	node := p.Spec.NodeName
	if node == "" {
		node = p.Name + " (not scheduled)"
	}
	cat := AgentCategory(node)
	podReady := nodeID(checkAgentPod, node)
	ready := healthcheck.Checker{
		ID:          podReady,
		Category:    cat,
		Description: "agent pod is running and ready",
		Hint: fmt.Sprintf("`kubectl -n %s describe pod %s` says why it does not run or is not ready, and "+
			"`kubectl -n %s logs %s` what the agent says", p.Namespace, p.Name, p.Namespace, p.Name),
		RetryDeadline: o.Wait,
		Check: func(ctx context.Context, _ *healthcheck.State) error {
			got, err := cl.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("read pod %s/%s: %w", p.Namespace, p.Name, err)
			}
			if msg := kubecheck.PodProblem(got, true); msg != "" {
				return fmt.Errorf("pod %s/%s: %s", p.Namespace, p.Name, msg)
			}
			return nil
		},
		Detail: func(*healthcheck.State) string { return p.Name },
	}
	agent := agentTarget{
		node:     node,
		category: cat,
		source:   PodStatusSource(cl.Client, &p),
		hint: fmt.Sprintf("meshctl reads the agent's status through the API server's pod proxy from the agent's port %q "+
			"(on the node's network): the API server must reach the node on that port; `kubectl -n %s logs %s` says what "+
			"the agent does", AgentPortName, p.Namespace, p.Name),
		wait:     o.Wait,
		requires: []healthcheck.CheckID{podReady},
		pins:     expectedPins,
		kernel:   true,
	}
	return append([]healthcheck.Checker{ready}, agent.checkers()...)
}

// PodStatusSource reads the status of the agent of pod through the API
// server's pod proxy: GET /status on its port named admin.
func PodStatusSource(client kubernetes.Interface, pod *corev1.Pod) StatusSource {
	return func(ctx context.Context) (api.Status, error) {
		ctx, cancel := context.WithTimeout(ctx, remoteAttemptTimeout)
		defer cancel()
		b, err := GetFromAgent(ctx, client, pod, "/status")
		if err != nil {
			return api.Status{}, err
		}
		var st api.Status
		if err := json.Unmarshal(b, &st); err != nil {
			return api.Status{}, fmt.Errorf("decode the status of agent %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		return st, nil
	}
}

// GetFromAgent GETs path from the agent of pod, on its port named admin,
// through the API server's pod proxy
// (/api/v1/namespaces/<ns>/pods/<pod>:<port>/proxy/<path>).
func GetFromAgent(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, path string) ([]byte, error) {
	port, err := adminPort(pod)
	if err != nil {
		return nil, err
	}
	b, err := client.CoreV1().Pods(pod.Namespace).ProxyGet("", pod.Name, strconv.Itoa(int(port)), path, nil).DoRaw(ctx)
	if err != nil {
		return nil, kubecheck.ProxyError(fmt.Sprintf("GET %s of agent pod %s/%s:%d", path, pod.Namespace, pod.Name, port), err)
	}
	return b, nil
}

// adminPort is the number of pod's port named admin.
func adminPort(pod *corev1.Pod) (int32, error) {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == AgentPortName {
				return p.ContainerPort, nil
			}
		}
	}
	return 0, fmt.Errorf("agent pod %s/%s has no port named %q", pod.Namespace, pod.Name, AgentPortName)
}

// expectedPins checks, for an agent on another machine, that it reports a
// pin for each of its programs and maps, and a link for each program
// attached to the cgroup root: what the loader pins (the agent lists its
// pins from the bpffs when asked).
func expectedPins(st *api.Status) error {
	if err := reportsPins(st); err != nil {
		return err
	}
	have := map[string]bool{}
	for _, p := range st.Pins {
		have[p] = true
	}
	var want []string
	for _, p := range st.Programs {
		want = append(want, "progs/"+p.Name)
		if st.CgroupV2 != "" && p.AttachedTo == st.CgroupV2 {
			want = append(want, "links/"+p.Name)
		}
	}
	for _, m := range st.Maps {
		want = append(want, "maps/"+m.Name)
	}
	var missing []string
	for _, w := range want {
		if !have[w] {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("pins missing under %s (%d of %d):\n  %s", st.PinRoot, len(missing), len(want), strings.Join(missing, "\n  "))
	}
	return nil
}
