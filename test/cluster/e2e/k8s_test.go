package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// echoPort is the port the echo server listens on in pods.
const echoPort = 8080

// answer is the echo program's answer to GET / (cmd/echo's Answer).
type answer struct {
	Pod     string `json:"pod"`
	Version string `json:"version"`
	Path    string `json:"path"`
	Remote  string `json:"remote"`
}

// fetchResult is the echo program's answer to GET /fetch.
type fetchResult struct {
	Answers []answer `json:"answers"`
	Errors  []string `json:"errors"`
}

// echoContainer is a container running the echo server on port, reporting
// version, ready while its readiness probe (GET /ready) passes; extra
// flags go to `echo serve`.
func echoContainer(name, version string, port int32, extra ...string) corev1.Container {
	return corev1.Container{
		Name:  name,
		Image: echoImage + ":" + version,
		Args:  append([]string{"serve", "--listen", fmt.Sprintf(":%d", port)}, extra...),
		Env: []corev1.EnvVar{
			{Name: "VERSION", Value: version},
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		},
		Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: port}},
		ReadinessProbe: httpProbe("/ready", port),
	}
}

// httpProbe probes GET path on port every second; one failure counts.
func httpProbe(path string, port int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}},
		PeriodSeconds:    1,
		TimeoutSeconds:   2,
		FailureThreshold: 1,
	}
}

// podSpec is a pod spec with the given containers that stops quickly.
func podSpec(containers ...corev1.Container) corev1.PodSpec {
	return corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](5), Containers: containers}
}

// echoDeployment is a Deployment of replicas echo servers labelled
// app=name.
func echoDeployment(name string, replicas int32, version string) *appsv1.Deployment {
	lbl := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbl},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbl},
				Spec:       podSpec(echoContainer("echo", version, echoPort)),
			},
		},
	}
}

// echoService is a ClusterIP Service on port 80 in front of the pods
// labelled app=name.
func echoService(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
}

// echoApp creates a Deployment of replicas echo servers and a Service, both
// named name, and a client pod "client" that runs the echo server to make
// calls from inside the cluster (GET /fetch); it waits until all are ready
// and returns the Deployment's pods.
func (s *suite) echoApp(t *testing.T, c context.Context, ns, name string, replicas int32) []corev1.Pod {
	t.Helper()
	if _, err := s.client.AppsV1().Deployments(ns).Create(c, echoDeployment(name, replicas, "v1"), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment %s: %v", name, err)
	}
	svc, err := s.client.CoreV1().Services(ns).Create(c, echoService(name), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s: %v", name, err)
	}
	if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err != nil || !netip.MustParsePrefix("10.96.0.0/16").Contains(ip) {
		t.Errorf("service %s has cluster IP %q, want one in the service range 10.96.0.0/16", name, svc.Spec.ClusterIP)
	}
	s.createPod(t, c, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "client"}, Spec: podSpec(echoContainer("client", "v1", echoPort))})
	s.waitPodReady(t, c, ns, "client")
	return s.waitDeploymentReady(t, c, ns, name, replicas)
}

func (s *suite) createPod(t *testing.T, c context.Context, ns string, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	p, err := s.client.CoreV1().Pods(ns).Create(c, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	return p
}

// waitPodReady waits until pod name is Running and Ready and returns it.
func (s *suite) waitPodReady(t *testing.T, c context.Context, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, c, "pod "+ns+"/"+name+" to be ready", func(c context.Context) (bool, string, error) {
		p, err := s.client.CoreV1().Pods(ns).Get(c, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		pod = p
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, "", fmt.Errorf("pod ended instead: %s", podStatus(p))
		}
		return p.Status.Phase == corev1.PodRunning && podReady(p), podStatus(p), nil
	})
	return pod
}

// waitPodPhase waits until pod name reaches phase and returns it.
func (s *suite) waitPodPhase(t *testing.T, c context.Context, ns, name string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, c, fmt.Sprintf("pod %s/%s to be %s", ns, name, phase), func(c context.Context) (bool, string, error) {
		p, err := s.client.CoreV1().Pods(ns).Get(c, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		pod = p
		if ended := p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded; ended && p.Status.Phase != phase {
			return false, "", fmt.Errorf("pod ended otherwise: %s", podStatus(p))
		}
		return p.Status.Phase == phase, podStatus(p), nil
	})
	return pod
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podStatus summarizes a pod for waiting messages.
func podStatus(p *corev1.Pod) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: phase %s, ready %t", p.Name, p.Status.Phase, podReady(p))
	for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		fmt.Fprintf(&b, "; %s %s, restarts %d", cs.Name, containerState(cs.State), cs.RestartCount)
	}
	return b.String()
}

// waitDeploymentReady waits until Deployment name has rolled out its
// current template to replicas pods that are all ready, with no other pod
// (old or terminating) left, and returns those pods sorted by name.
func (s *suite) waitDeploymentReady(t *testing.T, c context.Context, ns, name string, replicas int32) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	waitFor(t, c, fmt.Sprintf("deployment %s/%s to have %d ready pods and no other", ns, name, replicas), func(c context.Context) (bool, string, error) {
		d, err := s.client.AppsV1().Deployments(ns).Get(c, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		st := d.Status
		status := fmt.Sprintf("generation %d observed %d, replicas %d updated %d ready %d available %d",
			d.Generation, st.ObservedGeneration, st.Replicas, st.UpdatedReplicas, st.ReadyReplicas, st.AvailableReplicas)
		if st.ObservedGeneration < d.Generation || st.Replicas != replicas || st.UpdatedReplicas != replicas || st.ReadyReplicas != replicas || st.AvailableReplicas != replicas {
			return false, status, nil
		}
		list, err := s.client.CoreV1().Pods(ns).List(c, metav1.ListOptions{LabelSelector: labels.Set(d.Spec.Selector.MatchLabels).String()})
		if err != nil {
			return false, "", err
		}
		pods = list.Items
		for i := range pods {
			p := &pods[i]
			if p.DeletionTimestamp != nil || !podReady(p) {
				return false, status + "; pod " + podStatus(p) + ", terminating " + fmt.Sprint(p.DeletionTimestamp != nil), nil
			}
		}
		return len(pods) == int(replicas), fmt.Sprintf("%s; %d pods", status, len(pods)), nil
	})
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods
}

// podNames returns the names of pods, sorted.
func podNames(pods []corev1.Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	sort.Strings(names)
	return names
}

// podIPv4 returns the pod's IPv4 address (the Services are IPv4).
func podIPv4(p corev1.Pod) string {
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
			return ip.IP
		}
	}
	return ""
}

// endpoints are a Service's endpoints: IP -> target pod name.
type endpoints struct {
	ready, notReady map[string]string
}

// endpointsOf reads the EndpointSlices of Service svc.
func (s *suite) endpointsOf(c context.Context, ns, svc string) (endpoints, error) {
	e := endpoints{ready: map[string]string{}, notReady: map[string]string{}}
	list, err := s.client.DiscoveryV1().EndpointSlices(ns).List(c, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return e, fmt.Errorf("list endpointslices of %s/%s: %w", ns, svc, err)
	}
	for _, sl := range list.Items {
		for _, ep := range sl.Endpoints {
			m := e.ready
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				m = e.notReady
			}
			target := ""
			if ep.TargetRef != nil {
				target = ep.TargetRef.Name
			}
			for _, a := range ep.Addresses {
				m[a] = target
			}
		}
	}
	return e, nil
}

// waitEndpoints waits until Service svc's EndpointSlices list exactly the
// IPs of pods as ready endpoints targeting those pods, and nothing else.
func (s *suite) waitEndpoints(t *testing.T, c context.Context, ns, svc string, pods []corev1.Pod) {
	t.Helper()
	want := map[string]string{}
	for _, p := range pods {
		want[podIPv4(p)] = p.Name
	}
	waitFor(t, c, fmt.Sprintf("the endpointslices of %s/%s to list %v", ns, svc, want), func(c context.Context) (bool, string, error) {
		e, err := s.endpointsOf(c, ns, svc)
		if err != nil {
			return false, "", err
		}
		return maps.Equal(e.ready, want) && len(e.notReady) == 0, fmt.Sprintf("ready %v, not ready %v", e.ready, e.notReady), nil
	})
}

// proxy calls the echo server of pod through the API server's pod proxy
// (what `kubectl get --raw /api/v1/namespaces/NS/pods/POD:8080/proxy/...`
// does) and returns the body.
func (s *suite) proxy(c context.Context, method, ns, pod, path string, params map[string]string) ([]byte, error) {
	req := s.client.CoreV1().RESTClient().Verb(method).Namespace(ns).Resource("pods").
		Name(fmt.Sprintf("%s:%d", pod, echoPort)).SubResource("proxy").Suffix(path)
	for k, v := range params {
		req = req.Param(k, v)
	}
	body, err := req.DoRaw(c)
	if err != nil {
		return nil, fmt.Errorf("%s %s through the proxy of pod %s/%s: %w (%s)", method, path, ns, pod, err, body)
	}
	return body, nil
}

// fetch has the echo server of pod client call url n times (each on a new
// connection) and returns what came back.
func (s *suite) fetch(c context.Context, ns, client, url string, n int) (fetchResult, error) {
	var r fetchResult
	body, err := s.proxy(c, "GET", ns, client, "fetch", map[string]string{"url": url, "n": fmt.Sprint(n)})
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("decode the answer of %s/%s's fetch %q: %w", ns, client, body, err)
	}
	return r, nil
}

// waitTraffic waits until n calls from pod client to url all succeed and
// are answered by exactly the pods named want (each of them, no other), all
// at version (when not empty).
func (s *suite) waitTraffic(t *testing.T, c context.Context, ns, client, url string, want []string, version string) {
	t.Helper()
	n := 15 * len(want)
	waitFor(t, c, fmt.Sprintf("%d calls from %s to %s to be answered by exactly %v", n, client, url, want), func(c context.Context) (bool, string, error) {
		r, err := s.fetch(c, ns, client, url, n)
		if err != nil {
			// The proxy or the client pod may be briefly unavailable;
			// keep trying until the hang guard.
			return false, err.Error(), nil
		}
		seen := map[string]int{}
		versions := map[string]int{}
		for _, a := range r.Answers {
			seen[a.Pod]++
			versions[a.Version]++
		}
		status := fmt.Sprintf("answers per pod %v, versions %v, %d errors %q", seen, versions, len(r.Errors), r.Errors)
		ok := len(r.Errors) == 0 && slices.Equal(slices.Sorted(maps.Keys(seen)), want)
		if version != "" && versions[version] != len(r.Answers) {
			ok = false
		}
		return ok, status, nil
	})
}

// waitEvent waits until an event about object name has reason (any when
// empty) and a message containing text, and returns it.
func (s *suite) waitEvent(t *testing.T, c context.Context, ns, name, reason, text string) corev1.Event {
	t.Helper()
	var found corev1.Event
	waitFor(t, c, fmt.Sprintf("an event %s about %s saying %q", reason, name, text), func(c context.Context) (bool, string, error) {
		evs, err := s.client.CoreV1().Events(ns).List(c, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			return false, "", err
		}
		var seen []string
		for _, e := range evs.Items {
			if (reason == "" || e.Reason == reason) && strings.Contains(e.Message, text) {
				found = e
				return true, "", nil
			}
			seen = append(seen, e.Reason+": "+e.Message)
		}
		return false, fmt.Sprintf("events %q", seen), nil
	})
	return found
}

// podLogs returns a container's log as the API server serves it (what
// `kubectl logs` shows).
func (s *suite) podLogs(c context.Context, ns, pod, container string) (string, error) {
	b, err := s.client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: container}).DoRaw(c)
	if err != nil {
		return "", fmt.Errorf("get logs of %s/%s %s: %w", ns, pod, container, err)
	}
	return string(b), nil
}

// gone reports whether pod name no longer exists.
func (s *suite) gone(c context.Context, ns, name string) (bool, error) {
	_, err := s.client.CoreV1().Pods(ns).Get(c, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	return false, err
}
