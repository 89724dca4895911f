package install

import (
	"context"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/internal/apply"
)

// FieldManager names meshctl in the objects' managedFields.
const FieldManager = "meshctl"

// Installer changes one cluster.
type Installer struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	applier *apply.Applier
	// Out gets the progress, a line per step.
	Out io.Writer
	// Poll is how often Wait looks; default one second.
	Poll time.Duration
}

// New returns an Installer for the cluster of cfg, writing progress to out.
func New(cfg *rest.Config, out io.Writer) (*Installer, error) {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("make a Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("make a dynamic client: %w", err)
	}
	a, err := apply.New(cfg, FieldManager)
	if err != nil {
		return nil, err
	}
	return &Installer{Client: client, Dynamic: dyn, applier: a, Out: out, Poll: time.Second}, nil
}

// ValuesObject is the Secret that keeps the user's values in namespace ns
// for the next upgrade.
func ValuesObject(ns string, user map[string]any) (*unstructured.Unstructured, error) {
	b, err := yaml.Marshal(user)
	if err != nil {
		return nil, fmt.Errorf("encode the values: %w", err)
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1",
		"kind":       "Secret",
		"metadata": map[string]any{
			"name":      ValuesSecret,
			"namespace": ns,
			"labels":    map[string]any{"app.kubernetes.io/part-of": "sluice", "app.kubernetes.io/managed-by": FieldManager},
		},
		"type":       "Opaque",
		"stringData": map[string]any{ValuesKey: string(b)},
	}}, nil
}

// Apply applies the objects in order, saying how many.
func (i *Installer) Apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	fmt.Fprintf(i.Out, "applying %d objects\n", len(objs))
	return i.applier.Apply(ctx, objs)
}

// Wait waits until every Deployment, StatefulSet and DaemonSet among objs has all its
// pods updated and ready, every APIService is Available and the proxy
// injector's webhook injects a pod (a dry run in namespace default). It prints a
// line when each becomes ready and, every ten seconds, what it still
// waits for. When ctx ends first the error lists what was not ready.
func (i *Installer) Wait(ctx context.Context, objs []*unstructured.Unstructured) error {
	poll := i.Poll
	if poll <= 0 {
		poll = time.Second
	}
	ready := map[string]bool{}
	var lastSaid time.Time
	start := time.Now()
	for {
		var pending []string
		for _, o := range objs {
			key := strings.ToLower(o.GetKind()) + "/" + o.GetName()
			if ready[key] {
				continue
			}
			ok, status := i.objectReady(ctx, o)
			if status == "" {
				continue // not a kind that has a readiness
			}
			if ok {
				ready[key] = true
				fmt.Fprintf(i.Out, "  ✔ %s: %s\n", key, status)
				continue
			}
			pending = append(pending, key+" ("+status+")")
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Since(lastSaid) >= 10*time.Second {
			fmt.Fprintf(i.Out, "  … %s: waiting for %s\n", time.Since(start).Round(time.Second), strings.Join(pending, ", "))
			lastSaid = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %s", time.Since(start).Round(time.Second), strings.Join(pending, ", "))
		case <-time.After(poll):
		}
	}
}

var apiServices = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// objectReady says whether o is ready and its status in a few words; the
// status is "" for kinds without readiness.
func (i *Installer) objectReady(ctx context.Context, o *unstructured.Unstructured) (bool, string) {
	switch o.GetKind() {
	case "Deployment":
		d, err := i.Client.AppsV1().Deployments(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		st := d.Status
		ok := st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.AvailableReplicas == want && st.Replicas == want
		return ok, fmt.Sprintf("%d/%d ready", st.AvailableReplicas, want)
	case "StatefulSet":
		d, err := i.Client.AppsV1().StatefulSets(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		st := d.Status
		ok := st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.ReadyReplicas == want
		return ok, fmt.Sprintf("%d/%d ready", st.ReadyReplicas, want)
	case "DaemonSet":
		d, err := i.Client.AppsV1().DaemonSets(o.GetNamespace()).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		st := d.Status
		ok := st.ObservedGeneration >= d.Generation && st.DesiredNumberScheduled > 0 &&
			st.NumberReady == st.DesiredNumberScheduled && st.UpdatedNumberScheduled == st.DesiredNumberScheduled
		return ok, fmt.Sprintf("%d/%d nodes ready", st.NumberReady, st.DesiredNumberScheduled)
	case "MutatingWebhookConfiguration":
		// Ready pods are not yet a webhook the API server reaches (its
		// endpoints follow readiness): until it does, pods of meshed
		// namespaces would be created without a proxy.
		if err := WebhookInjects(ctx, i.Client, metav1.NamespaceDefault); err != nil {
			return false, "not injecting yet: " + err.Error()
		}
		return true, "injects pods"
	case "APIService":
		as, err := i.Dynamic.Resource(apiServices).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		conds, _, _ := unstructured.NestedSlice(as.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Available" {
				if m["status"] == "True" {
					return true, "available"
				}
				return false, fmt.Sprint(m["reason"], ": ", m["message"])
			}
		}
		return false, "no conditions yet"
	}
	return false, ""
}

// AgentDaemonSet is the chart's node agent.
const AgentDaemonSet = "sluice-agent"

// cleanupLabel marks the pods that remove the agents' pinned state.
const cleanupLabel = "sluice.io/agent-cleanup"

// Uninstall removes Sluice from namespace ns: the agents first, then on
// every node they ran on a pod that runs `sluice-agent uninstall` with the
// agent's own image, mounts and privileges (detaching the programs and
// removing the pins and the state directory), then every object in objs
// (in reverse order, the namespace last), and waits until the namespace
// is gone.
func (i *Installer) Uninstall(ctx context.Context, ns string, objs []*unstructured.Unstructured) error {
	if err := i.cleanAgents(ctx, ns); err != nil {
		return err
	}
	fmt.Fprintf(i.Out, "deleting %d objects\n", len(objs))
	if err := i.applier.Delete(ctx, objs); err != nil {
		return err
	}
	if err := i.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete namespace %s: %w", ns, err)
	}
	fmt.Fprintf(i.Out, "waiting for namespace %s to be gone\n", ns)
	for {
		_, err := i.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("namespace %s is still there (terminating): %w", ns, ctx.Err())
		case <-time.After(i.Poll):
		}
	}
}

// cleanAgents deletes the agent DaemonSet, waits for its pods to go, and
// runs a cleanup pod on each node they ran on.
func (i *Installer) cleanAgents(ctx context.Context, ns string) error {
	ds, err := i.Client.AppsV1().DaemonSets(ns).Get(ctx, AgentDaemonSet, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		fmt.Fprintf(i.Out, "no agent DaemonSet %s/%s: no pinned state to remove\n", ns, AgentDaemonSet)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the agent DaemonSet: %w", err)
	}
	sel := metav1.FormatLabelSelector(ds.Spec.Selector)
	pods, err := i.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("list the agents: %w", err)
	}
	var nodes []string
	for _, p := range pods.Items {
		if p.Spec.NodeName != "" && !slices.Contains(nodes, p.Spec.NodeName) {
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	slices.Sort(nodes)
	tmpl := ds.Spec.Template.Spec
	fmt.Fprintf(i.Out, "deleting the agents (%d nodes)\n", len(nodes))
	fg := metav1.DeletePropagationForeground
	if err := i.Client.AppsV1().DaemonSets(ns).Delete(ctx, AgentDaemonSet, metav1.DeleteOptions{PropagationPolicy: &fg}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the agent DaemonSet: %w", err)
	}
	if err := i.waitNoPods(ctx, ns, sel); err != nil {
		return err
	}
	for _, node := range nodes {
		if err := i.runCleanup(ctx, ns, node, tmpl); err != nil {
			return err
		}
	}
	return nil
}

func (i *Installer) waitNoPods(ctx context.Context, ns, sel string) error {
	for {
		pods, err := i.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return fmt.Errorf("list the agents: %w", err)
		}
		if len(pods.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d agent pods still there: %w", len(pods.Items), ctx.Err())
		case <-time.After(i.Poll):
		}
	}
}

// runCleanup runs `sluice-agent uninstall` on node with the agent's pod
// template's image, volumes and security context, and waits for it.
func (i *Installer) runCleanup(ctx context.Context, ns, node string, tmpl corev1.PodSpec) error {
	if len(tmpl.Containers) == 0 {
		return fmt.Errorf("the agent DaemonSet has no container")
	}
	agent := tmpl.Containers[0]
	args := []string{"uninstall"}
	stateDir := ""
	for _, a := range agent.Args {
		for _, flag := range []string{"--pin-root=", "--state-dir="} {
			if strings.HasPrefix(a, flag) {
				args = append(args, a)
			}
		}
		if v, ok := strings.CutPrefix(a, "--state-dir="); ok {
			stateDir = v
		}
	}
	volumes, mounts := parentOfStateDir(tmpl.Volumes, agent.VolumeMounts, stateDir)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "sluice-agent-cleanup-",
			Namespace:    ns,
			Labels:       map[string]string{cleanupLabel: "true", "app.kubernetes.io/part-of": "sluice"},
			Annotations:  map[string]string{"sluice.io/inject": "disabled"},
		},
		Spec: corev1.PodSpec{
			NodeName:      node,
			RestartPolicy: corev1.RestartPolicyNever,
			HostNetwork:   tmpl.HostNetwork,
			HostPID:       tmpl.HostPID,
			Tolerations:   tmpl.Tolerations,
			Volumes:       volumes,
			Containers: []corev1.Container{{
				Name:            "cleanup",
				Image:           agent.Image,
				ImagePullPolicy: agent.ImagePullPolicy,
				Args:            args,
				SecurityContext: agent.SecurityContext,
				VolumeMounts:    mounts,
				// The agent's error becomes the pod's termination message.
				TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
			}},
		},
	}
	pod, err := i.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create the cleanup pod on node %s: %w", node, err)
	}
	for {
		p, err := i.Client.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("cleanup pod on node %s: %w", node, err)
		}
		switch p.Status.Phase {
		case corev1.PodSucceeded:
			fmt.Fprintf(i.Out, "  ✔ node %s: pinned state removed\n", node)
			return nil
		case corev1.PodFailed:
			return fmt.Errorf("removing the pinned state on node %s failed (pod %s/%s: %s); run `sluice-agent uninstall` on that node", node, ns, p.Name, podFailure(p))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("removing the pinned state on node %s: pod %s/%s is %s: %w", node, ns, p.Name, p.Status.Phase, ctx.Err())
		case <-time.After(i.Poll):
		}
	}
}

// parentOfStateDir returns the agent's volumes and mounts with the state
// directory's host path mounted through its parent, so that `sluice-agent
// uninstall` can remove the directory itself (a mount point cannot be).
func parentOfStateDir(vols []corev1.Volume, mounts []corev1.VolumeMount, stateDir string) ([]corev1.Volume, []corev1.VolumeMount) {
	mi := slices.IndexFunc(mounts, func(m corev1.VolumeMount) bool {
		return stateDir != "" && path.Clean(m.MountPath) == path.Clean(stateDir)
	})
	if mi < 0 {
		return vols, mounts
	}
	vi := slices.IndexFunc(vols, func(v corev1.Volume) bool { return v.Name == mounts[mi].Name && v.HostPath != nil })
	if vi < 0 || path.Dir(path.Clean(vols[vi].HostPath.Path)) == "/" || path.Dir(path.Clean(stateDir)) == "/" {
		return vols, mounts
	}
	vols, mounts = slices.Clone(vols), slices.Clone(mounts)
	dir := corev1.HostPathDirectory
	vols[vi] = corev1.Volume{Name: vols[vi].Name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
		Path: path.Dir(path.Clean(vols[vi].HostPath.Path)), Type: &dir}}}
	mounts[mi].MountPath = path.Dir(path.Clean(stateDir))
	return vols, mounts
}

func podFailure(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			return fmt.Sprintf("exit %d %s", t.ExitCode, strings.TrimSpace(t.Message))
		}
	}
	return p.Status.Reason
}
