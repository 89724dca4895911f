// Package podwatch is the node agent's Kubernetes side: it watches the pods
// of its node and enrolls each meshed pod with the agent once its proxy is
// up, unenrolls it when it goes, and reconciles the agent's enrollments with
// the node's pods at start and periodically, so that nothing is lost or
// leaked across agent restarts.
//
// A pod is enrolled when all of these hold:
//   - it carries the label sluice.io/control-plane-ns (meshmeta.LabelControlPlaneNS);
//   - its annotation sluice.io/interception-mode (meshmeta.AnnotationMode) is
//     ebpf or absent, and the agent runs in eBPF mode. A pod injected for
//     iptables mode carries the sluice-init container that installs its rules,
//     and the agent leaves it alone; an eBPF-mode pod on an iptables-mode agent
//     is logged as a warning and not enrolled (its proxy never reports ready);
//   - it does not use the host network and has not finished;
//   - its sluice-proxy container (a native sidecar, or a regular container)
//     is running, and its pod IPs are known;
//   - a process of the pod outside the host's network namespace is found
//     through the kubelet's cgroup layout (see PodCgroupPaths) under the cgroup
//     roots, v2 first. Until then the pod is pending and retried with backoff.
//
// The request names the pod (namespace, name, UID), its IPs, one of its
// processes by pid (the agent resolves /proc/<pid>/ns/net) and the
// configuration of PodConfig. Config annotations are read when the pod is
// enrolled; a bad one is logged with the pod and the annotation, and the pod
// is not enrolled until it changes.
//
// A pod is unenrolled when it is deleted or leaves the node, finishes, loses
// the label or otherwise stops qualifying, or is replaced by a pod of the same
// name; when its network namespace changes (its sandbox was recreated) the old
// enrollment is removed and the new namespace enrolled. Enrollments without a
// pod UID, made by hand with `sluice-agent enroll`, are never touched.
//
// The agent running the watcher needs the host's PID namespace (hostPID) and
// cgroup file systems, and RBAC to get, list and watch pods.
package podwatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/podns"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// Defaults of Config.
const (
	DefaultResync   = time.Minute
	DefaultRetryMin = 250 * time.Millisecond
	DefaultRetryMax = 30 * time.Second
	DefaultTimeout  = 30 * time.Second
)

// pendingWarnAfter is the retry at which a pod whose processes are still
// not found is logged as a warning rather than at debug level: about a
// minute into the default backoff.
const pendingWarnAfter = 8

// Config of a Watcher.
type Config struct {
	// Client reads pods. Required.
	Client kubernetes.Interface
	// NodeName is this node: only pods with spec.nodeName equal to it are
	// watched. Required.
	NodeName string
	// Enroller enrolls and unenrolls pods: Local(manager) in the agent, or
	// an *api.Client. Required.
	Enroller Enroller
	// Mode is the agent's interception mode; empty means eBPF.
	Mode api.Mode
	// CgroupRoots are the directories searched, in order, for the kubelet's
	// pod cgroups (each holding kubepods/ or kubepods.slice/). Nil means
	// FindCgroupRoots: the cgroup v2 mount, then the v1 hierarchies.
	CgroupRoots []string
	// ProcRoot is the proc file system of the host's PID namespace; empty
	// means /proc.
	ProcRoot string
	// NetNSCookie returns the cookie of the network namespace at path
	// (<ProcRoot>/<pid>/ns/net): the key the agent enrolls it under, which
	// tells a recreated sandbox from the enrolled one. Nil means
	// NetNSCookieWith(nil) (SO_NETNS_COOKIE); the agent passes the method
	// its enrollment manager uses.
	NetNSCookie func(path string) (uint64, error)
	// Logger receives the watcher's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the watcher's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Resync is how often every meshed pod and every enrollment of a pod is
	// checked again; zero means DefaultResync.
	Resync time.Duration
	// RetryMin and RetryMax bound the exponential backoff of a pod whose
	// enrollment failed or whose processes are not found yet; zero means
	// DefaultRetryMin and DefaultRetryMax.
	RetryMin, RetryMax time.Duration
	// Timeout bounds the handling of one pod (its calls to the Enroller);
	// zero means DefaultTimeout.
	Timeout time.Duration
}

// NetNSCookieWith returns a Config.NetNSCookie that opens the namespace
// with podns and learns its cookie with f (nil: podns.SockoptCookie).
func NetNSCookieWith(f podns.CookieFunc) func(path string) (uint64, error) {
	if f == nil {
		f = podns.SockoptCookie
	}
	return func(path string) (uint64, error) {
		ns, err := podns.OpenWith(path, f)
		if err != nil {
			return 0, err
		}
		defer ns.Close()
		return ns.Cookie, nil
	}
}

// Watcher enrolls the meshed pods of one node. Create it with New, run it
// with Run.
type Watcher struct {
	cfg     Config
	log     *slog.Logger
	finder  procFinder
	queue   workqueue.TypedRateLimitingInterface[string]
	factory informers.SharedInformerFactory
	pods    corelisters.PodLister
	synced  cache.InformerSynced
	metrics *watchMetrics
	started atomic.Bool

	// Used by the single worker only.
	pending map[string]bool   // pods waiting for their processes
	noted   map[string]string // pod key → the warning last logged for it
}

// New checks cfg, fills in its defaults and sets up the pod informer and
// the metrics. Nothing runs until Run.
func New(cfg Config) (*Watcher, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("podwatch: no Kubernetes client")
	case cfg.NodeName == "":
		return nil, errors.New("podwatch: no node name")
	case cfg.Enroller == nil:
		return nil, errors.New("podwatch: no enroller")
	}
	if cfg.Mode == "" {
		cfg.Mode = api.ModeEBPF
	}
	if cfg.Mode != api.ModeEBPF && cfg.Mode != api.ModeIPTables {
		return nil, fmt.Errorf("podwatch: unknown mode %q", cfg.Mode)
	}
	if cfg.CgroupRoots == nil {
		roots, err := FindCgroupRoots()
		if err != nil {
			return nil, fmt.Errorf("podwatch: %w", err)
		}
		cfg.CgroupRoots = roots
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.NetNSCookie == nil {
		cfg.NetNSCookie = NetNSCookieWith(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	w := &Watcher{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "podwatch"),
		finder:  procFinder{roots: cfg.CgroupRoots, procRoot: cfg.ProcRoot},
		metrics: m,
		queue: workqueue.NewTypedRateLimitingQueue(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryMin, cfg.RetryMax)),
		pending: map[string]bool{},
		noted:   map[string]string{},
	}
	w.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		}))
	pods := w.factory.Core().V1().Pods()
	inf := pods.Informer()
	if err := inf.SetTransform(dropManagedFields); err != nil {
		return nil, fmt.Errorf("podwatch: set informer transform: %w", err)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.onAdd,
		UpdateFunc: w.onUpdate,
		DeleteFunc: w.onDelete,
	}); err != nil {
		return nil, fmt.Errorf("podwatch: add pod event handler: %w", err)
	}
	w.pods = pods.Lister()
	w.synced = inf.HasSynced
	return w, nil
}

// dropManagedFields keeps the informer's cache small.
func dropManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
	}
	return obj, nil
}

// meshed reports whether a pod carries the meshed-pod label. Events of other
// pods are ignored: they need nothing unless they are enrolled, which the
// periodic reconcile finds from the enrollments.
func meshed(obj any) bool {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return false
	}
	_, ok = p.Labels[meshmeta.LabelControlPlaneNS]
	return ok
}

func (w *Watcher) onAdd(obj any) {
	if meshed(obj) {
		w.enqueue(obj)
	}
}

func (w *Watcher) onUpdate(old, obj any) {
	if meshed(obj) || meshed(old) {
		w.enqueue(obj)
	}
}

func (w *Watcher) onDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		if _, isPod := t.Obj.(*corev1.Pod); !isPod || meshed(t.Obj) {
			w.queue.Add(t.Key)
		}
		return
	}
	if meshed(obj) {
		w.enqueue(obj)
	}
}

func (w *Watcher) enqueue(obj any) {
	key, err := cache.MetaNamespaceKeyFunc(obj)
	if err != nil {
		w.log.Warn("pod without a key", "err", err)
		return
	}
	w.queue.Add(key)
}

// Run watches pods until ctx ends, then returns nil. It reconciles once
// the pod cache has synced and every Resync after. Call it once.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.started.CompareAndSwap(false, true) {
		return errors.New("podwatch: Run called twice")
	}
	defer w.factory.Shutdown()
	defer w.queue.ShutDown()
	w.factory.Start(ctx.Done())
	w.log.Info("watching pods", "node", w.cfg.NodeName, "mode", w.cfg.Mode, "cgroupRoots", w.cfg.CgroupRoots)
	if !cache.WaitForCacheSync(ctx.Done(), w.synced) {
		return nil
	}
	w.reconcile(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for w.next(ctx) {
		}
	}()
	t := time.NewTicker(w.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.queue.ShutDown()
			<-done
			w.log.Info("stopped watching pods")
			return nil
		case <-t.C:
			w.reconcile(ctx)
		}
	}
}

// reconcile queues every meshed pod of the node and every pod the agent
// has an enrollment for; handling each brings the two into agreement.
func (w *Watcher) reconcile(ctx context.Context) {
	w.metrics.reconciles.Inc()
	keys := map[string]bool{}
	lctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	ens, err := w.cfg.Enroller.List(lctx)
	cancel()
	if err != nil {
		w.log.Warn("reconcile: list enrollments", "err", err)
	}
	for _, e := range ens {
		if e.Pod.UID != "" {
			keys[e.Pod.Namespace+"/"+e.Pod.Name] = true
		}
	}
	pods, err := w.pods.List(labels.Everything())
	if err != nil {
		w.log.Warn("reconcile: list pods", "err", err)
	}
	for _, p := range pods {
		if meshed(p) {
			keys[p.Namespace+"/"+p.Name] = true
		}
	}
	w.log.Debug("reconcile", "pods", len(keys))
	for k := range keys {
		w.queue.Add(k)
	}
}

// next handles one queued pod; false means the queue was shut down.
func (w *Watcher) next(ctx context.Context) bool {
	key, quit := w.queue.Get()
	if quit {
		return false
	}
	defer w.queue.Done(key)
	sctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	err := w.sync(sctx, key)
	cancel()
	switch {
	case err == nil:
		w.queue.Forget(key)
	case ctx.Err() != nil:
		// Stopping.
	default:
		n := w.queue.NumRequeues(key)
		var pe *pendingError
		if errors.As(err, &pe) {
			lvl := slog.LevelDebug
			if n == pendingWarnAfter {
				lvl = slog.LevelWarn
			}
			w.log.Log(ctx, lvl, "pod's processes not found yet; retrying", "pod", key, "attempt", n+1, "err", err)
		} else {
			w.log.Warn("handle pod; retrying", "pod", key, "attempt", n+1, "err", err)
		}
		w.queue.AddRateLimited(key)
	}
	return true
}

// pendingError: the pod cannot be enrolled yet because its processes are not
// visible; retried with backoff.
type pendingError struct{ err error }

func (e *pendingError) Error() string { return e.err.Error() }
func (e *pendingError) Unwrap() error { return e.err }

// sync brings the enrollments of the pod named key into line with the pod.
// A nil error means done until the pod changes; an error is retried.
func (w *Watcher) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		w.log.Warn("bad pod key", "key", key, "err", err)
		return nil
	}
	ens, err := w.cfg.Enroller.List(ctx)
	if err != nil {
		return fmt.Errorf("list enrollments: %w", err)
	}
	var mine []api.Enrollment
	for _, e := range ens {
		if e.Pod.UID != "" && e.Pod.Namespace == ns && e.Pod.Name == name {
			mine = append(mine, e)
		}
	}
	pod, err := w.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) || err == nil && pod.Spec.NodeName != w.cfg.NodeName {
		w.setPending(key, false)
		delete(w.noted, key)
		return w.unenroll(ctx, key, mine, ReasonDeleted)
	}
	if err != nil {
		return fmt.Errorf("get pod: %w", err)
	}
	var current, stale []api.Enrollment
	for _, e := range mine {
		if types.UID(e.Pod.UID) == pod.UID {
			current = append(current, e)
		} else {
			stale = append(stale, e)
		}
	}
	if err := w.unenroll(ctx, key, stale, ReasonReplaced); err != nil {
		return err
	}

	v, why, warn := assess(pod, w.cfg.NodeName, w.cfg.Mode)
	if warn != nil {
		w.note(key, pod.UID, warn)
	}
	switch v {
	case leave:
		w.setPending(key, false)
		reason := ReasonUnmeshed
		if why == "finished" {
			reason = ReasonFinished
		}
		if len(current) > 0 {
			w.log.Info("pod no longer steered", "pod", key, "why", why)
		}
		return w.unenroll(ctx, key, current, reason)
	case wait:
		w.setPending(key, false)
		w.log.Debug("pod not ready for enrollment", "pod", key, "why", why)
		return nil
	}

	pid, err := w.finder.find(pod.UID)
	if errors.Is(err, errNoProcess) {
		w.setPending(key, len(current) == 0)
		return &pendingError{err}
	}
	if err != nil {
		return err
	}
	cookie, err := w.cfg.NetNSCookie(filepath.Join(w.cfg.ProcRoot, strconv.Itoa(pid), "ns/net"))
	if err != nil {
		// Most likely the process exited meanwhile.
		w.setPending(key, len(current) == 0)
		return &pendingError{fmt.Errorf("netns cookie of pid %d: %w", pid, err)}
	}
	var other []api.Enrollment
	enrolled := false
	for _, e := range current {
		if e.NetNSCookie == cookie {
			enrolled = true
		} else {
			other = append(other, e)
		}
	}
	if len(other) > 0 {
		w.log.Info("pod's network namespace changed (sandbox recreated)", "pod", key, "cookie", cookie)
	}
	if err := w.unenroll(ctx, key, other, ReasonSandbox); err != nil {
		return err
	}
	if enrolled {
		w.setPending(key, false)
		return nil
	}
	for _, e := range ens {
		if e.NetNSCookie == cookie && e.Pod.UID == "" {
			w.setPending(key, false)
			w.note(key, pod.UID, fmt.Errorf("its network namespace was enrolled by hand (netns %s, cookie %d); that enrollment is left alone", e.NetNS, cookie))
			return nil
		}
	}
	cfg, err := PodConfig(pod)
	if err != nil {
		w.setPending(key, false)
		if w.note(key, pod.UID, err) {
			w.metrics.enrollments.WithLabelValues(OutcomeRejected).Inc()
		}
		return nil
	}
	ips, _ := podIPs(pod) // assess saw them parse
	req := api.EnrollRequest{
		PID:       pid,
		Pod:       api.PodRef{Namespace: ns, Name: name, UID: string(pod.UID)},
		Addresses: ips,
		Config:    cfg,
	}
	en, err := w.cfg.Enroller.Enroll(ctx, req)
	if err != nil {
		w.metrics.enrollments.WithLabelValues(OutcomeFailed).Inc()
		if isConflict(err) {
			return fmt.Errorf("enroll pod by pid %d: %w (retrying until the holder goes)", pid, err)
		}
		return fmt.Errorf("enroll pod by pid %d: %w", pid, err)
	}
	if en.NetNSCookie != cookie {
		// The process exited and its pid was reused between the two looks.
		uerr := w.cfg.Enroller.Unenroll(ctx, en.NetNSCookie)
		return errors.Join(fmt.Errorf("pid %d changed network namespace while enrolling (cookie %d, enrolled %d)", pid, cookie, en.NetNSCookie), uerr)
	}
	w.metrics.enrollments.WithLabelValues(OutcomeEnrolled).Inc()
	w.setPending(key, false)
	delete(w.noted, key)
	w.log.Info("enrolled pod", "pod", key, "uid", pod.UID, "pid", pid, "cookie", en.NetNSCookie, "addresses", en.Addresses)
	return nil
}

// unenroll removes enrollments of the pod named key. One already gone (the
// agent's own clean-up of destroyed namespaces) is fine.
func (w *Watcher) unenroll(ctx context.Context, key string, ens []api.Enrollment, reason string) error {
	var errs []error
	for _, e := range ens {
		err := w.cfg.Enroller.Unenroll(ctx, e.NetNSCookie)
		switch {
		case isNotFound(err):
			w.log.Debug("enrollment already gone", "pod", key, "cookie", e.NetNSCookie)
		case err != nil:
			errs = append(errs, fmt.Errorf("unenroll pod %s (netns cookie %d): %w", key, e.NetNSCookie, err))
		default:
			w.metrics.unenrollments.WithLabelValues(reason).Inc()
			w.log.Info("unenrolled pod", "pod", key, "uid", e.Pod.UID, "cookie", e.NetNSCookie, "reason", reason)
		}
	}
	return errors.Join(errs...)
}

// setPending records whether the pod waits for its processes.
func (w *Watcher) setPending(key string, pending bool) {
	if pending {
		w.pending[key] = true
	} else {
		delete(w.pending, key)
	}
	w.metrics.pending.Set(float64(len(w.pending)))
}

// note logs why a pod is not enrolled, once per pod and reason; it reports
// whether the warning is new.
func (w *Watcher) note(key string, uid types.UID, err error) bool {
	id := string(uid) + "\x00" + err.Error()
	if w.noted[key] == id {
		return false
	}
	w.noted[key] = id
	attrs := []any{"pod", key, "uid", uid, "err", err}
	var ae *AnnotationError
	if errors.As(err, &ae) {
		attrs = append(attrs, "annotation", ae.Annotation, "value", ae.Value)
	}
	w.log.Warn("pod not enrolled", attrs...)
	return true
}
