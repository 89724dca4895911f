package watcher

import (
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// portListed reports whether port is in list, a config.sluice.io/opaque-ports
// value: comma-separated port numbers ("3306"), ranges ("4000-4100") and
// port names, which nameToPort resolves. Invalid items are skipped.
func portListed(list string, port uint16, nameToPort func(string) (uint16, bool)) bool {
	for item := range strings.SplitSeq(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if lo, hi, ok := strings.Cut(item, "-"); ok {
			l, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
			h, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
			if err1 == nil && err2 == nil && uint64(port) >= l && uint64(port) <= h {
				return true
			}
			continue
		}
		if n, err := strconv.ParseUint(item, 10, 16); err == nil {
			if uint16(n) == port {
				return true
			}
			continue
		}
		if p, ok := nameToPort(item); ok && p == port {
			return true
		}
	}
	return false
}

// podOpaque reports whether port is in pod's opaque-ports annotation,
// whose names are the pod's container port names.
func podOpaque(pod *corev1.Pod, port uint16) bool {
	list, ok := pod.Annotations[meshmeta.AnnotationOpaquePorts]
	if !ok {
		return false
	}
	return portListed(list, port, func(name string) (uint16, bool) {
		for _, c := range allContainers(pod) {
			for _, cp := range c.Ports {
				if cp.Name == name {
					return uint16(cp.ContainerPort), true
				}
			}
		}
		return 0, false
	})
}

// serviceOpaque reports whether the service port is in svc's opaque-ports
// annotation, whose names are the service's port names.
func serviceOpaque(svc *corev1.Service, port uint16) bool {
	list, ok := svc.Annotations[meshmeta.AnnotationOpaquePorts]
	if !ok {
		return false
	}
	return portListed(list, port, func(name string) (uint16, bool) {
		for _, sp := range svc.Spec.Ports {
			if sp.Name == name {
				return uint16(sp.Port), true
			}
		}
		return 0, false
	})
}

// allContainers returns pod's init containers (native sidecars among
// them) and containers.
func allContainers(pod *corev1.Pod) []corev1.Container {
	if len(pod.Spec.InitContainers) == 0 {
		return pod.Spec.Containers
	}
	return append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
}

// hasContainerPort reports whether one of pod's containers declares the
// TCP port (for a hostNetwork pod, containerPort is the node's port).
func hasContainerPort(pod *corev1.Pod, port uint16) bool {
	for _, c := range allContainers(pod) {
		for _, cp := range c.Ports {
			if isTCP(cp.Protocol) && (uint16(cp.ContainerPort) == port || uint16(cp.HostPort) == port) {
				return true
			}
		}
	}
	return false
}

// isTCP reports whether p is TCP; the API's default protocol is TCP.
func isTCP(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }
