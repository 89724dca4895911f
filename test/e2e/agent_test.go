package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// TestAgentEnrollsPods: the node agent of the chart's DaemonSet enrolls a
// meshed pod created through the API (its proxy confirms steering, after
// which the kubelet starts the app) and unenrolls it when the pod is
// deleted.
func TestAgentEnrollsPods(t *testing.T) {
	s := need(t)
	c := ctx(t, 3*time.Minute)
	ns := s.meshedNamespace(t, "agent")
	agent := api.NewClient(filepath.Join(stateDir, "agent.sock"))

	pod, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, bareEchoPod("web"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod = s.waitPodRunning(t, c, ns, pod.Name)
	var en api.Enrollment
	waitFor(t, c, "the agent to enroll "+pod.Name+" and the proxy to confirm steering", func(c context.Context) (bool, string, error) {
		e, ok, err := enrollmentOf(c, agent, pod)
		if err != nil || !ok {
			return false, "not enrolled", err
		}
		en = e
		return e.Steered, fmt.Sprintf("enrolled, steered=%t", e.Steered), nil
	})
	if en.Pod.Namespace != ns || en.Pod.Name != pod.Name || en.Mode != api.ModeEBPF || !en.InboundListener {
		t.Errorf("enrollment %+v", en)
	}
	// The agent steers what the injector resolved for the pod.
	var steering api.PodConfig
	if err := json.Unmarshal([]byte(pod.Annotations[meshmeta.AnnotationSteering]), &steering); err != nil {
		t.Fatalf("the injected pod's %s: %v", meshmeta.AnnotationSteering, err)
	}
	if got, want := en.Config.WithDefaults(), steering.WithDefaults(); !reflect.DeepEqual(got, want) {
		t.Errorf("enrolled with %+v, want the pod's %s %+v", got, meshmeta.AnnotationSteering, want)
	}
	want := map[netip.Addr]bool{}
	for _, ip := range pod.Status.PodIPs {
		want[netip.MustParseAddr(ip.IP)] = true
	}
	if len(en.Addresses) != len(want) {
		t.Errorf("enrolled addresses %v, want the pod's %v", en.Addresses, pod.Status.PodIPs)
	}
	for _, a := range en.Addresses {
		if !want[a] {
			t.Errorf("enrolled address %v is not the pod's (%v)", a, pod.Status.PodIPs)
		}
	}
	// The app started after the proxy, and both are ready.
	waitFor(t, c, pod.Name+" to be ready", func(c context.Context) (bool, string, error) {
		p, err := s.cluster.Client.CoreV1().Pods(ns).Get(c, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady {
				return cond.Status == corev1.ConditionTrue, string(cond.Status), nil
			}
		}
		return false, "no Ready condition", nil
	})

	if err := s.cluster.Client.CoreV1().Pods(ns).Delete(c, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, "the agent to unenroll "+pod.Name, func(c context.Context) (bool, string, error) {
		_, ok, err := enrollmentOf(c, agent, pod)
		return !ok, "still enrolled", err
	})
}

// enrollmentOf finds the agent's enrollment of pod.
func enrollmentOf(c context.Context, agent *api.Client, pod *corev1.Pod) (api.Enrollment, bool, error) {
	ens, err := agent.List(c)
	if err != nil {
		return api.Enrollment{}, false, fmt.Errorf("list the agent's enrollments: %w", err)
	}
	for _, e := range ens {
		if e.Pod.UID == string(pod.UID) {
			return e, true, nil
		}
	}
	return api.Enrollment{}, false, nil
}
