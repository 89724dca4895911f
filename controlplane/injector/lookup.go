package injector

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/sluice-mesh/sluice/controlplane/inject"
)

// lookupTimeout bounds each API call the webhook makes for one admission;
// the API server gives the whole call 10 s by default.
const lookupTimeout = 3 * time.Second

// NamespaceGetter reads the annotations of a namespace.
type NamespaceGetter interface {
	NamespaceAnnotations(ctx context.Context, name string) (map[string]string, error)
}

// NewNamespaceGetter reads namespaces from lister (an informer's cache),
// and from client when the cache does not have the namespace yet (one just
// created). Either may be nil, not both.
func NewNamespaceGetter(lister corelisters.NamespaceLister, client kubernetes.Interface) NamespaceGetter {
	return &namespaces{lister: lister, client: client}
}

type namespaces struct {
	lister corelisters.NamespaceLister
	client kubernetes.Interface
}

func (n *namespaces) NamespaceAnnotations(ctx context.Context, name string) (map[string]string, error) {
	if n.lister != nil {
		ns, err := n.lister.Get(name)
		if err == nil {
			return ns.Annotations, nil
		}
		if !apierrors.IsNotFound(err) || n.client == nil {
			return nil, fmt.Errorf("get namespace %s: %w", name, err)
		}
	}
	if n.client == nil {
		return nil, errors.New("no namespace lister and no client")
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ns, err := n.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return ns.Annotations, nil
}

// OwnerResolver finds the workload a pod belongs to.
type OwnerResolver interface {
	// Owner returns the pod's workload in namespace: its controller
	// (a ReplicaSet's Deployment, a Job's CronJob), or Kind "Pod" with the
	// pod's name when it has none.
	Owner(ctx context.Context, pod *corev1.Pod, namespace string) inject.Workload
}

// NewOwnerResolver resolves owners with client: it reads a ReplicaSet to
// find its Deployment and a Job to find its CronJob. Where client is nil
// or the read fails, a ReplicaSet named <deployment>-<pod-template-hash>
// whose pod carries that pod-template-hash is taken for the Deployment's,
// as the Deployment controller names them; otherwise the direct owner is
// the workload.
func NewOwnerResolver(client kubernetes.Interface) OwnerResolver {
	return &owners{client: client}
}

type owners struct {
	client kubernetes.Interface
}

func (o *owners) Owner(ctx context.Context, pod *corev1.Pod, namespace string) inject.Workload {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return inject.Workload{Kind: "Pod", Name: pod.Name, Namespace: namespace}
	}
	w := inject.Workload{Kind: ref.Kind, Name: ref.Name, Namespace: namespace}
	group, _, _ := strings.Cut(ref.APIVersion, "/")
	switch {
	case ref.Kind == "ReplicaSet" && group == "apps":
		if o.client != nil {
			ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
			defer cancel()
			rs, err := o.client.AppsV1().ReplicaSets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err == nil {
				if up := metav1.GetControllerOf(rs); up != nil && up.Kind == "Deployment" {
					return inject.Workload{Kind: "Deployment", Name: up.Name, Namespace: namespace}
				}
				return w
			}
		}
		if hash := pod.Labels["pod-template-hash"]; hash != "" {
			if d, ok := strings.CutSuffix(ref.Name, "-"+hash); ok && d != "" {
				return inject.Workload{Kind: "Deployment", Name: d, Namespace: namespace}
			}
		}
	case ref.Kind == "Job" && group == "batch" && o.client != nil:
		ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		defer cancel()
		job, err := o.client.BatchV1().Jobs(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err == nil {
			if up := metav1.GetControllerOf(job); up != nil && up.Kind == "CronJob" {
				return inject.Workload{Kind: "CronJob", Name: up.Name, Namespace: namespace}
			}
		}
	}
	return w
}
