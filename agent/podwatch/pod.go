package podwatch

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// verdict is what the watcher should do with a pod.
type verdict int

const (
	// leave: the pod is not the agent's to steer (not meshed, finished,
	// host network, another interception mode); an enrollment of it goes.
	leave verdict = iota
	// wait: the pod is meshed but cannot be enrolled yet (its proxy has not
	// started, it has no IPs, or it is terminating); an enrollment stays.
	wait
	// ready: the pod should be enrolled now.
	ready
)

// assess decides what to do with pod for an agent in mode on node. reason
// says why in a few words, for logs; warn is set when the pod asks for
// something the agent cannot give (it is logged once per pod).
func assess(pod *corev1.Pod, node string, mode api.Mode) (v verdict, reason string, warn error) {
	switch {
	case pod.Spec.NodeName != node:
		return leave, "on another node", nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return leave, "finished", nil
	}
	if _, ok := pod.Labels[meshmeta.LabelControlPlaneNS]; !ok {
		return leave, "not meshed", nil
	}
	if pod.Spec.HostNetwork {
		return leave, "host network", fmt.Errorf("meshed pod uses the host network: its traffic cannot be steered")
	}
	podMode := pod.Annotations[meshmeta.AnnotationMode]
	switch podMode {
	case "", meshmeta.ModeEBPF:
		if mode != api.ModeEBPF {
			return leave, "eBPF-mode pod, iptables-mode agent",
				fmt.Errorf("pod was injected for eBPF interception (annotation %s) but the agent runs in %s mode: not enrolled, its traffic is not steered", meshmeta.AnnotationMode, mode)
		}
	case meshmeta.ModeIPTables:
		// Its init container installed the rules; nothing to do here.
		return leave, "iptables mode", nil
	default:
		return leave, "bad annotation", fmt.Errorf("annotation %s=%q: want %s or %s", meshmeta.AnnotationMode, podMode, meshmeta.ModeEBPF, meshmeta.ModeIPTables)
	}
	switch {
	case pod.DeletionTimestamp != nil:
		return wait, "terminating", nil
	case !proxyRunning(pod):
		return wait, "proxy not started", nil
	}
	if ips, _ := podIPs(pod); len(ips) == 0 {
		return wait, "no pod IP yet", nil
	}
	return ready, "", nil
}

// proxyRunning reports whether the sluice-proxy container, a native sidecar
// (init container) or a regular container, has started. Running is what
// counts: a native sidecar's Started flag waits for its startup probe, the
// proxy's /ready, which in eBPF mode only passes once the pod is enrolled.
func proxyRunning(pod *corev1.Pod) bool {
	for _, ss := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, s := range ss {
			if s.Name != meshmeta.ProxyContainerName {
				continue
			}
			if s.State.Running != nil || (s.Started != nil && *s.Started) {
				return true
			}
		}
	}
	return false
}

// podIPs returns the pod's IPs from its status.
func podIPs(pod *corev1.Pod) ([]netip.Addr, error) {
	var raw []string
	for _, ip := range pod.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && pod.Status.PodIP != "" {
		raw = append(raw, pod.Status.PodIP)
	}
	var out []netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pod IP %q: %w", s, err)
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}

// AnnotationError is a config annotation that cannot be used.
type AnnotationError struct {
	Annotation string
	Value      string
	Err        error
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s=%q: %v", e.Annotation, e.Value, e.Err)
}

func (e *AnnotationError) Unwrap() error { return e.Err }

// PodConfig returns the steering configuration of a meshed pod. The
// injector records it in the annotation meshmeta.AnnotationSteering (the
// installation's defaults with the pod's config annotations applied), which
// wins; a pod without it (injected by hand) gets the proxy's defaults (uid
// 2102, ports 4140 and 4143, the steering probe on 4144) with the
// config.sluice.io/skip-inbound-ports, skip-outbound-ports and skip-subnets
// annotations. A value that cannot be parsed or that the agent would refuse
// is an *AnnotationError naming the annotation.
func PodConfig(pod *corev1.Pod) (api.PodConfig, error) {
	if v, ok := pod.Annotations[meshmeta.AnnotationSteering]; ok {
		var cfg api.PodConfig
		dec := json.NewDecoder(strings.NewReader(v))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return api.PodConfig{}, &AnnotationError{meshmeta.AnnotationSteering, v, err}
		}
		if cfg.ProbePort == 0 {
			cfg.ProbePort = api.DefaultProbePort
		}
		if err := cfg.WithDefaults().Validate(); err != nil {
			return api.PodConfig{}, &AnnotationError{meshmeta.AnnotationSteering, v, err}
		}
		return cfg, nil
	}
	cfg := api.PodConfig{ProxyUID: api.DefaultProxyUID, ProbePort: api.DefaultProbePort}
	// Each annotation is checked as it is added, with the agent's own
	// validation, so that an error names the annotation at fault.
	steps := []struct {
		name string
		set  func(string) error
	}{
		{meshmeta.AnnotationSkipInboundPorts, func(v string) (err error) {
			cfg.SkipInboundPorts, err = api.ParsePortRanges(v)
			return err
		}},
		{meshmeta.AnnotationSkipOutboundPorts, func(v string) (err error) {
			cfg.SkipOutboundPorts, err = api.ParsePortRanges(v)
			return err
		}},
		{meshmeta.AnnotationSkipSubnets, func(v string) (err error) {
			cfg.SkipSubnets, err = api.ParsePrefixes(v)
			return err
		}},
	}
	for _, st := range steps {
		v, ok := pod.Annotations[st.name]
		if !ok {
			continue
		}
		if err := st.set(v); err != nil {
			return api.PodConfig{}, &AnnotationError{st.name, v, err}
		}
		if err := cfg.WithDefaults().Validate(); err != nil {
			return api.PodConfig{}, &AnnotationError{st.name, v, err}
		}
	}
	return cfg, nil
}
