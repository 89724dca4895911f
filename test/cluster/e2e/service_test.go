package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestService runs a Deployment of 3 echo servers behind a ClusterIP
// Service and follows it through scaling, a rolling update and a deleted
// pod, checking after each what a user would: the pods, the
// EndpointSlices, and who answers calls to the Service's DNS name from a
// pod in the cluster.
func TestService(t *testing.T) {
	s := need(t)
	c := ctx(t, 15*time.Minute)
	ns := s.namespace(t, "svc")
	fqdn := fmt.Sprintf("http://echo.%s.svc.cluster.local/", ns)

	var pods []corev1.Pod
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"3 replicas and the service become ready", func(t *testing.T) {
			pods = s.echoApp(t, c, ns, "echo", 3)
		}},
		{"endpointslices list the 3 pod IPs", func(t *testing.T) {
			s.waitEndpoints(t, c, ns, "echo", pods)
		}},
		{"a client pod reaches the service by DNS name and hears from all 3 pods", func(t *testing.T) {
			// `echo get` by the short name: the pod's resolv.conf search
			// path (from the kubelet's clusterDNS/clusterDomain) and CoreDNS
			// make it echo.<ns>.svc.cluster.local; kube-proxy balances.
			const calls = 30
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "dns-client"}, Spec: podSpec(corev1.Container{
				Name:  "get",
				Image: echoImage + ":v1",
				Args:  []string{"get", "-n", fmt.Sprint(calls), "http://echo/"},
			})}
			// OnFailure: a first run racing kube-proxy's sync is retried;
			// the log of the run that succeeded is the one read.
			p.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
			s.createPod(t, c, ns, p)
			s.waitPodPhase(t, c, ns, "dns-client", corev1.PodSucceeded)
			out, err := s.podLogs(c, ns, "dns-client", "get")
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Fields(out)
			seen := slices.Compact(slices.Sorted(slices.Values(lines)))
			if len(lines) != calls || !slices.Equal(seen, podNames(pods)) {
				t.Errorf("the client printed %d answers from %v, want %d from exactly %v; output:\n%s", len(lines), seen, calls, podNames(pods), out)
			}
			// And by the fully qualified name from the long-running client.
			s.waitTraffic(t, c, ns, "client", fqdn, podNames(pods), "v1")
		}},
		{"scale to 5", func(t *testing.T) {
			s.scale(t, c, ns, "echo", 5)
			up := s.waitDeploymentReady(t, c, ns, "echo", 5)
			for _, name := range podNames(pods) {
				if !slices.Contains(podNames(up), name) {
					t.Errorf("pod %s was replaced by scaling up; pods now %v", name, podNames(up))
				}
			}
			s.waitEndpoints(t, c, ns, "echo", up)
			s.waitTraffic(t, c, ns, "client", fqdn, podNames(up), "v1")
		}},
		{"scale back to 3", func(t *testing.T) {
			s.scale(t, c, ns, "echo", 3)
			pods = s.waitDeploymentReady(t, c, ns, "echo", 3)
			s.waitEndpoints(t, c, ns, "echo", pods)
			s.waitTraffic(t, c, ns, "client", fqdn, podNames(pods), "v1")
		}},
		{"rolling update to v2", func(t *testing.T) {
			old := podNames(pods)
			patch := fmt.Sprintf(`{"spec":{"template":{"spec":{"containers":[{"name":"echo","image":"%s:v2","env":[{"name":"VERSION","value":"v2"}]}]}}}}`, echoImage)
			if _, err := s.client.AppsV1().Deployments(ns).Patch(c, "echo", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatalf("update deployment echo to v2: %v", err)
			}
			pods = s.waitDeploymentReady(t, c, ns, "echo", 3)
			for _, p := range pods {
				if slices.Contains(old, p.Name) || p.Spec.Containers[0].Image != echoImage+":v2" {
					t.Errorf("after the update pod %s runs %s (old pods %v), want new pods running v2", p.Name, p.Spec.Containers[0].Image, old)
				}
				if st := p.Status.ContainerStatuses; len(st) != 1 || !strings.HasSuffix(st[0].Image, echoImage+":v2") {
					t.Errorf("pod %s container status image %v, want %s:v2", p.Name, st, echoImage)
				}
			}
			for _, name := range old {
				if ok, err := s.gone(c, ns, name); err != nil || !ok {
					t.Errorf("old pod %s still there after the rollout (%v)", name, err)
				}
			}
			s.waitEndpoints(t, c, ns, "echo", pods)
			s.waitTraffic(t, c, ns, "client", fqdn, podNames(pods), "v2")
		}},
		{"a deleted pod is replaced", func(t *testing.T) {
			victim := pods[0]
			if err := s.client.CoreV1().Pods(ns).Delete(c, victim.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete pod %s: %v", victim.Name, err)
			}
			waitFor(t, c, "pod "+victim.Name+" to be gone", func(c context.Context) (bool, string, error) {
				ok, err := s.gone(c, ns, victim.Name)
				return ok, "still there", err
			})
			after := s.waitDeploymentReady(t, c, ns, "echo", 3)
			if slices.Contains(podNames(after), victim.Name) {
				t.Fatalf("deleted pod %s is still listed: %v", victim.Name, podNames(after))
			}
			kept := 0
			for _, name := range podNames(pods)[1:] {
				if slices.Contains(podNames(after), name) {
					kept++
				}
			}
			if kept != 2 {
				t.Errorf("pods after the deletion %v, want the 2 others of %v kept and one new", podNames(after), podNames(pods))
			}
			pods = after
			s.waitEndpoints(t, c, ns, "echo", pods)
			s.waitTraffic(t, c, ns, "client", fqdn, podNames(pods), "v2")
		}},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.run) {
			return // the later steps build on this one
		}
	}
}

// scale sets Deployment name's replicas through its scale subresource
// (what `kubectl scale` does).
func (s *suite) scale(t *testing.T, c context.Context, ns, name string, replicas int32) {
	t.Helper()
	sc, err := s.client.AppsV1().Deployments(ns).GetScale(c, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get scale of %s: %v", name, err)
	}
	sc.Spec.Replicas = replicas
	if _, err := s.client.AppsV1().Deployments(ns).UpdateScale(c, name, sc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("scale %s to %d: %v", name, replicas, err)
	}
}
