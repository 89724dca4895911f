package podwatch

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

const testNode = "node-a"

// testPod is a meshed eBPF-mode pod on testNode whose proxy runs as a
// native sidecar and whose IPs are known: one the watcher enrolls.
func testPod(name, uid string, mods ...func(*corev1.Pod)) *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   "default",
			Name:        name,
			UID:         types.UID(uid),
			Labels:      map[string]string{meshmeta.LabelControlPlaneNS: meshmeta.DefaultNamespace, "app": name},
			Annotations: map[string]string{meshmeta.AnnotationMode: meshmeta.ModeEBPF},
		},
		Spec: corev1.PodSpec{
			NodeName:       testNode,
			InitContainers: []corev1.Container{{Name: meshmeta.ProxyContainerName, RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app"}},
		},
		Status: corev1.PodStatus{
			Phase:  corev1.PodPending,
			PodIP:  "10.244.0.7",
			PodIPs: []corev1.PodIP{{IP: "10.244.0.7"}, {IP: "fd00:10:244::7"}},
			InitContainerStatuses: []corev1.ContainerStatus{{
				Name:  meshmeta.ProxyContainerName,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
			}},
			ContainerStatuses: []corev1.ContainerStatus{{
				Name:  "app",
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}},
			}},
		},
	}
	for _, m := range mods {
		m(p)
	}
	return p
}

func proxyWaiting(p *corev1.Pod) {
	p.Status.InitContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}
}

func annotate(k, v string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Annotations[k] = v }
}

func TestAssess(t *testing.T) {
	now := metav1.Now()
	started := true
	cases := []struct {
		name   string
		pod    *corev1.Pod
		mode   api.Mode
		want   verdict
		reason string
		warns  string
	}{
		{"meshed, proxy running", testPod("a", "u1"), api.ModeEBPF, ready, "", ""},
		{"mode annotation absent is ebpf", testPod("a", "u1", func(p *corev1.Pod) { delete(p.Annotations, meshmeta.AnnotationMode) }), api.ModeEBPF, ready, "", ""},
		{"proxy as a regular container", testPod("a", "u1", func(p *corev1.Pod) {
			p.Status.InitContainerStatuses = nil
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: meshmeta.ProxyContainerName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}})
		}), api.ModeEBPF, ready, "", ""},
		{"proxy started but status lags", testPod("a", "u1", proxyWaiting, func(p *corev1.Pod) { p.Status.InitContainerStatuses[0].Started = &started }), api.ModeEBPF, ready, "", ""},
		{"only PodIP set", testPod("a", "u1", func(p *corev1.Pod) { p.Status.PodIPs = nil }), api.ModeEBPF, ready, "", ""},
		{"proxy not started", testPod("a", "u1", proxyWaiting), api.ModeEBPF, wait, "proxy not started", ""},
		{"no proxy status yet", testPod("a", "u1", func(p *corev1.Pod) { p.Status.InitContainerStatuses = nil }), api.ModeEBPF, wait, "proxy not started", ""},
		{"no IP yet", testPod("a", "u1", func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "", nil }), api.ModeEBPF, wait, "no pod IP yet", ""},
		{"terminating", testPod("a", "u1", func(p *corev1.Pod) { p.DeletionTimestamp = &now }), api.ModeEBPF, wait, "terminating", ""},
		{"not meshed", testPod("a", "u1", func(p *corev1.Pod) { delete(p.Labels, meshmeta.LabelControlPlaneNS) }), api.ModeEBPF, leave, "not meshed", ""},
		{"succeeded", testPod("a", "u1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), api.ModeEBPF, leave, "finished", ""},
		{"failed", testPod("a", "u1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }), api.ModeEBPF, leave, "finished", ""},
		{"another node", testPod("a", "u1", func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }), api.ModeEBPF, leave, "on another node", ""},
		{"host network", testPod("a", "u1", func(p *corev1.Pod) { p.Spec.HostNetwork = true }), api.ModeEBPF, leave, "host network", "host network"},
		{"iptables pod, ebpf agent", testPod("a", "u1", annotate(meshmeta.AnnotationMode, meshmeta.ModeIPTables)), api.ModeEBPF, leave, "iptables mode", ""},
		{"iptables pod, iptables agent", testPod("a", "u1", annotate(meshmeta.AnnotationMode, meshmeta.ModeIPTables)), api.ModeIPTables, leave, "iptables mode", ""},
		{"ebpf pod, iptables agent", testPod("a", "u1"), api.ModeIPTables, leave, "eBPF-mode pod, iptables-mode agent", "agent runs in iptables mode"},
		{"unknown mode", testPod("a", "u1", annotate(meshmeta.AnnotationMode, "nftables")), api.ModeEBPF, leave, "bad annotation", `sluice.io/interception-mode="nftables"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, reason, warn := assess(tc.pod, testNode, tc.mode)
			if v != tc.want || reason != tc.reason {
				t.Errorf("assess = %v %q, want %v %q", v, reason, tc.want, tc.reason)
			}
			switch {
			case tc.warns == "" && warn != nil:
				t.Errorf("unexpected warning %v", warn)
			case tc.warns != "" && (warn == nil || !strings.Contains(warn.Error(), tc.warns)):
				t.Errorf("warning %v, want one saying %q", warn, tc.warns)
			}
		})
	}
}

func TestPodConfig(t *testing.T) {
	base := api.PodConfig{ProxyUID: 2102, ProbePort: 4144}
	cases := []struct {
		name        string
		annotations map[string]string
		want        api.PodConfig
		badAnno     string // the annotation an error must name
		errHas      string
	}{
		{"defaults", nil, base, "", ""},
		{"skip ports and subnets", map[string]string{
			meshmeta.AnnotationSkipInboundPorts:  "22, 9000-9100",
			meshmeta.AnnotationSkipOutboundPorts: "5432",
			meshmeta.AnnotationSkipSubnets:       "10.96.0.0/12, fd00::/8",
		}, api.PodConfig{
			ProxyUID: 2102, ProbePort: 4144,
			SkipInboundPorts:  []api.PortRange{{Lo: 22, Hi: 22}, {Lo: 9000, Hi: 9100}},
			SkipOutboundPorts: []api.PortRange{{Lo: 5432, Hi: 5432}},
			SkipSubnets:       []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/8")},
		}, "", ""},
		{"empty values", map[string]string{meshmeta.AnnotationSkipInboundPorts: "", meshmeta.AnnotationSkipSubnets: " "}, base, "", ""},
		{"port not a number", map[string]string{meshmeta.AnnotationSkipInboundPorts: "http"}, api.PodConfig{}, meshmeta.AnnotationSkipInboundPorts, "not a number"},
		{"port out of range", map[string]string{meshmeta.AnnotationSkipOutboundPorts: "70000"}, api.PodConfig{}, meshmeta.AnnotationSkipOutboundPorts, "out of range"},
		{"reversed range", map[string]string{meshmeta.AnnotationSkipOutboundPorts: "90-80"}, api.PodConfig{}, meshmeta.AnnotationSkipOutboundPorts, "above"},
		{"bad subnet", map[string]string{meshmeta.AnnotationSkipSubnets: "10.0.0.0/33"}, api.PodConfig{}, meshmeta.AnnotationSkipSubnets, "10.0.0.0/33"},
		{"skips the probe and inbound ports", map[string]string{meshmeta.AnnotationSkipInboundPorts: "4100-4150"}, api.PodConfig{}, meshmeta.AnnotationSkipInboundPorts, "probe port"},
		{"too many subnets", map[string]string{meshmeta.AnnotationSkipSubnets: "10.1.0.0/16,10.2.0.0/16,10.3.0.0/16,10.4.0.0/16,10.5.0.0/16,10.6.0.0/16,10.7.0.0/16,10.8.0.0/16,10.9.0.0/16"}, api.PodConfig{}, meshmeta.AnnotationSkipSubnets, "at most 8"},
		{"too many port ranges", map[string]string{meshmeta.AnnotationSkipOutboundPorts: "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"}, api.PodConfig{}, meshmeta.AnnotationSkipOutboundPorts, "at most 16"},
		// The injector's resolved configuration wins over the config
		// annotations it came from (installation defaults, another uid).
		{"steering annotation", map[string]string{
			meshmeta.AnnotationSteering:          `{"proxyUID":3000,"outboundPort":4140,"inboundPort":4143,"skipInboundPorts":["4190","4191"],"skipOutboundPorts":["25","5432"],"skipSubnets":["10.96.0.0/12"],"probePort":4144}`,
			meshmeta.AnnotationSkipOutboundPorts: "5432",
		}, api.PodConfig{
			ProxyUID: 3000, OutboundPort: 4140, InboundPort: 4143, ProbePort: 4144,
			SkipInboundPorts:  []api.PortRange{{Lo: 4190, Hi: 4190}, {Lo: 4191, Hi: 4191}},
			SkipOutboundPorts: []api.PortRange{{Lo: 25, Hi: 25}, {Lo: 5432, Hi: 5432}},
			SkipSubnets:       []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
		}, "", ""},
		{"steering annotation without a probe port", map[string]string{meshmeta.AnnotationSteering: `{"proxyUID":2102}`}, api.PodConfig{ProxyUID: 2102, ProbePort: 4144}, "", ""},
		{"steering annotation not JSON", map[string]string{meshmeta.AnnotationSteering: `proxyUID=1`}, api.PodConfig{}, meshmeta.AnnotationSteering, "invalid character"},
		{"steering annotation with an unknown field", map[string]string{meshmeta.AnnotationSteering: `{"proxyUser":1}`}, api.PodConfig{}, meshmeta.AnnotationSteering, "unknown field"},
		{"steering annotation the agent refuses", map[string]string{meshmeta.AnnotationSteering: `{"outboundPort":4143,"inboundPort":4143}`}, api.PodConfig{}, meshmeta.AnnotationSteering, "both 4143"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := testPod("a", "u1")
			for k, v := range tc.annotations {
				p.Annotations[k] = v
			}
			got, err := PodConfig(p)
			if tc.badAnno == "" {
				if err != nil {
					t.Fatalf("PodConfig: %v", err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("PodConfig =\n %+v, want\n %+v", got, tc.want)
				}
				return
			}
			var ae *AnnotationError
			if !errors.As(err, &ae) || ae.Annotation != tc.badAnno || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("PodConfig error %v, want an AnnotationError naming %s and saying %q", err, tc.badAnno, tc.errHas)
			}
		})
	}
}

func TestPodIPs(t *testing.T) {
	p := testPod("a", "u1", func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "::ffff:10.0.0.1"}, {IP: "fd00::1"}} })
	got, err := podIPs(p)
	want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("podIPs = %v %v, want %v", got, err, want)
	}
	p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.300"}}
	if _, err := podIPs(p); err == nil {
		t.Errorf("podIPs accepted 10.0.0.300")
	}
}
