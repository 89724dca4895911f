package kubecheck

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// DataPlane returns the checks of the meshed pods (in
// Options.DataPlaneNamespace, or everywhere): their proxies are ready, of
// the control plane's version and scraped, and no pod of a meshed namespace
// lacks one. It comes after ControlPlane, whose namespace and Prometheus
// checks it requires.
func DataPlane(o Options) healthcheck.Category {
	requires := []healthcheck.CheckID{CheckNamespace}
	var out []healthcheck.Checker
	where := "every namespace"
	if o.DataPlaneNamespace != "" {
		where = "namespace " + o.DataPlaneNamespace
		out = append(out, healthcheck.Checker{
			ID:          checkDataPlaneNS,
			Description: "data plane namespace exists",
			Hint:        "-n/--namespace names the namespace whose meshed pods are checked: `kubectl get namespaces` lists them",
			Requires:    requires,
			Check: func(ctx context.Context, s *healthcheck.State) error {
				_, err := s.Cluster.Client.CoreV1().Namespaces().Get(ctx, o.DataPlaneNamespace, metav1.GetOptions{})
				return notFound(err, "namespace", "", o.DataPlaneNamespace)
			},
		})
		requires = []healthcheck.CheckID{checkDataPlaneNS}
	}
	out = append(out,
		healthcheck.Checker{
			Description: "data plane proxies are ready",
			Hint: fmt.Sprintf("a meshed pod's %s container reports ready once the node agent steers its traffic and it "+
				"has its identity: `kubectl -n <namespace> logs <pod> -c %s` says what it waits for, and `meshctl check --ebpf` "+
				"how the node's agent is", meshmeta.ProxyContainerName, meshmeta.ProxyContainerName),
			Requires:      requires,
			RetryDeadline: o.Wait,
			Check: func(ctx context.Context, s *healthcheck.State) error {
				pods, err := meshedPods(ctx, s.Cluster, o.DataPlaneNamespace)
				if err != nil {
					return err
				}
				if len(pods) == 0 {
					return healthcheck.Warn(fmt.Errorf("no meshed pods (label %s=%s) in %s", meshmeta.LabelControlPlaneNS, s.Cluster.Namespace, where))
				}
				var bad []string
				for _, p := range pods {
					if msg := proxyProblem(&p); msg != "" {
						bad = append(bad, podName(&p)+": "+msg)
					}
				}
				if len(bad) > 0 {
					return list(fmt.Sprintf("%d of %d proxies are not ready", len(bad), len(pods)), bad)
				}
				return nil
			},
		},
		healthcheck.Checker{
			Description: "data plane proxies run the control plane's version",
			Hint: "the injector gives new pods the proxy of the control plane's version; older pods keep theirs until " +
				"restarted: `kubectl -n <namespace> rollout restart deployment/<name>` (or statefulset, daemonset)",
			Warning:  true,
			Requires: requires,
			Check: func(ctx context.Context, s *healthcheck.State) error {
				return checkProxyVersions(ctx, s.Cluster, o.DataPlaneNamespace)
			},
		},
		healthcheck.Checker{
			Description: "pods of meshed namespaces have a proxy",
			Hint: fmt.Sprintf("these pods were created while the proxy injector did not answer (its failurePolicy lets "+
				"them through) or before their namespace had %s: %s: restart their workloads, "+
				"`kubectl -n <namespace> rollout restart deployment/<name>`", meshmeta.AnnotationInject, meshmeta.InjectEnabled),
			Warning:  true,
			Requires: requires,
			Check: func(ctx context.Context, s *healthcheck.State) error {
				return checkUnmeshed(ctx, s.Cluster, o.DataPlaneNamespace)
			},
		},
		healthcheck.Checker{
			Description: "data plane proxies are scraped by Prometheus",
			Hint: fmt.Sprintf("Prometheus scrapes every proxy's admin port (job %s); a proxy that is not up has a pod that "+
				"is not ready or an admin port that does not answer, and one not scraped yet may have just started "+
				"(Prometheus' targets page, /targets, says more)", JobProxy),
			Requires:      append([]healthcheck.CheckID{CheckPrometheus}, requires...),
			RetryDeadline: o.Wait,
			Check: withTimeout(func(ctx context.Context, s *healthcheck.State) error {
				return checkProxiesScraped(ctx, s.Cluster, o.DataPlaneNamespace)
			}),
		},
	)
	return healthcheck.Category{ID: CategoryDataPlane, Checkers: out}
}

// meshedPods lists the pods of the control plane's proxies in ns ("" is
// every namespace) that have not finished, ordered by namespace and name.
func meshedPods(ctx context.Context, cl *healthcheck.Cluster, ns string) ([]corev1.Pod, error) {
	sel := meshmeta.LabelControlPlaneNS + "=" + cl.Namespace
	l, err := cl.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("list meshed pods: %w", err)
	}
	return live(l.Items), nil
}

// live drops the pods that have finished or are being deleted, and orders
// the rest by namespace and name.
func live(pods []corev1.Pod) []corev1.Pod {
	var out []corev1.Pod
	for _, p := range pods {
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return podName(&out[i]) < podName(&out[j]) })
	return out
}

func podName(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

// proxyProblem says why a meshed pod's proxy is not ready, or "".
func proxyProblem(p *corev1.Pod) string {
	statuses := append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, cs := range statuses {
		if cs.Name != meshmeta.ProxyContainerName {
			continue
		}
		switch {
		case cs.Ready:
			return ""
		case cs.State.Waiting != nil && cs.State.Waiting.Reason != "":
			return "waiting: " + cs.State.Waiting.Reason
		case cs.State.Terminated != nil:
			return fmt.Sprintf("exited %d", cs.State.Terminated.ExitCode)
		}
		return "not ready"
	}
	if p.Status.Phase == corev1.PodPending {
		return "pending"
	}
	return "no " + meshmeta.ProxyContainerName + " container status"
}

// proxyVersion is the tag of the pod's proxy image, else its proxy-version
// annotation.
func proxyVersion(p *corev1.Pod) string {
	for _, c := range append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name != meshmeta.ProxyContainerName {
			continue
		}
		image, _, _ := strings.Cut(c.Image, "@")
		if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
			return image[i+1:]
		}
	}
	return p.Annotations[meshmeta.AnnotationProxyVersion]
}

// checkProxyVersions warns about proxies whose version differs from the
// one the control plane injects (sluice-config's proxy.version).
func checkProxyVersions(ctx context.Context, cl *healthcheck.Cluster, ns string) error {
	v, err := inject.LoadValues(ctx, cl.Client, cl.Namespace)
	if err != nil {
		return err
	}
	pods, err := meshedPods(ctx, cl, ns)
	if err != nil {
		return err
	}
	var other []string
	for _, p := range pods {
		if got := proxyVersion(&p); got != v.Proxy.Version {
			other = append(other, fmt.Sprintf("%s (%s)", podName(&p), got))
		}
	}
	if len(other) > 0 {
		return list(fmt.Sprintf("%d of %d proxies do not run the control plane's version %s", len(other), len(pods), v.Proxy.Version), other)
	}
	return nil
}

// checkUnmeshed warns about pods of namespaces annotated for injection that
// the injector would mesh but that have no proxy.
func checkUnmeshed(ctx context.Context, cl *healthcheck.Cluster, ns string) error {
	var nss []corev1.Namespace
	if ns != "" {
		n, err := cl.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read namespace %s: %w", ns, err)
		}
		nss = []corev1.Namespace{*n}
	} else {
		l, err := cl.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list namespaces: %w", err)
		}
		nss = l.Items
	}
	var unmeshed []string
	for _, n := range nss {
		if n.Annotations[meshmeta.AnnotationInject] != meshmeta.InjectEnabled || n.Name == cl.Namespace || n.Name == metav1.NamespaceSystem {
			continue
		}
		pods, err := cl.Client.CoreV1().Pods(n.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("list the pods of namespace %s: %w", n.Name, err)
		}
		for _, p := range live(pods.Items) {
			if inject.Decide(inject.OptIn, p.ObjectMeta, &p.Spec, n.Annotations).Inject {
				unmeshed = append(unmeshed, podName(&p))
			}
		}
	}
	if len(unmeshed) > 0 {
		return list(fmt.Sprintf("%d pods of meshed namespaces have no proxy", len(unmeshed)), unmeshed)
	}
	return nil
}

// checkProxiesScraped fails when Prometheus finds a proxy down, and warns
// about ready proxies it does not scrape (yet).
func checkProxiesScraped(ctx context.Context, cl *healthcheck.Cluster, ns string) error {
	query := fmt.Sprintf("up{job=%q}", JobProxy)
	if ns != "" {
		query = fmt.Sprintf("up{job=%q,namespace=%q}", JobProxy, ns)
	}
	samples, err := prometheusQuery(ctx, cl, query)
	if err != nil {
		return err
	}
	scraped := map[string]bool{}
	var down []string
	for _, s := range samples {
		name := s.labels["namespace"] + "/" + s.labels["pod"]
		scraped[name] = true
		if s.value != "1" {
			down = append(down, name)
		}
	}
	if len(down) > 0 {
		sort.Strings(down)
		return list(fmt.Sprintf("%d of %d proxies are down for Prometheus (%s is 0)", len(down), len(samples), query), down)
	}
	pods, err := meshedPods(ctx, cl, ns)
	if err != nil {
		return err
	}
	var missing []string
	for _, p := range pods {
		if proxyProblem(&p) == "" && !scraped[podName(&p)] {
			missing = append(missing, podName(&p))
		}
	}
	if len(missing) > 0 {
		return healthcheck.Warn(list(fmt.Sprintf("%d ready proxies are not scraped by Prometheus yet (no %s)", len(missing), query), missing))
	}
	return nil
}
