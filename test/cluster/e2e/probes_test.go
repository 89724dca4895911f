package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestReadiness fails one pod's readiness probe: the pod turns not ready,
// its endpoint turns not ready (or leaves the EndpointSlice) and the
// Service stops sending it calls; once the probe passes again, all three
// come back.
func TestReadiness(t *testing.T) {
	s := need(t)
	c := ctx(t, 10*time.Minute)
	ns := s.namespace(t, "ready")
	url := fmt.Sprintf("http://echo.%s.svc.cluster.local/", ns)
	pods := s.echoApp(t, c, ns, "echo", 2)
	s.waitEndpoints(t, c, ns, "echo", pods)
	s.waitTraffic(t, c, ns, "client", url, podNames(pods), "")

	victim, other := pods[0], pods[1]
	if _, err := s.proxy(c, "POST", ns, victim.Name, "ready", map[string]string{"fail": "1"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, "pod "+victim.Name+" to turn not ready", func(c context.Context) (bool, string, error) {
		p, err := s.client.CoreV1().Pods(ns).Get(c, victim.Name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return p.Status.Phase == corev1.PodRunning && !podReady(p), podStatus(p), nil
	})
	s.waitEvent(t, c, ns, victim.Name, "Unhealthy", "Readiness probe failed")
	victimIP := podIPv4(victim)
	waitFor(t, c, "the endpoint of "+victim.Name+" to leave the ready endpoints", func(c context.Context) (bool, string, error) {
		e, err := s.endpointsOf(c, ns, "echo")
		if err != nil {
			return false, "", err
		}
		_, stillReady := e.ready[victimIP]
		otherReady := e.ready[podIPv4(other)] == other.Name
		return !stillReady && otherReady && len(e.ready) == 1, fmt.Sprintf("ready %v, not ready %v", e.ready, e.notReady), nil
	})
	e, err := s.endpointsOf(c, ns, "echo")
	if err != nil {
		t.Fatal(err)
	}
	if e.notReady[victimIP] == victim.Name {
		t.Logf("the endpoint of %s (%s) is listed with ready=false", victim.Name, victimIP)
	} else {
		t.Logf("the endpoint of %s (%s) left the EndpointSlice", victim.Name, victimIP)
	}
	s.waitTraffic(t, c, ns, "client", url, []string{other.Name}, "")
	p, err := s.client.CoreV1().Pods(ns).Get(c, victim.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cs := p.Status.ContainerStatuses; len(cs) != 1 || cs[0].RestartCount != 0 || cs[0].State.Running == nil {
		t.Errorf("a failing readiness probe must not restart the container: %s", podStatus(p))
	}

	if _, err := s.proxy(c, "POST", ns, victim.Name, "ready", map[string]string{"fail": "0"}); err != nil {
		t.Fatal(err)
	}
	s.waitPodReady(t, c, ns, victim.Name)
	s.waitEndpoints(t, c, ns, "echo", pods)
	s.waitTraffic(t, c, ns, "client", url, podNames(pods), "")
}

// TestLiveness fails a pod's liveness probe: the kubelet kills and restarts
// its container (restartCount grows, a new container with a new ID runs
// and turns ready again).
func TestLiveness(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.namespace(t, "live")
	ctr := echoContainer("echo", "v1", echoPort)
	ctr.LivenessProbe = httpProbe("/healthz", echoPort)
	ctr.LivenessProbe.FailureThreshold = 2 // not killed by a probe racing its start-up
	s.createPod(t, c, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "live"}, Spec: podSpec(ctr)})
	before := s.waitPodReady(t, c, ns, "live").Status.ContainerStatuses[0]
	if before.RestartCount != 0 {
		t.Fatalf("restarted before its probe was failed: %+v", before)
	}

	if _, err := s.proxy(c, "POST", ns, "live", "healthz", map[string]string{"fail": "1"}); err != nil {
		t.Fatal(err)
	}
	s.waitEvent(t, c, ns, "live", "Unhealthy", "Liveness probe failed")
	s.waitEvent(t, c, ns, "live", "Killing", "failed liveness probe, will be restarted")
	var after corev1.ContainerStatus
	waitFor(t, c, "the container to be restarted and ready", func(c context.Context) (bool, string, error) {
		p, err := s.client.CoreV1().Pods(ns).Get(c, "live", metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		after = p.Status.ContainerStatuses[0]
		return after.RestartCount >= 1 && after.State.Running != nil && after.Ready, podStatus(p), nil
	})
	if after.ContainerID == before.ContainerID {
		t.Errorf("restarted container has the old ID %s", after.ContainerID)
	}
	if after.LastTerminationState.Terminated == nil || after.LastTerminationState.Terminated.ContainerID != before.ContainerID {
		t.Errorf("last state %s, want the first container (%s) terminated", containerState(after.LastTerminationState), before.ContainerID)
	}
	// The new process starts healthy: its own /healthz passes.
	if body, err := s.proxy(c, "GET", ns, "live", "healthz", nil); err != nil || string(body) != "live\n" {
		t.Errorf("GET /healthz of the restarted container: %q, %v", body, err)
	}
}
