// Package watcher is the bottom layer of the destination service: it owns
// the informer handlers on Services, EndpointSlices and Pods, resolves a
// Target (a service port, a headless service's pod, a cluster IP or a pod
// IP) into its endpoints, and publishes the changes of each watched Target
// to its Listeners as Add, Remove and NoEndpoints. It knows nothing of
// protobuf or gRPC; the destination package translates for the proxies.
//
// Resolution rules:
//
//   - A service port maps to the EndpointSlice port with the service
//     port's name, so a named targetPort resolves per slice. A port the
//     service does not declare (for TCP) does not exist: the proxy then
//     forwards to the original destination, as without the mesh.
//   - A target that does not exist is answered NoEndpoints(false) at
//     once and stays watched: it is reported when it comes to exist.
//   - Endpoints whose Ready condition is true (or unset) are served. When
//     none is ready, those that are serving and terminating are served
//     instead, as kube-proxy does, so that connections keep going to
//     pods that are shutting down gracefully rather than failing.
//   - Only the EndpointSlices of the service's primary IP family are read
//     (a cluster IP target: its own family).
//   - A headless service answers on any port, with the pods' IPs and the
//     port asked for: without a cluster IP no one maps ports, and the
//     client connects to the pod on the port it wrote.
//     "host.svc.ns.svc..." names the endpoint with that hostname.
//   - An ExternalName service does not exist for the destination service
//     (no_endpoints{exists:false}): the proxy then forwards to the
//     original destination, the external name's address.
//   - An IP that is a service's cluster IP resolves as that service's
//     port; else the IP of a running pod (not Succeeded nor Failed) gives
//     that pod, whatever its readiness; for pods on the host network, the
//     one that declares the port. Otherwise the IP does not exist.
//   - An endpoint whose pod is not in the cache yet is left out until the
//     pod arrives, so that a meshed endpoint is never announced without
//     its identity.
package watcher

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/sluice-mesh/sluice/controlplane/k8s"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// Resources returns the resources a Watcher's API must be built with.
func Resources() []k8s.Resource {
	return []k8s.Resource{k8s.Service, k8s.EndpointSlice, k8s.Pod, k8s.ReplicaSet, k8s.Job}
}

// Names of the indexes the Watcher adds to the informers.
const (
	indexClusterIP = "sluice-destination-cluster-ip" // services by spec.clusterIPs
	indexPodIP     = "sluice-destination-pod-ip"     // pods by status.podIPs
	indexService   = "sluice-destination-service"    // EndpointSlices by namespace/service
)

// Watcher resolves Targets from the API's informer caches and publishes
// their changes to Listeners. Its methods are safe for concurrent use.
type Watcher struct {
	api      *k8s.API
	log      *slog.Logger
	services corelisters.ServiceLister
	pods     corelisters.PodLister
	svcIndex cache.Indexer
	podIndex cache.Indexer
	slices   cache.Indexer

	mu    sync.Mutex
	pubs  map[Target]*publisher
	bySvc map[ServiceID]map[*publisher]struct{}
	byPod map[types.NamespacedName]map[*publisher]struct{}
	byIP  map[netip.Addr]map[*publisher]struct{}
}

// New returns a Watcher over api, which must be built with Resources and
// not yet started (New adds indexes and event handlers to its informers).
// log may be nil.
func New(api *k8s.API, log *slog.Logger) (*Watcher, error) {
	for _, r := range Resources() {
		if !api.Serves(r) {
			return nil, fmt.Errorf("make destination watcher: the Kubernetes API is not built with %s", r)
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		api:      api,
		log:      log.With("component", "destination-watcher"),
		services: api.Service().Lister(),
		pods:     api.Pod().Lister(),
		svcIndex: api.Service().Informer().GetIndexer(),
		podIndex: api.Pod().Informer().GetIndexer(),
		slices:   api.EndpointSlice().Informer().GetIndexer(),
		pubs:     map[Target]*publisher{},
		bySvc:    map[ServiceID]map[*publisher]struct{}{},
		byPod:    map[types.NamespacedName]map[*publisher]struct{}{},
		byIP:     map[netip.Addr]map[*publisher]struct{}{},
	}
	if err := addIndex(api.Service().Informer(), indexClusterIP, serviceClusterIPs); err != nil {
		return nil, err
	}
	if err := addIndex(api.Pod().Informer(), indexPodIP, podIPs); err != nil {
		return nil, err
	}
	if err := addIndex(api.EndpointSlice().Informer(), indexService, sliceService); err != nil {
		return nil, err
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{api.Service().Informer(), handler(w.onService)},
		{api.EndpointSlice().Informer(), handler(w.onSlice)},
		{api.Pod().Informer(), handler(w.onPod)},
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return nil, fmt.Errorf("make destination watcher: add event handler: %w", err)
		}
	}
	return w, nil
}

// addIndex adds an index to inf unless one of that name is there.
func addIndex(inf cache.SharedIndexInformer, name string, f cache.IndexFunc) error {
	if _, ok := inf.GetIndexer().GetIndexers()[name]; ok {
		return nil
	}
	if err := inf.AddIndexers(cache.Indexers{name: f}); err != nil {
		return fmt.Errorf("make destination watcher: add index %s: %w", name, err)
	}
	return nil
}

// handler turns f, called with the old (nil on add) and new (nil on
// delete) object, into informer callbacks. Tombstones
// (cache.DeletedFinalStateUnknown, when a watch missed a deletion) are
// unwrapped; objects of another type are ignored.
func handler[T any](f func(old, cur *T)) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if o, ok := obj.(*T); ok {
				f(nil, o)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*T)
			n, ok2 := newObj.(*T)
			if ok1 && ok2 {
				f(o, n)
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if o, ok := obj.(*T); ok {
				f(o, nil)
			}
		},
	}
}

// Index functions.

func serviceClusterIPs(obj any) ([]string, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return nil, nil
	}
	return ipKeys(clusterIPs(svc)), nil
}

func podIPs(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	return ipKeys(ipsOfPod(pod)), nil
}

func sliceService(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

func ipKeys(ips []netip.Addr) []string {
	keys := make([]string, len(ips))
	for i, ip := range ips {
		keys[i] = ip.String()
	}
	return keys
}

// clusterIPs returns the valid cluster IPs of svc (none when headless).
func clusterIPs(svc *corev1.Service) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// ipsOfPod returns the pod's IPs.
func ipsOfPod(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, p := range pod.Status.PodIPs {
		if ip, err := netip.ParseAddr(p.IP); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	if len(out) == 0 && pod.Status.PodIP != "" {
		if ip, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// Event handlers. Each finds the watched targets an object touches, under
// the lock, and refreshes them.

func (w *Watcher) onService(old, cur *corev1.Service) {
	w.mu.Lock()
	defer w.mu.Unlock()
	affected := map[*publisher]struct{}{}
	for _, svc := range []*corev1.Service{old, cur} {
		if svc == nil {
			continue
		}
		maps.Copy(affected, w.bySvc[ServiceID{svc.Namespace, svc.Name}])
		for _, ip := range clusterIPs(svc) {
			maps.Copy(affected, w.byIP[ip])
		}
	}
	w.refresh(affected)
}

func (w *Watcher) onSlice(old, cur *discoveryv1.EndpointSlice) {
	w.mu.Lock()
	defer w.mu.Unlock()
	affected := map[*publisher]struct{}{}
	for _, s := range []*discoveryv1.EndpointSlice{old, cur} {
		if s == nil {
			continue
		}
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
			maps.Copy(affected, w.bySvc[ServiceID{s.Namespace, name}])
		}
	}
	w.refresh(affected)
}

func (w *Watcher) onPod(old, cur *corev1.Pod) {
	if old != nil && cur != nil && podFactsOf(old) == podFactsOf(cur) {
		// Nothing an endpoint says changed (a status condition, say).
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	affected := map[*publisher]struct{}{}
	for _, pod := range []*corev1.Pod{old, cur} {
		if pod == nil {
			continue
		}
		maps.Copy(affected, w.byPod[types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}])
		for _, ip := range ipsOfPod(pod) {
			maps.Copy(affected, w.byIP[ip])
		}
	}
	w.refresh(affected)
}

// podFacts is what resolution reads of a pod; an update that changes none
// of it changes no endpoint.
type podFacts struct {
	ips, ports                             string
	finished, hostNetwork                  bool
	serviceAccount, ownerKind, ownerName   string
	hash, controlPlaneNS, identity, opaque string
	opaqueSet                              bool
	created                                int64
}

func podFactsOf(pod *corev1.Pod) podFacts {
	f := podFacts{
		finished:       podFinished(pod),
		hostNetwork:    pod.Spec.HostNetwork,
		serviceAccount: pod.Spec.ServiceAccountName,
		hash:           pod.Labels[appsv1.DefaultDeploymentUniqueLabelKey],
		controlPlaneNS: pod.Labels[meshmeta.LabelControlPlaneNS],
		identity:       pod.Annotations[meshmeta.AnnotationIdentityMode],
		created:        pod.CreationTimestamp.UnixNano(),
	}
	f.opaque, f.opaqueSet = pod.Annotations[meshmeta.AnnotationOpaquePorts]
	if ref := metav1.GetControllerOf(pod); ref != nil {
		f.ownerKind, f.ownerName = ref.Kind, ref.Name
	}
	var ips, ports strings.Builder
	for _, ip := range ipsOfPod(pod) {
		ips.WriteString(ip.String() + ",")
	}
	for _, c := range allContainers(pod) {
		for _, p := range c.Ports {
			fmt.Fprintf(&ports, "%s=%d/%d/%s,", p.Name, p.ContainerPort, p.HostPort, p.Protocol)
		}
	}
	f.ips, f.ports = ips.String(), ports.String()
	return f
}

// podFinished reports whether the pod's containers have all ended for
// good: its IP may already belong to another pod.
func podFinished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// Subscribe adds l as a listener of t and gives it t's current state at
// once. Callers must Unsubscribe the same (t, l) when done.
func (w *Watcher) Subscribe(t Target, l Listener) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pubs[t]
	if p == nil {
		p = &publisher{target: t, listeners: map[Listener]struct{}{}}
		w.pubs[t] = p
		next := w.resolve(t)
		w.reindex(p, next.deps)
		p.state = next
		w.log.Debug("watching", "target", t.String())
	}
	p.listeners[l] = struct{}{}
	p.current(l)
}

// Unsubscribe removes l as a listener of t; a target with no listener
// left is no longer watched.
func (w *Watcher) Unsubscribe(t Target, l Listener) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pubs[t]
	if p == nil {
		return
	}
	delete(p.listeners, l)
	if len(p.listeners) == 0 {
		delete(w.pubs, t)
		w.reindex(p, deps{})
		w.log.Debug("stopped watching", "target", t.String())
	}
}

// Watched returns how many targets are watched.
func (w *Watcher) Watched() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pubs)
}

// refresh resolves the affected targets again and publishes what changed.
// Callers hold w.mu.
func (w *Watcher) refresh(affected map[*publisher]struct{}) {
	for p := range affected {
		next := w.resolve(p.target)
		w.reindex(p, next.deps)
		p.update(next)
	}
}

// deps are the objects a target's resolution read: a change to any of
// them may change its endpoints.
type deps struct {
	svc  ServiceID // zero: none
	ip   netip.Addr
	pods []types.NamespacedName
}

// reindex records that p now depends on d. Callers hold w.mu.
func (w *Watcher) reindex(p *publisher, d deps) {
	old := p.deps
	p.deps = d
	if old.svc != d.svc {
		if old.svc != (ServiceID{}) {
			unindex(w.bySvc, old.svc, p)
		}
		if d.svc != (ServiceID{}) {
			index(w.bySvc, d.svc, p)
		}
	}
	if old.ip != d.ip {
		if old.ip.IsValid() {
			unindex(w.byIP, old.ip, p)
		}
		if d.ip.IsValid() {
			index(w.byIP, d.ip, p)
		}
	}
	if !slices.Equal(old.pods, d.pods) {
		for _, k := range old.pods {
			unindex(w.byPod, k, p)
		}
		for _, k := range d.pods {
			index(w.byPod, k, p)
		}
	}
}

func index[K comparable](m map[K]map[*publisher]struct{}, k K, p *publisher) {
	s := m[k]
	if s == nil {
		s = map[*publisher]struct{}{}
		m[k] = s
	}
	s[p] = struct{}{}
}

func unindex[K comparable](m map[K]map[*publisher]struct{}, k K, p *publisher) {
	s := m[k]
	delete(s, p)
	if len(s) == 0 {
		delete(m, k)
	}
}

// state is a target's resolution.
type state struct {
	exists bool
	labels map[string]string
	addrs  map[netip.AddrPort]Address
	deps   deps
}

// resolve resolves t from the caches.
func (w *Watcher) resolve(t Target) state {
	if t.IP.IsValid() {
		return w.resolveIP(t.IP, t.Port)
	}
	return w.resolveService(t.Service, t.Port, t.Hostname, netip.Addr{})
}

// resolveService resolves a service port, or its endpoint named hostname
// when hostname is not empty. via, when valid, is the cluster IP the
// target named, which picks the IP family.
func (w *Watcher) resolveService(id ServiceID, port uint16, hostname string, via netip.Addr) state {
	st := state{deps: deps{svc: id}}
	svc, err := w.services.Services(id.Namespace).Get(id.Name)
	if err != nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return st
	}
	headless := svc.Spec.ClusterIP == corev1.ClusterIPNone
	if hostname != "" && !headless {
		return st
	}
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if p := &svc.Spec.Ports[i]; uint16(p.Port) == port && isTCP(p.Protocol) {
			sp = p
			break
		}
	}
	if sp == nil && !headless {
		return st
	}
	st.exists = true
	st.labels = map[string]string{"namespace": id.Namespace, "service": id.Name}

	family := primaryFamily(svc, via)
	type candidate struct {
		ready, serving, terminating bool
		pod                         *types.NamespacedName
	}
	candidates := map[netip.AddrPort]candidate{}
	objs, _ := w.slices.ByIndex(indexService, id.Namespace+"/"+id.Name)
	for _, obj := range objs {
		slice := obj.(*discoveryv1.EndpointSlice)
		if slice.AddressType != family {
			continue
		}
		epPort, ok := port, true
		if !headless {
			epPort, ok = slicePort(slice, sp.Name)
		}
		if !ok {
			continue
		}
		for _, e := range slice.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			if hostname != "" && (e.Hostname == nil || *e.Hostname != hostname) {
				continue
			}
			ip, err := netip.ParseAddr(e.Addresses[0])
			if err != nil {
				continue
			}
			ap := netip.AddrPortFrom(ip.Unmap(), epPort)
			c := candidates[ap]
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			c.ready = c.ready || ready
			c.serving = c.serving || (e.Conditions.Serving == nil && ready) || (e.Conditions.Serving != nil && *e.Conditions.Serving)
			c.terminating = c.terminating || (e.Conditions.Terminating != nil && *e.Conditions.Terminating)
			if ref := e.TargetRef; ref != nil && ref.Kind == "Pod" && c.pod == nil {
				ns := ref.Namespace
				if ns == "" {
					ns = slice.Namespace
				}
				c.pod = &types.NamespacedName{Namespace: ns, Name: ref.Name}
			}
			candidates[ap] = c
		}
	}
	use := func(c candidate) bool { return c.ready }
	if !slices.ContainsFunc(slices.Collect(maps.Values(candidates)), use) {
		use = func(c candidate) bool { return c.serving && c.terminating }
	}
	svcOpaque := serviceOpaque(svc, port)
	st.addrs = map[netip.AddrPort]Address{}
	for ap, c := range candidates {
		if !use(c) {
			continue
		}
		a := Address{Addr: ap, Opaque: svcOpaque}
		if c.pod != nil {
			st.deps.pods = append(st.deps.pods, *c.pod)
			pod, err := w.pods.Pods(c.pod.Namespace).Get(c.pod.Name)
			if err != nil {
				continue // not in the cache yet: announced when it arrives
			}
			a.Pod = w.podInfo(pod)
			a.Opaque = a.Opaque || podOpaque(pod, ap.Port())
		}
		st.addrs[ap] = a
	}
	slices.SortFunc(st.deps.pods, func(a, b types.NamespacedName) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return st
}

// primaryFamily returns the address type of the EndpointSlices to read:
// via's family when it is valid, else the service's first IP family
// (IPv4 when it names none).
func primaryFamily(svc *corev1.Service, via netip.Addr) discoveryv1.AddressType {
	switch {
	case via.IsValid() && via.Is6():
		return discoveryv1.AddressTypeIPv6
	case via.IsValid():
		return discoveryv1.AddressTypeIPv4
	case len(svc.Spec.IPFamilies) > 0 && svc.Spec.IPFamilies[0] == corev1.IPv6Protocol:
		return discoveryv1.AddressTypeIPv6
	}
	return discoveryv1.AddressTypeIPv4
}

// slicePort returns the port of slice's TCP port named name (the service
// port's name; "" for a service's only, unnamed port).
func slicePort(slice *discoveryv1.EndpointSlice, name string) (uint16, bool) {
	for _, p := range slice.Ports {
		pn := ""
		if p.Name != nil {
			pn = *p.Name
		}
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if pn == name && isTCP(proto) && p.Port != nil && *p.Port > 0 && *p.Port <= 0xffff {
			return uint16(*p.Port), true
		}
	}
	return 0, false
}

// resolveIP resolves an IP target: a service's cluster IP, else a pod.
func (w *Watcher) resolveIP(ip netip.Addr, port uint16) state {
	if objs, _ := w.svcIndex.ByIndex(indexClusterIP, ip.String()); len(objs) > 0 {
		svcs := make([]*corev1.Service, 0, len(objs))
		for _, o := range objs {
			svcs = append(svcs, o.(*corev1.Service))
		}
		svc := slices.MinFunc(svcs, func(a, b *corev1.Service) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
		st := w.resolveService(ServiceID{svc.Namespace, svc.Name}, port, "", ip)
		st.deps.ip = ip
		return st
	}
	st := state{deps: deps{ip: ip}}
	pod := w.podOfIP(ip, port)
	if pod == nil {
		return st
	}
	ap := netip.AddrPortFrom(ip, port)
	st.exists = true
	st.labels = map[string]string{"namespace": pod.Namespace}
	st.addrs = map[netip.AddrPort]Address{ap: {Addr: ap, Pod: w.podInfo(pod), Opaque: podOpaque(pod, port)}}
	st.deps.pods = []types.NamespacedName{{Namespace: pod.Namespace, Name: pod.Name}}
	return st
}

// podOfIP returns the pod that ip:port reaches: the running pod with that
// IP, or among host-network pods with it, the one that declares the port.
// When several match, the newest wins.
func (w *Watcher) podOfIP(ip netip.Addr, port uint16) *corev1.Pod {
	objs, _ := w.podIndex.ByIndex(indexPodIP, ip.String())
	var own, host []*corev1.Pod
	for _, o := range objs {
		pod := o.(*corev1.Pod)
		switch {
		case podFinished(pod):
		case !pod.Spec.HostNetwork:
			own = append(own, pod)
		case hasContainerPort(pod, port):
			host = append(host, pod)
		}
	}
	newest := func(pods []*corev1.Pod) *corev1.Pod {
		return slices.MaxFunc(pods, func(a, b *corev1.Pod) int {
			return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp.Time), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
	}
	switch {
	case len(own) > 0:
		return newest(own)
	case len(host) > 0:
		return newest(host)
	}
	return nil
}

// podInfo describes pod for an Address.
func (w *Watcher) podInfo(pod *corev1.Pod) PodInfo {
	kind, name := w.api.GetOwnerKindAndName(pod)
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	return PodInfo{
		Name:            pod.Name,
		Namespace:       pod.Namespace,
		ServiceAccount:  sa,
		OwnerKind:       kind,
		OwnerName:       name,
		PodTemplateHash: pod.Labels[appsv1.DefaultDeploymentUniqueLabelKey],
		ControlPlaneNS:  pod.Labels[meshmeta.LabelControlPlaneNS],
		IdentityMode:    pod.Annotations[meshmeta.AnnotationIdentityMode],
		HostNetwork:     pod.Spec.HostNetwork,
	}
}

// publisher is one watched target: its last published state and its
// listeners.
type publisher struct {
	target    Target
	state     state
	deps      deps
	listeners map[Listener]struct{}
}

// current gives l the current state.
func (p *publisher) current(l Listener) {
	switch {
	case !p.state.exists:
		l.NoEndpoints(false)
	case len(p.state.addrs) == 0:
		l.NoEndpoints(true)
	default:
		l.Add(AddressSet{Labels: p.state.labels, Addresses: sortedAddrs(slices.Collect(maps.Values(p.state.addrs)))})
	}
}

// update makes next the state and sends the listeners the difference:
// Add for new and changed endpoints (every endpoint when the common
// labels changed), then Remove for gone ones; NoEndpoints when none is
// left or the target stopped existing. Nothing is sent when nothing
// changed.
func (p *publisher) update(next state) {
	prev := p.state
	p.state = next
	var send func(Listener)
	switch {
	case !next.exists:
		if !prev.exists {
			return
		}
		send = func(l Listener) { l.NoEndpoints(false) }
	case len(next.addrs) == 0:
		if prev.exists && len(prev.addrs) == 0 {
			return
		}
		send = func(l Listener) { l.NoEndpoints(true) }
	default:
		fresh := !prev.exists || len(prev.addrs) == 0 || !maps.Equal(prev.labels, next.labels)
		var added []Address
		for ap, a := range next.addrs {
			if old, ok := prev.addrs[ap]; fresh || !ok || old != a {
				added = append(added, a)
			}
		}
		var removed []netip.AddrPort
		for ap := range prev.addrs {
			if _, ok := next.addrs[ap]; !ok {
				removed = append(removed, ap)
			}
		}
		if len(added) == 0 && len(removed) == 0 {
			return
		}
		set := AddressSet{Labels: next.labels, Addresses: sortedAddrs(added)}
		slices.SortFunc(removed, netip.AddrPort.Compare)
		send = func(l Listener) {
			if len(added) > 0 {
				l.Add(set)
			}
			if len(removed) > 0 {
				l.Remove(removed)
			}
		}
	}
	for l := range p.listeners {
		send(l)
	}
}

func sortedAddrs(as []Address) []Address {
	slices.SortFunc(as, func(a, b Address) int { return a.Addr.Compare(b.Addr) })
	return as
}
