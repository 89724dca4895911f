package tap

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	apinet "github.com/sluice-mesh/sluice/controlplane/api/net"
	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// ownerLabels are the injector's owner labels and the metric label each
// becomes, as Linkerd names them.
var ownerLabels = [...]struct{ label, key string }{
	{meshmeta.LabelProxyDeployment, "deployment"},
	{meshmeta.LabelProxyStatefulSet, "statefulset"},
	{meshmeta.LabelProxyDaemonSet, "daemonset"},
	{meshmeta.LabelProxyCronJob, "cronjob"},
	{meshmeta.LabelProxyJob, "job"},
	{meshmeta.LabelProxyReplicaSet, "replicaset"},
}

// podMeta returns the labels that describe p on a TapEvent, the keys the
// destination service gives endpoints: namespace, pod, serviceaccount and
// the owner's kind and name (deployment: web). A meshed pod's owner comes
// from the injector's labels; another pod's from its controller, with a
// Deployment's ReplicaSet read as its Deployment.
func podMeta(p *corev1.Pod) map[string]string {
	m := map[string]string{"namespace": p.Namespace, "pod": p.Name}
	if sa := p.Spec.ServiceAccountName; sa != "" {
		m["serviceaccount"] = sa
	}
	owned := false
	for _, o := range ownerLabels {
		if v := p.Labels[o.label]; v != "" {
			m[o.key] = v
			owned = true
		}
	}
	if owner := metav1.GetControllerOf(p); owner != nil && !owned {
		kind := strings.ToLower(owner.Kind)
		name := owner.Name
		if hash := p.Labels["pod-template-hash"]; kind == "replicaset" && hash != "" {
			if d, ok := strings.CutSuffix(name, "-"+hash); ok {
				kind, name = "deployment", d
			}
		}
		m[kind] = name
	}
	return m
}

// mergeMeta adds labels to meta's, keeping those it has.
func mergeMeta(meta **tappb.TapEvent_EndpointMeta, labels map[string]string) {
	if len(labels) == 0 {
		return
	}
	if *meta == nil {
		*meta = &tappb.TapEvent_EndpointMeta{}
	}
	if (*meta).Labels == nil {
		(*meta).Labels = make(map[string]string, len(labels))
	}
	for k, v := range labels {
		if _, ok := (*meta).Labels[k]; !ok {
			(*meta).Labels[k] = v
		}
	}
}

// maxPeers bounds the addresses a tap remembers the pods of.
const maxPeers = 4096

// peerTimeout bounds a lookup of the pod behind an address.
const peerTimeout = 2 * time.Second

// peers finds the pods behind the addresses of a tap's events, once per
// address, and remembers them for the tap's life. It is safe for
// concurrent use.
type peers struct {
	client kubernetes.Interface
	log    *slog.Logger

	mu    sync.Mutex
	known map[netip.Addr]map[string]string // nil value: no single pod has the address
}

func newPeers(client kubernetes.Interface, log *slog.Logger, pods ...[]*corev1.Pod) *peers {
	p := &peers{client: client, log: log, known: map[netip.Addr]map[string]string{}}
	for _, ps := range pods {
		for _, pod := range ps {
			for _, ip := range podIPs(pod) {
				p.known[ip] = podMeta(pod)
			}
		}
	}
	return p
}

// lookup returns the labels of the pod whose IP addr is, nil when there is
// none or more than one (host-network pods share their node's).
func (p *peers) lookup(ctx context.Context, addr *apinet.TcpAddress) map[string]string {
	ip, ok := netip.AddrFromSlice(addr.GetIp())
	if !ok {
		return nil
	}
	ip = ip.Unmap()
	p.mu.Lock()
	m, ok := p.known[ip]
	p.mu.Unlock()
	if ok {
		return m
	}
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	l, err := p.client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{FieldSelector: "status.podIP=" + ip.String()})
	if err != nil {
		if ctx.Err() == nil {
			p.log.Debug("look up the pod of an address", "ip", ip.String(), "error", err.Error())
		}
		return nil // not remembered: the next event tries again
	}
	var found *corev1.Pod
	n := 0
	for i := range l.Items {
		pod := &l.Items[i]
		if pod.Spec.HostNetwork || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		if slices.Contains(podIPs(pod), ip) {
			found = pod
			n++
		}
	}
	if n == 1 {
		m = podMeta(found)
	}
	p.mu.Lock()
	if len(p.known) < maxPeers {
		p.known[ip] = m
	}
	p.mu.Unlock()
	return m
}

// enrich adds what the tap service knows to ev, an event of the proxy of
// pod (whose labels are self): the pod's own labels on the end it is (the
// source of an outbound request, the destination of an inbound one) and
// the labels of the pod at the other end when an address belongs to one.
// Labels the proxy sent are kept.
func (p *peers) enrich(ctx context.Context, ev *tappb.TapEvent, self map[string]string) {
	switch ev.GetProxyDirection() {
	case tappb.TapEvent_OUTBOUND:
		mergeMeta(&ev.SourceMeta, self)
		if _, ok := ev.GetDestinationMeta().GetLabels()["pod"]; !ok && ev.GetDestination() != nil {
			mergeMeta(&ev.DestinationMeta, p.lookup(ctx, ev.GetDestination()))
		}
	case tappb.TapEvent_INBOUND:
		mergeMeta(&ev.DestinationMeta, self)
		if ev.GetSource() != nil {
			mergeMeta(&ev.SourceMeta, p.lookup(ctx, ev.GetSource()))
		}
	}
}
