package ebpfcheck

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/healthcheck/kubecheck"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

// Defaults of ProbeOptions.
const (
	DefaultProbeNamespace = metav1.NamespaceDefault
	DefaultProbeTimeout   = 2 * time.Minute
	defaultProbePoll      = time.Second
	// probeParallel bounds how many nodes are asked at once.
	probeParallel = 8
	// ProbeLabel marks the probe pods.
	ProbeLabel = "sluice.io/node-facts"
	// probeContainer is the probe pod's container.
	probeContainer = "node-facts"
)

// ProbeOptions say how the kernel facts of a node without a running agent
// are read: a pod on the node runs the agent's image with
// `sluice-agent node-facts`, the node's /proc and /sys mounted read-only,
// and meshctl reads the JSON it prints from the pod's log, then deletes it.
type ProbeOptions struct {
	// Namespace of the probe pods; default DefaultProbeNamespace.
	Namespace string
	// Image returns the agent image and its pull policy; it is called once,
	// and only if a probe pod is needed.
	Image func() (string, corev1.PullPolicy, error)
	// Timeout bounds each probe pod's run, from creation to log; default
	// DefaultProbeTimeout.
	Timeout time.Duration
	// Poll is how often the probe pod is looked at; default one second.
	Poll time.Duration
	// Logs reads a finished probe pod's log; nil reads it with the pods/log
	// API.
	Logs func(ctx context.Context, pod *corev1.Pod) ([]byte, error)
}

// NodeCategory is the category of the pre-install checks of node's kernel.
func NodeCategory(node string) healthcheck.CategoryID {
	return healthcheck.CategoryID("kernel on " + node)
}

// NodeCategories returns the pre-install checks of every Linux node's
// kernel: its facts are read (from its agent when one runs there, else
// with a probe pod), then each node gets a category of its own
// (NodeCategory) checking them as the local kernel checks do.
func NodeCategories(o ClusterOptions) []healthcheck.Category {
	image := sync.OnceValues(func() (probeImage, error) {
		if o.Probe.Image == nil {
			return probeImage{}, errors.New("no agent image to probe nodes with")
		}
		name, pull, err := o.Probe.Image()
		return probeImage{name, pull}, err
	})
	return []healthcheck.Category{{ID: CategoryNodes, Checkers: []healthcheck.Checker{
		{
			ID:          CheckNodeFacts,
			Description: "kernel facts are read from every node",
			Hint: "meshctl lists the nodes and reads each node's kernel facts from its agent or from a pod it runs on " +
				"the node: it needs to list nodes, and to create, read the log of and delete pods in namespace " + o.probeNamespace(),
			Requires: []healthcheck.CheckID{o.Requires},
			Check: func(ctx context.Context, s *healthcheck.State) error {
				return o.gatherNodeFacts(ctx, s, image)
			},
			Detail: func(s *healthcheck.State) string { return summarizeSources(s.NodeFacts) },
		},
		{
			Description: "every node's kernel is checked",
			Requires:    []healthcheck.CheckID{CheckNodeFacts},
			Expand: func(s *healthcheck.State) []healthcheck.Checker {
				nodes := make([]string, 0, len(s.NodeFacts))
				for n := range s.NodeFacts {
					nodes = append(nodes, n)
				}
				sort.Strings(nodes)
				var out []healthcheck.Checker
				for _, n := range nodes {
					out = append(out, o.nodeCheckers(n)...)
				}
				return out
			},
		},
	}}}
}

type probeImage struct {
	name string
	pull corev1.PullPolicy
}

func (o ClusterOptions) probeNamespace() string {
	if o.Probe.Namespace != "" {
		return o.Probe.Namespace
	}
	return DefaultProbeNamespace
}

// nodeCheckers are the checks of one node's facts.
func (o ClusterOptions) nodeCheckers(node string) []healthcheck.Checker {
	cat := NodeCategory(node)
	read := nodeID(CheckNodeFacts, node)
	out := []healthcheck.Checker{{
		ID:          read,
		Description: "kernel facts are read",
		Hint: fmt.Sprintf("meshctl reads a node's facts from its agent (port %q, through the API server's pod proxy) or "+
			"runs `sluice-agent node-facts` in a pod on it (namespace %s, with the agent's image: --agent-image "+
			"overrides it); the error says which failed", AgentPortName, o.probeNamespace()),
		Check:  func(_ context.Context, s *healthcheck.State) error { return s.NodeFacts[node].Err },
		Detail: func(s *healthcheck.State) string { return "from " + s.NodeFacts[node].Source },
	}}
	facts := func(s *healthcheck.State) nodefacts.Facts { return s.NodeFacts[node].Facts }
	out = append(out, KernelCheckers(node, []healthcheck.CheckID{read}, facts)...)
	for i := range out {
		out[i].Category = cat
	}
	return out
}

// summarizeSources says how many nodes' facts came from where.
func summarizeSources(facts map[string]healthcheck.NodeFacts) string {
	agents, probes, failed := 0, 0, 0
	for _, f := range facts {
		switch {
		case f.Err != nil:
			failed++
		case strings.HasPrefix(f.Source, "agent "):
			agents++
		default:
			probes++
		}
	}
	msg := plural(len(facts), "node")
	var parts []string
	if agents > 0 {
		parts = append(parts, fmt.Sprintf("%d from agents", agents))
	}
	if probes > 0 {
		parts = append(parts, fmt.Sprintf("%d from probe pods", probes))
	}
	if failed > 0 {
		parts = append(parts, fmt.Sprintf("%d not read", failed))
	}
	return msg + ": " + strings.Join(parts, ", ")
}

// gatherNodeFacts reads the facts of every Linux node, several at once,
// and fills State.NodeFacts. It fails only when the nodes cannot be
// listed; a node whose facts cannot be read has its error in its entry.
func (o ClusterOptions) gatherNodeFacts(ctx context.Context, s *healthcheck.State, image func() (probeImage, error)) error {
	cl := s.Cluster
	l, err := cl.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	// Running agents answer at once; a missing DaemonSet (before install)
	// or one that cannot be read only means probe pods.
	agents := map[string]*corev1.Pod{}
	if pods, err := agentPods(ctx, cl); err == nil {
		for i := range pods {
			if p := &pods[i]; p.Spec.NodeName != "" && kubecheck.PodProblem(p, true) == "" {
				agents[p.Spec.NodeName] = p
			}
		}
	}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		results = map[string]healthcheck.NodeFacts{}
		sem     = make(chan struct{}, probeParallel)
	)
	for _, n := range l.Items {
		if osName := n.Labels[corev1.LabelOSStable]; osName != "" && osName != "linux" {
			continue // the agent runs on Linux nodes only
		}
		set := func(f healthcheck.NodeFacts) {
			mu.Lock()
			defer mu.Unlock()
			results[n.Name] = f
		}
		if msg := nodeNotReady(&n); msg != "" {
			set(healthcheck.NodeFacts{Err: errors.New(msg)})
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			set(o.nodeFacts(ctx, cl, n.Name, agents[n.Name], image))
		})
	}
	wg.Wait()
	if len(results) == 0 {
		return errors.New("the cluster has no Linux node")
	}
	s.NodeFacts = results
	return nil
}

// nodeNotReady says why a node cannot run a probe pod, or "".
func nodeNotReady(n *corev1.Node) string {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
			msg := "node is not ready"
			if c.Reason != "" {
				msg += ": " + c.Reason
			}
			return msg
		}
	}
	return ""
}

// nodeFacts reads one node's facts from its agent, else with a probe pod.
func (o ClusterOptions) nodeFacts(ctx context.Context, cl *healthcheck.Cluster, node string, agent *corev1.Pod, image func() (probeImage, error)) healthcheck.NodeFacts {
	var agentErr error
	if agent != nil {
		actx, cancel := context.WithTimeout(ctx, remoteAttemptTimeout)
		b, err := GetFromAgent(actx, cl.Client, agent, "/node-facts")
		cancel()
		if err == nil {
			var f nodefacts.Facts
			if err = json.Unmarshal(b, &f); err == nil {
				return healthcheck.NodeFacts{Facts: f, Source: "agent " + agent.Namespace + "/" + agent.Name}
			}
		}
		agentErr = err
	}
	f, err := o.probe(ctx, cl, node, image)
	if err != nil {
		if agentErr != nil {
			err = fmt.Errorf("%w (and from the agent: %w)", err, agentErr)
		}
		return healthcheck.NodeFacts{Err: err}
	}
	return healthcheck.NodeFacts{Facts: f, Source: "a probe pod"}
}

// probe runs a probe pod on node and returns the facts it printed. The pod
// is deleted however it ends.
func (o ClusterOptions) probe(ctx context.Context, cl *healthcheck.Cluster, node string, image func() (probeImage, error)) (nodefacts.Facts, error) {
	img, err := image()
	if err != nil {
		return nodefacts.Facts{}, err
	}
	timeout, poll := o.Probe.Timeout, o.Probe.Poll
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	if poll <= 0 {
		poll = defaultProbePoll
	}
	ns := o.probeNamespace()
	pods := cl.Client.CoreV1().Pods(ns)
	pod, err := pods.Create(ctx, probePod(ns, node, img), metav1.CreateOptions{})
	if err != nil {
		return nodefacts.Facts{}, fmt.Errorf("create a probe pod in namespace %s: %w", ns, err)
	}
	name := ns + "/" + pod.Name
	defer func() {
		// Also when ctx has ended: the pod must not stay behind.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		zero := int64(0)
		_ = pods.Delete(dctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	}()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return nodefacts.Facts{}, fmt.Errorf("probe pod %s: %w", name, err)
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			return o.probeLog(ctx, cl, p)
		case corev1.PodFailed:
			return nodefacts.Facts{}, fmt.Errorf("probe pod %s failed: %s", name, terminated(p))
		}
		if msg := stuck(p); msg != "" {
			return nodefacts.Facts{}, fmt.Errorf("probe pod %s cannot start: %s", name, msg)
		}
		select {
		case <-ctx.Done():
			msg := kubecheck.PodProblem(p, false)
			if msg == "" {
				msg = "running"
			}
			return nodefacts.Facts{}, fmt.Errorf("probe pod %s did not finish within %s (%s)", name, timeout, msg)
		case <-time.After(poll):
		}
	}
}

// probePod runs `sluice-agent node-facts` on node with the node's /proc
// and /sys mounted read-only, as an unprivileged user: it reads the node's
// mounts from /proc/1/mountinfo (the node's init), which needs no host PID
// namespace and no privilege.
func probePod(ns, node string, img probeImage) *corev1.Pod {
	yes, no := true, false
	nobody := int64(65534)
	hostPath := func(name, path string) corev1.Volume {
		dir := corev1.HostPathDirectory
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &dir}}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "sluice-node-facts-",
			Namespace:    ns,
			Labels:       map[string]string{ProbeLabel: "true", "app.kubernetes.io/part-of": "sluice"},
			Annotations:  map[string]string{meshmeta.AnnotationInject: meshmeta.InjectDisabled},
		},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			RestartPolicy:                corev1.RestartPolicyNever,
			AutomountServiceAccountToken: &no,
			// Like the agent, on every node whatever its taints.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name:            probeContainer,
				Image:           img.name,
				ImagePullPolicy: img.pull,
				Args:            []string{"node-facts", "--proc-root=/host/proc", "--sys-root=/host/sys", "--mounts-of=1"},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "host-proc", MountPath: "/host/proc", ReadOnly: true},
					{Name: "host-sys", MountPath: "/host/sys", ReadOnly: true},
				},
				SecurityContext: &corev1.SecurityContext{
					RunAsUser: &nobody, RunAsNonRoot: &yes, ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &no,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}},
			Volumes: []corev1.Volume{hostPath("host-proc", "/proc"), hostPath("host-sys", "/sys")},
		},
	}
}

// stuck says why a probe pod will not start by itself, or "".
func stuck(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			switch w.Reason {
			case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError":
				return w.Reason + ": " + firstLine(w.Message)
			}
		}
	}
	return ""
}

// terminated says how a failed probe pod's container ended.
func terminated(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			msg := fmt.Sprintf("exit %d", t.ExitCode)
			if t.Message != "" {
				msg += ": " + firstLine(t.Message)
			}
			return msg
		}
	}
	if p.Status.Message != "" {
		return p.Status.Reason + ": " + p.Status.Message
	}
	return "no container status"
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

// probeLog reads the facts from a finished probe pod's log.
func (o ClusterOptions) probeLog(ctx context.Context, cl *healthcheck.Cluster, p *corev1.Pod) (nodefacts.Facts, error) {
	logs := o.Probe.Logs
	if logs == nil {
		logs = func(ctx context.Context, p *corev1.Pod) ([]byte, error) {
			return cl.Client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: probeContainer}).DoRaw(ctx)
		}
	}
	b, err := logs(ctx, p)
	if err != nil {
		return nodefacts.Facts{}, fmt.Errorf("read the log of probe pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return ParseNodeFacts(b)
}

// ParseNodeFacts finds the facts in the output of `sluice-agent
// node-facts`: its last line that is a JSON object.
func ParseNodeFacts(out []byte) (nodefacts.Facts, error) {
	var found *nodefacts.Facts
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		var f nodefacts.Facts
		if len(line) > 0 && line[0] == '{' && json.Unmarshal(line, &f) == nil {
			found = &f
		}
	}
	if found == nil {
		return nodefacts.Facts{}, fmt.Errorf("no node facts in the probe's output: %q", truncate(string(out), 200))
	}
	return *found, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
