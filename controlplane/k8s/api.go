package k8s

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	appsinformers "k8s.io/client-go/informers/apps/v1"
	batchinformers "k8s.io/client-go/informers/batch/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	batchlisters "k8s.io/client-go/listers/batch/v1"
	"k8s.io/client-go/tools/cache"
)

// Resource is a kind of Kubernetes object an API can watch.
type Resource int

// The resources an API can watch. Ask NewAPI for only those a service
// reads: each is a watch on the API server and a cache in memory.
const (
	Pod Resource = iota + 1
	Service
	EndpointSlice
	Namespace
	Node
	ReplicaSet
	Deployment
	StatefulSet
	DaemonSet
	Job
	CronJob
)

// AllResources returns every Resource (NewFakeAPI's API serves them all).
func AllResources() []Resource {
	return []Resource{Pod, Service, EndpointSlice, Namespace, Node, ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob}
}

// String returns the resource's plural name, as kubectl spells it
// ("pods", "endpointslices").
func (r Resource) String() string {
	switch r {
	case Pod:
		return "pods"
	case Service:
		return "services"
	case EndpointSlice:
		return "endpointslices"
	case Namespace:
		return "namespaces"
	case Node:
		return "nodes"
	case ReplicaSet:
		return "replicasets"
	case Deployment:
		return "deployments"
	case StatefulSet:
		return "statefulsets"
	case DaemonSet:
		return "daemonsets"
	case Job:
		return "jobs"
	case CronJob:
		return "cronjobs"
	}
	return fmt.Sprintf("Resource(%d)", int(r))
}

// API is a set of shared informers over the resources a service asked for
// in NewAPI, with their listers. Asking an accessor for a resource that
// was not asked for is a programming error: it panics, naming the
// resource. Build it, add event handlers and indexers, then Start and Sync.
type API struct {
	client    kubernetes.Interface
	factory   informers.SharedInformerFactory
	resources []Resource
	informers map[Resource]cache.SharedIndexInformer
	// Listers GetOwnerKindAndName reads, made once (nil when not served).
	rsLister  appslisters.ReplicaSetLister
	jobLister batchlisters.JobLister

	mu      sync.Mutex
	started bool
}

// NewAPI returns an API over client that watches resources (and only
// them) in every namespace, once started. The cached objects carry no
// managedFields, which nothing here reads and which take much of their
// memory.
func NewAPI(client kubernetes.Interface, resources ...Resource) *API {
	a := &API{
		client:    client,
		factory:   informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripManagedFields)),
		informers: map[Resource]cache.SharedIndexInformer{},
	}
	for _, r := range resources {
		if _, ok := a.informers[r]; ok {
			continue
		}
		// Getting each informer registers it with the factory, so that
		// Start starts it.
		a.informers[r] = a.informerOf(r)
		a.resources = append(a.resources, r)
	}
	if inf, ok := a.informers[ReplicaSet]; ok {
		a.rsLister = appslisters.NewReplicaSetLister(inf.GetIndexer())
	}
	if inf, ok := a.informers[Job]; ok {
		a.jobLister = batchlisters.NewJobLister(inf.GetIndexer())
	}
	return a
}

// stripManagedFields drops metadata.managedFields from cached objects.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// informerOf returns the factory's informer of r.
func (a *API) informerOf(r Resource) cache.SharedIndexInformer {
	f := a.factory
	switch r {
	case Pod:
		return f.Core().V1().Pods().Informer()
	case Service:
		return f.Core().V1().Services().Informer()
	case EndpointSlice:
		return f.Discovery().V1().EndpointSlices().Informer()
	case Namespace:
		return f.Core().V1().Namespaces().Informer()
	case Node:
		return f.Core().V1().Nodes().Informer()
	case ReplicaSet:
		return f.Apps().V1().ReplicaSets().Informer()
	case Deployment:
		return f.Apps().V1().Deployments().Informer()
	case StatefulSet:
		return f.Apps().V1().StatefulSets().Informer()
	case DaemonSet:
		return f.Apps().V1().DaemonSets().Informer()
	case Job:
		return f.Batch().V1().Jobs().Informer()
	case CronJob:
		return f.Batch().V1().CronJobs().Informer()
	}
	panic(fmt.Sprintf("k8s: unknown resource %v", r))
}

// Client returns the clientset the API watches through.
func (a *API) Client() kubernetes.Interface { return a.client }

// Resources returns the resources the API was built with, in the order
// they were first asked for.
func (a *API) Resources() []Resource { return slices.Clone(a.resources) }

// Serves reports whether the API was built with r.
func (a *API) Serves(r Resource) bool {
	_, ok := a.informers[r]
	return ok
}

// need panics unless the API was built with r.
func (a *API) need(r Resource) {
	if !a.Serves(r) {
		panic(fmt.Sprintf("k8s: API asked for %s, which it was not built with (NewAPI(client, %s)); add k8s.%s to the resources it is built with",
			r, joinResources(a.resources), goName(r)))
	}
}

// goName returns the Go constant of r, for the panic message.
func goName(r Resource) string {
	names := map[Resource]string{
		Pod: "Pod", Service: "Service", EndpointSlice: "EndpointSlice", Namespace: "Namespace", Node: "Node",
		ReplicaSet: "ReplicaSet", Deployment: "Deployment", StatefulSet: "StatefulSet", DaemonSet: "DaemonSet",
		Job: "Job", CronJob: "CronJob",
	}
	if n, ok := names[r]; ok {
		return n
	}
	return r.String()
}

func joinResources(rs []Resource) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = goName(r)
	}
	return strings.Join(s, ", ")
}

// Pod returns the pod informer and lister.
func (a *API) Pod() coreinformers.PodInformer {
	a.need(Pod)
	return a.factory.Core().V1().Pods()
}

// Service returns the service informer and lister.
func (a *API) Service() coreinformers.ServiceInformer {
	a.need(Service)
	return a.factory.Core().V1().Services()
}

// EndpointSlice returns the EndpointSlice (discovery.k8s.io/v1) informer
// and lister.
func (a *API) EndpointSlice() discoveryinformers.EndpointSliceInformer {
	a.need(EndpointSlice)
	return a.factory.Discovery().V1().EndpointSlices()
}

// Namespace returns the namespace informer and lister.
func (a *API) Namespace() coreinformers.NamespaceInformer {
	a.need(Namespace)
	return a.factory.Core().V1().Namespaces()
}

// Node returns the node informer and lister.
func (a *API) Node() coreinformers.NodeInformer {
	a.need(Node)
	return a.factory.Core().V1().Nodes()
}

// ReplicaSet returns the ReplicaSet informer and lister.
func (a *API) ReplicaSet() appsinformers.ReplicaSetInformer {
	a.need(ReplicaSet)
	return a.factory.Apps().V1().ReplicaSets()
}

// Deployment returns the Deployment informer and lister.
func (a *API) Deployment() appsinformers.DeploymentInformer {
	a.need(Deployment)
	return a.factory.Apps().V1().Deployments()
}

// StatefulSet returns the StatefulSet informer and lister.
func (a *API) StatefulSet() appsinformers.StatefulSetInformer {
	a.need(StatefulSet)
	return a.factory.Apps().V1().StatefulSets()
}

// DaemonSet returns the DaemonSet informer and lister.
func (a *API) DaemonSet() appsinformers.DaemonSetInformer {
	a.need(DaemonSet)
	return a.factory.Apps().V1().DaemonSets()
}

// Job returns the Job informer and lister.
func (a *API) Job() batchinformers.JobInformer {
	a.need(Job)
	return a.factory.Batch().V1().Jobs()
}

// CronJob returns the CronJob informer and lister.
func (a *API) CronJob() batchinformers.CronJobInformer {
	a.need(CronJob)
	return a.factory.Batch().V1().CronJobs()
}

// Start starts the informers, which list and then watch their resources
// until ctx ends. It does not wait; Sync does. Starting twice does nothing
// more.
func (a *API) Start(ctx context.Context) {
	a.mu.Lock()
	a.started = true
	a.mu.Unlock()
	a.factory.StartWithContext(ctx)
}

// Wait blocks until the informers have stopped, once the context given
// to Start has ended.
func (a *API) Wait() {
	a.factory.Shutdown()
}

// ErrNotStarted is returned by Sync when Start was not called first.
var ErrNotStarted = errors.New("informers not started")

// Sync waits until every informer has listed its resource once and its
// cache is filled. When ctx ends first it returns an error naming the
// resources that were not synced (a forbidden list, for instance, never
// syncs: the reason is in client-go's log) and wrapping ctx's error.
func (a *API) Sync(ctx context.Context) error {
	a.mu.Lock()
	started := a.started
	a.mu.Unlock()
	if !started {
		return fmt.Errorf("sync informer caches: %w", ErrNotStarted)
	}
	res := a.factory.WaitForCacheSyncWithContext(ctx)
	if res.Err == nil {
		return nil
	}
	var missing []string
	for _, r := range a.resources {
		if !a.informers[r].HasSynced() {
			missing = append(missing, r.String())
		}
	}
	return fmt.Errorf("sync informer caches (%s not synced): %w", strings.Join(missing, ", "), res.Err)
}

// HasSynced reports whether the API was started and every informer's
// cache has been filled.
func (a *API) HasSynced() bool {
	a.mu.Lock()
	started := a.started
	a.mu.Unlock()
	if !started {
		return false
	}
	for _, inf := range a.informers {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// GetOwnerKindAndName returns the kind (lower case, as in metric labels:
// "deployment", "statefulset", "daemonset", "job", "cronjob",
// "replicaset") and name of the workload that owns pod, as Linkerd's
// function of that name does: the pod's controller, followed from a
// ReplicaSet to its Deployment and from a Job to its CronJob. A pod with
// no controller is its own owner ("pod", its name).
//
// The ReplicaSet and the Job are read from the API's listers when it was
// built with ReplicaSet and Job. A ReplicaSet the lister does not have (or
// an API without ReplicaSet) is taken to belong to a Deployment when its
// name is the pod's pod-template-hash label appended to a name, as the
// Deployment controller names them; a Job not found stays a job.
func (a *API) GetOwnerKindAndName(pod *corev1.Pod) (kind, name string) {
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return "pod", pod.Name
	}
	switch ref.Kind {
	case "ReplicaSet":
		if a.rsLister != nil {
			rs, err := a.rsLister.ReplicaSets(pod.Namespace).Get(ref.Name)
			if err == nil {
				if owner := metav1.GetControllerOf(rs); owner != nil {
					return strings.ToLower(owner.Kind), owner.Name
				}
				return "replicaset", rs.Name
			}
		}
		if hash := pod.Labels[appsv1.DefaultDeploymentUniqueLabelKey]; hash != "" {
			if deploy, ok := strings.CutSuffix(ref.Name, "-"+hash); ok && deploy != "" {
				return "deployment", deploy
			}
		}
		return "replicaset", ref.Name
	case "Job":
		if a.jobLister != nil {
			job, err := a.jobLister.Jobs(pod.Namespace).Get(ref.Name)
			if err == nil {
				if owner := metav1.GetControllerOf(job); owner != nil {
					return strings.ToLower(owner.Kind), owner.Name
				}
			}
		}
		return "job", ref.Name
	}
	return strings.ToLower(ref.Kind), ref.Name
}
