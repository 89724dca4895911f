package metricsapi

import (
	"context"
	"fmt"
	"net/http"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// object is a resource a stat row is about, with what picks its pods.
type object struct {
	res api.Resource
	// podNS is the namespace of its pods.
	podNS string
	// pods picks its pods in podNS; nil when res is a pod (then pod is it).
	pods labels.Selector
	pod  *corev1.Pod
}

// getLister is what a typed client-go client of one resource offers.
type getLister[T, L any] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*T, error)
	List(ctx context.Context, opts metav1.ListOptions) (*L, error)
}

// fetch gets the one item named name, or lists them all when name is "".
func fetch[T, L any](ctx context.Context, c getLister[T, L], name string, items func(*L) []T) ([]T, error) {
	if name != "" {
		x, err := c.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return []T{*x}, nil
	}
	l, err := c.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	return items(l), nil
}

// objects returns the resources of type t named name ("" for all) in ns
// ("" for all namespaces). A named resource that does not exist is an
// *api.Error with status 404.
func (s *Server) objects(ctx context.Context, t api.ResourceType, ns, name string) ([]object, error) {
	var out []object
	add := func(meta metav1.ObjectMeta, sel labels.Selector) {
		out = append(out, object{res: api.Resource{Namespace: meta.Namespace, Kind: t, Name: meta.Name}, podNS: meta.Namespace, pods: sel})
	}
	var err error
	switch t {
	case api.Deployment:
		var xs []appsv1.Deployment
		xs, err = fetch(ctx, s.kube.AppsV1().Deployments(ns), name, func(l *appsv1.DeploymentList) []appsv1.Deployment { return l.Items })
		for _, x := range xs {
			add(x.ObjectMeta, selectorOf(x.Spec.Selector))
		}
	case api.StatefulSet:
		var xs []appsv1.StatefulSet
		xs, err = fetch(ctx, s.kube.AppsV1().StatefulSets(ns), name, func(l *appsv1.StatefulSetList) []appsv1.StatefulSet { return l.Items })
		for _, x := range xs {
			add(x.ObjectMeta, selectorOf(x.Spec.Selector))
		}
	case api.DaemonSet:
		var xs []appsv1.DaemonSet
		xs, err = fetch(ctx, s.kube.AppsV1().DaemonSets(ns), name, func(l *appsv1.DaemonSetList) []appsv1.DaemonSet { return l.Items })
		for _, x := range xs {
			add(x.ObjectMeta, selectorOf(x.Spec.Selector))
		}
	case api.Job:
		var xs []batchv1.Job
		xs, err = fetch(ctx, s.kube.BatchV1().Jobs(ns), name, func(l *batchv1.JobList) []batchv1.Job { return l.Items })
		for _, x := range xs {
			add(x.ObjectMeta, selectorOf(x.Spec.Selector))
		}
	case api.Service:
		var xs []corev1.Service
		xs, err = fetch(ctx, s.kube.CoreV1().Services(ns), name, func(l *corev1.ServiceList) []corev1.Service { return l.Items })
		for _, x := range xs {
			sel := labels.Nothing()
			if len(x.Spec.Selector) > 0 {
				sel = labels.SelectorFromSet(x.Spec.Selector)
			}
			add(x.ObjectMeta, sel)
		}
	case api.Pod:
		var xs []corev1.Pod
		xs, err = fetch(ctx, s.kube.CoreV1().Pods(ns), name, func(l *corev1.PodList) []corev1.Pod { return l.Items })
		for i := range xs {
			out = append(out, object{res: api.Resource{Namespace: xs[i].Namespace, Kind: t, Name: xs[i].Name}, podNS: xs[i].Namespace, pod: &xs[i]})
		}
	case api.Namespace:
		var xs []corev1.Namespace
		xs, err = fetch(ctx, s.kube.CoreV1().Namespaces(), name, func(l *corev1.NamespaceList) []corev1.Namespace { return l.Items })
		for _, x := range xs {
			out = append(out, object{res: api.Resource{Kind: t, Name: x.Name}, podNS: x.Name, pods: labels.Everything()})
		}
	default:
		return nil, fmt.Errorf("list %s: unknown resource type", t)
	}
	if err != nil {
		return nil, kubeError(err, t, ns, name)
	}
	return out, nil
}

// kubeError turns a failed Get or List into an *api.Error: 404 for a named
// resource that does not exist, 503 for the rest.
func kubeError(err error, t api.ResourceType, ns, name string) error {
	what := string(t)
	if ns != "" && t != api.Namespace {
		what += " " + ns + "/" + name
	} else {
		what += " " + name
	}
	if name != "" && apierrors.IsNotFound(err) {
		return &api.Error{Status: http.StatusNotFound, Param: api.ParamName, Message: what + " not found"}
	}
	if name == "" {
		what = string(t) + "s"
		if ns != "" {
			what += " in " + ns
		}
	}
	return &api.Error{Status: http.StatusServiceUnavailable, Message: fmt.Sprintf("read %s from the Kubernetes API: %v", what, err)}
}

// selectorOf returns a workload's pod selector; a missing or invalid one
// picks nothing.
func selectorOf(ls *metav1.LabelSelector) labels.Selector {
	if ls == nil {
		return labels.Nothing()
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return labels.Nothing()
	}
	return sel
}

// podsByNamespace lists the pods of ns ("" for all namespaces) by
// namespace.
func (s *Server) podsByNamespace(ctx context.Context, ns string) (map[string][]*corev1.Pod, error) {
	l, err := s.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, kubeError(err, api.Pod, ns, "")
	}
	out := map[string][]*corev1.Pod{}
	for i := range l.Items {
		p := &l.Items[i]
		out[p.Namespace] = append(out[p.Namespace], p)
	}
	return out, nil
}

// podsOf returns the pods of o among pods.
func (o object) podsOf(pods map[string][]*corev1.Pod) []*corev1.Pod {
	if o.pod != nil {
		return []*corev1.Pod{o.pod}
	}
	var out []*corev1.Pod
	for _, p := range pods[o.podNS] {
		if o.pods.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// countPods counts the pending or running pods and the meshed ones among
// them.
func countPods(pods []*corev1.Pod) (meshed, total int) {
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		total++
		if p.Labels[meshmeta.LabelControlPlaneNS] != "" {
			meshed++
		}
	}
	return meshed, total
}

// serviceAccounts returns the service accounts of the pods of r.
func (s *Server) serviceAccounts(ctx context.Context, r api.Resource) (map[string]bool, error) {
	objs, err := s.objects(ctx, r.Kind, r.Namespace, r.Name)
	if err != nil {
		return nil, err
	}
	ns := r.Namespace
	if r.Kind == api.Namespace {
		ns = r.Name
	}
	pods, err := s.podsByNamespace(ctx, ns)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, o := range objs {
		for _, p := range o.podsOf(pods) {
			sa := p.Spec.ServiceAccountName
			if sa == "" {
				sa = "default"
			}
			out[sa] = true
		}
	}
	return out, nil
}
