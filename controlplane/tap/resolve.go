package tap

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// podsOf returns the pods of r, whose type is canonical: a namespace's
// pods, a pod, the pods a workload's or service's selector selects, a
// cronjob's jobs' pods; with an empty name, those of every object of the
// type in the namespace. A missing object is a 404 with the API server's
// message.
func (s *Server) podsOf(ctx context.Context, r *tappb.Resource) ([]corev1.Pod, *apiError) {
	c := s.cfg.Client
	ns, name := r.GetNamespace(), r.GetName()
	list := func(sel labels.Selector) ([]corev1.Pod, *apiError) {
		l, err := c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return nil, fromAPIError("list pods: ", err)
		}
		return l.Items, nil
	}
	switch r.GetType() {
	case "namespace":
		if _, err := c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}); err != nil {
			return nil, fromAPIError("", err)
		}
		return list(labels.Everything())
	case "pod":
		if name == "" {
			return list(labels.Everything())
		}
		p, err := c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fromAPIError("", err)
		}
		return []corev1.Pod{*p}, nil
	}
	sels, err := s.selectors(ctx, r)
	if err != nil {
		return nil, fromAPIError("", err)
	}
	switch len(sels) {
	case 0:
		return nil, nil
	case 1:
		return list(sels[0])
	}
	all, aerr := list(labels.Everything())
	if aerr != nil {
		return nil, aerr
	}
	return slices.DeleteFunc(all, func(p corev1.Pod) bool {
		return !slices.ContainsFunc(sels, func(sel labels.Selector) bool { return sel.Matches(labels.Set(p.Labels)) })
	}), nil
}

// selectors returns the pod selectors of r's objects (a workload type or
// service): the named one's, or every one's in the namespace. Missing
// selectors (a service without one) are left out.
func (s *Server) selectors(ctx context.Context, r *tappb.Resource) ([]labels.Selector, error) {
	c := s.cfg.Client
	ns, name := r.GetNamespace(), r.GetName()
	get := metav1.GetOptions{}
	var sels []labels.Selector
	add := func(ls *metav1.LabelSelector) error {
		sel, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			return fmt.Errorf("parse selector: %w", err)
		}
		if ls != nil {
			sels = append(sels, sel)
		}
		return nil
	}
	var err error
	switch r.GetType() {
	case "deployment":
		if name != "" {
			d, gerr := c.AppsV1().Deployments(ns).Get(ctx, name, get)
			if gerr != nil {
				return nil, gerr
			}
			return sels, add(d.Spec.Selector)
		}
		l, lerr := c.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
		if lerr != nil {
			return nil, lerr
		}
		for _, d := range l.Items {
			err = cmp.Or(err, add(d.Spec.Selector))
		}
	case "replicaset":
		if name != "" {
			x, gerr := c.AppsV1().ReplicaSets(ns).Get(ctx, name, get)
			if gerr != nil {
				return nil, gerr
			}
			return sels, add(x.Spec.Selector)
		}
		l, lerr := c.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		if lerr != nil {
			return nil, lerr
		}
		for _, x := range l.Items {
			err = cmp.Or(err, add(x.Spec.Selector))
		}
	case "statefulset":
		if name != "" {
			x, gerr := c.AppsV1().StatefulSets(ns).Get(ctx, name, get)
			if gerr != nil {
				return nil, gerr
			}
			return sels, add(x.Spec.Selector)
		}
		l, lerr := c.AppsV1().StatefulSets(ns).List(ctx, metav1.ListOptions{})
		if lerr != nil {
			return nil, lerr
		}
		for _, x := range l.Items {
			err = cmp.Or(err, add(x.Spec.Selector))
		}
	case "daemonset":
		if name != "" {
			x, gerr := c.AppsV1().DaemonSets(ns).Get(ctx, name, get)
			if gerr != nil {
				return nil, gerr
			}
			return sels, add(x.Spec.Selector)
		}
		l, lerr := c.AppsV1().DaemonSets(ns).List(ctx, metav1.ListOptions{})
		if lerr != nil {
			return nil, lerr
		}
		for _, x := range l.Items {
			err = cmp.Or(err, add(x.Spec.Selector))
		}
	case "job", "cronjob":
		if r.GetType() == "job" && name != "" {
			x, gerr := c.BatchV1().Jobs(ns).Get(ctx, name, get)
			if gerr != nil {
				return nil, gerr
			}
			return sels, add(x.Spec.Selector)
		}
		if r.GetType() == "cronjob" && name != "" {
			if _, gerr := c.BatchV1().CronJobs(ns).Get(ctx, name, get); gerr != nil {
				return nil, gerr
			}
		}
		l, lerr := c.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
		if lerr != nil {
			return nil, lerr
		}
		for _, x := range l.Items {
			if r.GetType() == "cronjob" {
				// A cronjob's pods are those of the jobs it controls.
				owner := metav1.GetControllerOf(&x)
				if owner == nil || owner.Kind != "CronJob" || (name != "" && owner.Name != name) {
					continue
				}
			}
			err = cmp.Or(err, add(x.Spec.Selector))
		}
	case "service":
		if name != "" {
			x, gerr := c.CoreV1().Services(ns).Get(ctx, name, get)
			if gerr != nil {
				return nil, gerr
			}
			if len(x.Spec.Selector) > 0 {
				sels = append(sels, labels.SelectorFromSet(x.Spec.Selector))
			}
			return sels, nil
		}
		l, lerr := c.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if lerr != nil {
			return nil, lerr
		}
		for _, x := range l.Items {
			if len(x.Spec.Selector) > 0 {
				sels = append(sels, labels.SelectorFromSet(x.Spec.Selector))
			}
		}
	default:
		return nil, fmt.Errorf("resolve %s: unknown type", tapapi.String(r))
	}
	return sels, err
}

// running keeps the pods that run and have an IP, sorted by name; meshed
// keeps only those with a proxy.
func running(pods []corev1.Pod, meshed bool) []*corev1.Pod {
	var out []*corev1.Pod
	for i := range pods {
		p := &pods[i]
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || !podIP(p).IsValid() {
			continue
		}
		if _, ok := p.Labels[meshmeta.LabelControlPlaneNS]; meshed && !ok {
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *corev1.Pod) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// podIP returns the pod's primary IP, or the zero Addr.
func podIP(p *corev1.Pod) netip.Addr {
	a, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// podIPs returns every IP of the pod.
func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	if a := podIP(p); a.IsValid() && !slices.Contains(out, a) {
		out = append(out, a)
	}
	return out
}
