package kubecheck

import (
	"context"
	"errors"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/install"
)

// ComponentLabel names a control-plane pod's component (destination,
// identity, ..., agent, prometheus).
const ComponentLabel = "sluice.io/control-plane-component"

// workload is one of the chart's Deployments or its DaemonSet.
type workload struct {
	name, component string
	daemonSet       bool
	// optional workloads may be left out by the chart's values.
	optional string
}

// controlPlaneWorkloads are what the chart installs, in the order checked.
var controlPlaneWorkloads = []workload{
	{name: "sluice-destination", component: "destination"},
	{name: "sluice-identity", component: "identity"},
	{name: "sluice-proxy-injector", component: "proxy-injector"},
	{name: "sluice-tap", component: "tap"},
	{name: "sluice-metrics-api", component: "metrics-api"},
	{name: "sluice-prometheus", component: "prometheus", optional: "prometheus.enabled is false"},
	{name: install.AgentDaemonSet, component: "agent", daemonSet: true},
}

// ControlPlane returns the checks of an installed control plane, the
// categories after KubernetesAPI: its namespace and workloads, identity,
// webhook, tap, Prometheus and the metrics API.
func ControlPlane(o Options) []healthcheck.Category {
	return []healthcheck.Category{
		{ID: CategoryControlPlane, Checkers: controlPlaneCheckers(o)},
		{ID: CategoryIdentity, Checkers: identityCheckers(o)},
		{ID: CategoryWebhook, Checkers: webhookCheckers(o)},
		{ID: CategoryTap, Checkers: tapCheckers(o)},
		{ID: CategoryPrometheus, Checkers: prometheusCheckers(o)},
		{ID: CategoryMetricsAPI, Checkers: metricsAPICheckers(o)},
	}
}

func controlPlaneCheckers(o Options) []healthcheck.Checker {
	ns := o.Namespace
	out := []healthcheck.Checker{{
		ID:          CheckNamespace,
		Description: "control plane namespace exists",
		Hint: "install Sluice with `meshctl install` (`meshctl check --pre` checks the cluster first), or pass " +
			"-L/--control-plane-namespace if it lives in another namespace",
		Fatal:    true,
		Requires: kubeAPI,
		Check: func(ctx context.Context, s *healthcheck.State) error {
			_, err := s.Cluster.Client.CoreV1().Namespaces().Get(ctx, s.Cluster.Namespace, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("no namespace %q: Sluice is not installed in this cluster", s.Cluster.Namespace)
			}
			return err
		},
	}}
	requires := []healthcheck.CheckID{CheckNamespace}
	for _, w := range controlPlaneWorkloads {
		kind, title := "deployment", "Deployment"
		if w.daemonSet {
			kind, title = "daemonset", "DaemonSet"
		}
		out = append(out, healthcheck.Checker{
			Description: fmt.Sprintf("%s %s is ready", w.name, title),
			Hint: fmt.Sprintf("`kubectl -n %s describe %s %s` says why, and its pods: `kubectl -n %s get pods -l %s=%s`",
				ns, kind, w.name, ns, ComponentLabel, w.component),
			Requires:      requires,
			RetryDeadline: o.Wait,
			Check: func(ctx context.Context, s *healthcheck.State) error {
				return checkWorkload(ctx, s.Cluster, w)
			},
		})
	}
	out = append(out, healthcheck.Checker{
		Description: "control plane pods are running",
		Hint: fmt.Sprintf("`kubectl -n %s describe pod <pod>` says why a pod does not run; a crash-looping container's "+
			"last words: `kubectl -n %s logs <pod> -c <container> --previous`", ns, ns),
		Requires:      requires,
		RetryDeadline: o.Wait,
		Check:         checkControlPlanePods,
	})
	return out
}

// checkWorkload fails unless the workload has all its replicas updated and
// ready.
func checkWorkload(ctx context.Context, cl *healthcheck.Cluster, w workload) error {
	apps := cl.Client.AppsV1()
	if w.daemonSet {
		d, err := apps.DaemonSets(cl.Namespace).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return notFound(err, "daemonset", cl.Namespace, w.name)
		}
		return daemonSetReady(d)
	}
	d, err := apps.Deployments(cl.Namespace).Get(ctx, w.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && w.optional != "" {
		return healthcheck.Skip(fmt.Errorf("not installed (%s)", w.optional))
	}
	if err != nil {
		return notFound(err, "deployment", cl.Namespace, w.name)
	}
	return deploymentReady(d)
}

// deploymentReady fails while a Deployment's rollout is not complete: its
// spec not yet seen by the controller, or fewer pods than wanted updated,
// ready and available, or old pods still there.
func deploymentReady(d *appsv1.Deployment) error {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	st := d.Status
	if st.ObservedGeneration < d.Generation {
		return fmt.Errorf("the deployment controller has not yet seen generation %d (it saw %d)", d.Generation, st.ObservedGeneration)
	}
	if st.UpdatedReplicas < want || st.ReadyReplicas < want || st.AvailableReplicas < want || st.Replicas > want {
		return fmt.Errorf("%d/%d replicas ready, %d/%d updated, %d available, %d in all",
			st.ReadyReplicas, want, st.UpdatedReplicas, want, st.AvailableReplicas, st.Replicas)
	}
	return nil
}

// daemonSetReady fails while a DaemonSet's pods are not all updated and
// ready, or it runs on no node.
func daemonSetReady(d *appsv1.DaemonSet) error {
	st := d.Status
	switch {
	case st.ObservedGeneration < d.Generation:
		return fmt.Errorf("the daemonset controller has not yet seen generation %d (it saw %d)", d.Generation, st.ObservedGeneration)
	case st.DesiredNumberScheduled == 0:
		return errors.New("scheduled on no node: no node matches its node selector and tolerations")
	case st.NumberReady < st.DesiredNumberScheduled || st.UpdatedNumberScheduled < st.DesiredNumberScheduled:
		return fmt.Errorf("%d/%d nodes ready, %d/%d updated", st.NumberReady, st.DesiredNumberScheduled,
			st.UpdatedNumberScheduled, st.DesiredNumberScheduled)
	}
	return nil
}

// checkControlPlanePods fails when a control-plane pod does not run or has
// a container waiting to start again (crash-looping, image not pulled).
func checkControlPlanePods(ctx context.Context, s *healthcheck.State) error {
	cl := s.Cluster
	pods, err := cl.Client.CoreV1().Pods(cl.Namespace).List(ctx, metav1.ListOptions{LabelSelector: ComponentLabel})
	if err != nil {
		return fmt.Errorf("list the control plane's pods: %w", err)
	}
	if len(pods.Items) == 0 {
		return fmt.Errorf("no pods with the label %s in namespace %s", ComponentLabel, cl.Namespace)
	}
	var bad []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if msg := PodProblem(p, false); msg != "" {
			bad = append(bad, p.Name+": "+msg)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return list(fmt.Sprintf("%d of %d pods do not run", len(bad), len(pods.Items)), bad)
	}
	return nil
}
