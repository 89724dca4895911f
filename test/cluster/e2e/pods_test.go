package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestNativeSidecar runs a pod whose init container with restartPolicy
// Always (a native sidecar) writes a file once it listens, and whose app
// container refuses to start without that file and has a postStart exec
// hook that writes another: the app starts first time (so after the
// sidecar), both keep running, and the hook's file is there.
func TestNativeSidecar(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.namespace(t, "sidecar")

	sidecar := echoContainer("sidecar", "v1", 9090, "--started-file", "/shared/sidecar-started")
	sidecar.Ports[0].Name = "sidecar"
	sidecar.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	// The kubelet starts the next container once a sidecar's startup
	// probe passed (without one, as soon as its process started).
	sidecar.StartupProbe = httpProbe("/healthz", 9090)
	sidecar.StartupProbe.FailureThreshold = 30
	app := echoContainer("app", "v1", echoPort, "--require-file", "/shared/sidecar-started", "--serve-dir", "/shared")
	app.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
		Command: []string{"/bin/sh", "-c", `echo "poststart ran as $(id -u) in $(pwd)" > /shared/poststart`},
	}}}
	shared := corev1.VolumeMount{Name: "shared", MountPath: "/shared"}
	sidecar.VolumeMounts = []corev1.VolumeMount{shared}
	app.VolumeMounts = []corev1.VolumeMount{shared}
	spec := podSpec(app)
	spec.InitContainers = []corev1.Container{sidecar}
	spec.Volumes = []corev1.Volume{{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	// Never: an app that exited because the sidecar was not there yet
	// would fail the pod instead of being retried.
	spec.RestartPolicy = corev1.RestartPolicyNever
	s.createPod(t, c, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sidecar"}, Spec: spec})
	p := s.waitPodReady(t, c, ns, "sidecar")

	if len(p.Status.InitContainerStatuses) != 1 || len(p.Status.ContainerStatuses) != 1 {
		t.Fatalf("want one init and one app container status: %s", podStatus(p))
	}
	sc, ac := p.Status.InitContainerStatuses[0], p.Status.ContainerStatuses[0]
	if sc.State.Running == nil || !ptr.Deref(sc.Started, false) || sc.RestartCount != 0 {
		t.Errorf("the sidecar is not running alongside the app (or restarted): %s", podStatus(p))
	}
	if ac.State.Running == nil || ac.RestartCount != 0 {
		t.Errorf("the app did not start first time: %s", podStatus(p))
	}
	if sc.State.Running != nil && ac.State.Running != nil && ac.State.Running.StartedAt.Before(&sc.State.Running.StartedAt) {
		t.Errorf("the app started at %s, before the sidecar (%s)", ac.State.Running.StartedAt, sc.State.Running.StartedAt)
	}
	if body, err := s.proxy(c, "GET", ns, "sidecar", "files/sidecar-started", nil); err != nil || !strings.HasPrefix(string(body), "sidecar ") {
		t.Errorf("the sidecar's file as the app sees it: %q, %v; want it to name the pod", body, err)
	}
	if body, err := s.proxy(c, "GET", ns, "sidecar", "files/poststart", nil); err != nil || string(body) != "poststart ran as 0 in /\n" {
		t.Errorf("the postStart hook's file: %q, %v; want %q", body, err, "poststart ran as 0 in /\n")
	}
	evs, err := s.client.CoreV1().Events(ns).List(c, metav1.ListOptions{FieldSelector: "involvedObject.name=sidecar"})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.Reason == "FailedPostStartHook" || e.Type == corev1.EventTypeWarning {
			t.Errorf("warning event %s: %s", e.Reason, e.Message)
		}
	}
}

// TestHostNetworkDaemonSet runs a DaemonSet with hostNetwork: its pod runs
// on the node with the node's IP, and the echo server in it answers on
// the node's address from outside any pod.
func TestHostNetworkDaemonSet(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.namespace(t, "hostnet")
	port := freePort(t)

	lbl := map[string]string{"app": "hostnet"}
	ctr := echoContainer("echo", "v1", port)
	ctr.Ports[0].HostPort = port
	spec := podSpec(ctr)
	spec.HostNetwork = true
	spec.DNSPolicy = corev1.DNSClusterFirstWithHostNet
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: lbl},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: lbl}, Spec: spec},
		},
	}
	if _, err := s.client.AppsV1().DaemonSets(ns).Create(c, ds, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create daemonset: %v", err)
	}
	nodes, err := s.client.CoreV1().Nodes().List(c, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, "the daemonset to run a ready pod on every node", func(c context.Context) (bool, string, error) {
		d, err := s.client.AppsV1().DaemonSets(ns).Get(c, "hostnet", metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		st := d.Status
		return st.ObservedGeneration == d.Generation && int(st.DesiredNumberScheduled) == len(nodes.Items) && st.NumberReady == st.DesiredNumberScheduled,
			fmt.Sprintf("desired %d, ready %d, %d nodes", st.DesiredNumberScheduled, st.NumberReady, len(nodes.Items)), nil
	})
	pods, err := s.client.CoreV1().Pods(ns).List(c, metav1.ListOptions{LabelSelector: "app=hostnet"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		node, err := s.client.CoreV1().Nodes().Get(c, p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get node of pod %s: %v", p.Name, err)
		}
		nodeIP := ""
		for _, a := range node.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && nodeIP == "" {
				nodeIP = a.Address
			}
		}
		if nodeIP == "" || p.Status.PodIP != nodeIP || p.Status.HostIP != nodeIP {
			t.Errorf("pod %s on node %s has pod IP %s and host IP %s, want the node's internal IP %q", p.Name, node.Name, p.Status.PodIP, p.Status.HostIP, nodeIP)
			continue
		}
		// From the test process, outside any pod: the node's address.
		url := fmt.Sprintf("http://%s/", net.JoinHostPort(nodeIP, fmt.Sprint(port)))
		a, err := getAnswer(c, url)
		if err != nil || a.Pod != p.Name {
			t.Errorf("GET %s: %+v, %v; want an answer from pod %s", url, a, err, p.Name)
		}
	}
	if len(pods.Items) != len(nodes.Items) {
		t.Errorf("%d daemonset pods for %d nodes", len(pods.Items), len(nodes.Items))
	}
}

// freePort returns a TCP port free on this machine now.
func freePort(t *testing.T) int32 {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return int32(ln.Addr().(*net.TCPAddr).Port)
}

// getAnswer calls an echo server directly.
func getAnswer(c context.Context, url string) (answer, error) {
	var a answer
	req, err := http.NewRequestWithContext(c, http.MethodGet, url, nil)
	if err != nil {
		return a, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return a, fmt.Errorf("decode answer of %s (status %s): %w", url, resp.Status, err)
	}
	return a, nil
}

// TestKubectlLogs checks that `kubectl logs` (the cached kubectl, the
// cluster's kubeconfig) shows what a container wrote on stdout (the
// start-up line, an access log line of a request made for the test) and
// on stderr (the log line of a readiness flip).
func TestKubectlLogs(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.namespace(t, "logs")
	s.createPod(t, c, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "logger"}, Spec: podSpec(echoContainer("echo", "v3", echoPort))})
	s.waitPodReady(t, c, ns, "logger")
	mark := "kubectl-logs-" + suffix()
	if _, err := s.proxy(c, "GET", ns, "logger", mark, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.proxy(c, "POST", ns, "logger", "healthz", map[string]string{"fail": "0"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"echo logger (version v3) listening on [::]:8080", // stdout
		"GET /" + mark + " from ",                         // stdout
		"msg=\"probe flipped\" component=echo probe=live", // stderr
	}
	waitFor(t, c, "kubectl logs to show the container's output", func(c context.Context) (bool, string, error) {
		cmd := exec.CommandContext(c, s.kubectl, "--kubeconfig", s.cluster.Kubeconfig(), "--namespace", ns, "logs", "logger", "--container", "echo")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return false, fmt.Sprintf("kubectl logs: %v: %s", err, out), nil
		}
		missing := slices.DeleteFunc(slices.Clone(want), func(w string) bool { return strings.Contains(string(out), w) })
		return len(missing) == 0, fmt.Sprintf("missing %q in:\n%s", missing, out), nil
	})
}

// TestServiceAccountToken reads the projected service-account tokens the
// kubelet mounted in a pod (served by the echo program from its files) and
// has the API server review them: authenticated as the pod's service
// account, for the audience asked, bound to the pod.
func TestServiceAccountToken(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.namespace(t, "token")
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}
	if _, err := s.client.CoreV1().ServiceAccounts(ns).Create(c, sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service account: %v", err)
	}
	const audience = "sluice.test/e2e"
	ctr := echoContainer("echo", "v1", echoPort, "--serve-dir", "/var/run/secrets")
	ctr.VolumeMounts = []corev1.VolumeMount{{Name: "sluice-token", MountPath: "/var/run/secrets/sluice", ReadOnly: true}}
	spec := podSpec(ctr)
	spec.ServiceAccountName = "reader"
	spec.Volumes = []corev1.Volume{{Name: "sluice-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: audience, ExpirationSeconds: ptr.To[int64](3600), Path: "token",
		}}},
	}}}}
	s.createPod(t, c, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "token"}, Spec: spec})
	pod := s.waitPodReady(t, c, ns, "token")

	token := func(path string) string {
		b, err := s.proxy(c, "GET", ns, "token", "files/"+path, nil)
		if err != nil {
			t.Fatalf("read the pod's %s: %v", path, err)
		}
		return strings.TrimSpace(string(b))
	}
	sluiceToken := token("sluice/token")
	apiToken := token("kubernetes.io/serviceaccount/token")
	user := "system:serviceaccount:" + ns + ":reader"
	tests := []struct {
		name      string
		token     string
		audiences []string
		wantAuth  bool
		wantAud   []string
	}{
		{"projected token for its audience", sluiceToken, []string{audience}, true, []string{audience}},
		{"projected token for another audience", sluiceToken, []string{"someone-else"}, false, nil},
		{"projected token for the API server", sluiceToken, nil, false, nil},
		{"kube-api-access token for the API server", apiToken, nil, true, nil},
		{"not a token", "not-a-token", nil, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tt.token, Audiences: tt.audiences}}
			got, err := s.client.AuthenticationV1().TokenReviews().Create(c, tr, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create token review: %v", err)
			}
			st := got.Status
			if st.Authenticated != tt.wantAuth {
				t.Fatalf("authenticated %t (error %q), want %t", st.Authenticated, st.Error, tt.wantAuth)
			}
			if !tt.wantAuth {
				return
			}
			if st.User.Username != user || !slices.Contains(st.User.Groups, "system:serviceaccounts:"+ns) {
				t.Errorf("user %q groups %v, want %q in system:serviceaccounts:%s", st.User.Username, st.User.Groups, user, ns)
			}
			if tt.wantAud != nil && !slices.Equal(st.Audiences, tt.wantAud) {
				t.Errorf("audiences %v, want %v", st.Audiences, tt.wantAud)
			}
			// A kubelet-requested token is bound to its pod.
			if name, uid := st.User.Extra["authentication.kubernetes.io/pod-name"], st.User.Extra["authentication.kubernetes.io/pod-uid"]; !slices.Equal(name, authnv1.ExtraValue{"token"}) || !slices.Equal(uid, authnv1.ExtraValue{string(pod.UID)}) {
				t.Errorf("bound to pod %v (uid %v), want token (%s)", name, uid, pod.UID)
			}
		})
	}
}

// TestUnsupported runs pods the runtime cannot run as asked: each fails
// with an event that says why, instead of running wrongly.
func TestUnsupported(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.namespace(t, "unsupported")
	var runtimeClass string
	tests := []struct {
		name   string
		pod    func() *corev1.Pod
		reason string // of the event (any when empty)
		text   string // in its message
	}{
		{
			name: "an image not in the image table",
			pod: func() *corev1.Pod {
				return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "unmapped"}, Spec: podSpec(corev1.Container{Name: "app", Image: "sluice.test/not-in-table:v1"})}
			},
			reason: "Failed",
			text:   "not in procri's image table",
		},
		{
			name: "a runtime class",
			pod: func() *corev1.Pod {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "runtimeclass"}, Spec: podSpec(echoContainer("echo", "v1", echoPort))}
				p.Spec.RuntimeClassName = ptr.To(runtimeClass)
				return p
			},
			reason: "FailedCreatePodSandBox",
			text:   `unknown runtime handler "sluice-e2e-sandboxed"`,
		},
		{
			name: "a user namespace",
			pod: func() *corev1.Pod {
				p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "userns"}, Spec: podSpec(echoContainer("echo", "v1", echoPort))}
				p.Spec.HostUsers = ptr.To(false)
				return p
			},
			text: "user namespaces",
		},
	}
	// A RuntimeClass whose handler procri does not have (cluster-wide:
	// named for this run, deleted at the end).
	runtimeClass = "e2e-" + suffix()
	rc := &nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: runtimeClass}, Handler: "sluice-e2e-sandboxed"}
	if _, err := s.client.NodeV1().RuntimeClasses().Create(c, rc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create runtime class: %v", err)
	}
	t.Cleanup(func() {
		if err := s.client.NodeV1().RuntimeClasses().Delete(context.Background(), runtimeClass, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete runtime class %s: %v", runtimeClass, err)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := s.createPod(t, c, ns, tt.pod())
			e := s.waitEvent(t, c, ns, p.Name, tt.reason, tt.text)
			t.Logf("event %s: %s", e.Reason, e.Message)
			got, err := s.client.CoreV1().Pods(ns).Get(c, p.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, cs := range got.Status.ContainerStatuses {
				if cs.State.Running != nil || cs.Ready {
					t.Errorf("container %s runs: %s", cs.Name, podStatus(got))
				}
			}
		})
	}
}
