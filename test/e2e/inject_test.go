package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/json"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// TestInjector: the webhook meshes a Deployment's pods on creation, and
// the pods equal those of the same Deployment injected by `meshctl inject`
// (which reads the installation's values from the cluster); in eBPF mode
// nothing gets an init container of its own or a capability. Opted-out and
// host-network pods are left alone, and a bad config annotation is refused
// with a message naming it.
func TestInjector(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.meshedNamespace(t, "inject")
	d := echoDeployment("web", 1)
	d.Spec.Template.Annotations = map[string]string{meshmeta.AnnotationSkipOutboundPorts: "25"}

	// Through the webhook.
	if _, err := s.cluster.Client.AppsV1().Deployments(ns).Create(c, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitDeploymentReady(t, c, ns, "web")
	byWebhook := s.onlyPod(t, c, ns, "web")
	checkMeshed(t, byWebhook, ns, "web")

	// Through meshctl inject, in the same namespace under the same name (the
	// webhook leaves an injected pod alone).
	if err := s.cluster.Client.AppsV1().Deployments(ns).Delete(c, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, "deploy/web's pods to go", func(c context.Context) (bool, string, error) {
		return len(s.pods(t, c, ns, map[string]string{"app": "web"})) == 0, "", nil
	})
	d.TypeMeta = metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"}
	in, err := yaml.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(c, s.meshctl, "inject", "--kubeconfig", s.cluster.Kubeconfig, "-n", ns, "-")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("meshctl inject: %v: %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "deployment/web injected") {
		t.Errorf("meshctl inject reported %q", stderr.String())
	}
	var injected appsv1.Deployment
	if err := yaml.UnmarshalStrict(out, &injected); err != nil {
		t.Fatalf("meshctl inject printed no Deployment: %v\n%s", err, out)
	}
	if _, err := s.cluster.Client.AppsV1().Deployments(ns).Create(c, &injected, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitDeploymentReady(t, c, ns, "web")
	byMeshctl := s.onlyPod(t, c, ns, "web")
	checkMeshed(t, byMeshctl, ns, "web")

	if got, want := comparable(byMeshctl), comparable(byWebhook); !reflect.DeepEqual(got, want) {
		t.Errorf("the pod meshctl inject made differs from the webhook's:\nmeshctl: %s\nwebhook: %s", toJSON(got), toJSON(want))
	}
	if got := byWebhook.Annotations[meshmeta.AnnotationCreatedBy]; !strings.HasPrefix(got, "sluice/proxy-injector") {
		t.Errorf("webhook's pod created-by %q", got)
	}
	if got := byMeshctl.Annotations[meshmeta.AnnotationCreatedBy]; !strings.HasPrefix(got, "meshctl") {
		t.Errorf("meshctl's pod created-by %q", got)
	}

	t.Run("left alone", func(t *testing.T) {
		optedOut := bareEchoPod("opted-out")
		optedOut.Annotations = map[string]string{meshmeta.AnnotationInject: meshmeta.InjectDisabled}
		host := bareEchoPod("host-network")
		host.Spec.HostNetwork = true
		host.Spec.Containers[0].Args = []string{"serve", "--listen", "127.0.0.1:0"}
		for _, p := range []*corev1.Pod{optedOut, host} {
			got, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create %s: %v", p.Name, err)
			}
			if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != 1 || got.Labels[meshmeta.LabelControlPlaneNS] != "" {
				t.Errorf("pod %s was injected", p.Name)
			}
		}
	})
	t.Run("name conflict", func(t *testing.T) {
		p := bareEchoPod("conflict")
		p.Spec.Volumes = []corev1.Volume{{Name: "sluice-identity-token", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		_, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), `"sluice-identity-token"`) {
			t.Fatalf("create a pod with its own sluice-identity-token volume: %v, want a refusal naming the volume", err)
		}
	})
	t.Run("bad annotation", func(t *testing.T) {
		p := bareEchoPod("bad-annotation")
		p.Annotations = map[string]string{meshmeta.AnnotationSkipInboundPorts: "80-70000"}
		_, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), meshmeta.AnnotationSkipInboundPorts) {
			t.Fatalf("create a pod with %s=80-70000: %v, want a refusal naming the annotation", meshmeta.AnnotationSkipInboundPorts, err)
		}
		if !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) && !strings.Contains(err.Error(), "denied") {
			t.Errorf("refusal is %v", err)
		}
	})
}

// checkMeshed checks what a user would look at on an injected pod.
func checkMeshed(t *testing.T, p *corev1.Pod, ns, deployment string) {
	t.Helper()
	if len(p.Spec.InitContainers) != 1 || p.Spec.InitContainers[0].Name != meshmeta.ProxyContainerName {
		t.Fatalf("pod %s: init containers %v, want only %s (eBPF mode: no sluice-init)", p.Name, names(p.Spec.InitContainers), meshmeta.ProxyContainerName)
	}
	proxy := p.Spec.InitContainers[0]
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("the proxy is not a native sidecar (restartPolicy %v)", proxy.RestartPolicy)
	}
	if proxy.StartupProbe == nil || proxy.StartupProbe.HTTPGet == nil || proxy.StartupProbe.HTTPGet.Path != "/ready" {
		t.Errorf("the proxy's startup probe is %v, want GET /ready (it holds the app until steering works)", proxy.StartupProbe)
	}
	sc := proxy.SecurityContext
	if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 2102 || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) || ptr.Deref(sc.AllowPrivilegeEscalation, true) {
		t.Errorf("the proxy's security context is %+v", sc)
	}
	for _, ctr := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if ctr.SecurityContext != nil && ctr.SecurityContext.Capabilities != nil && len(ctr.SecurityContext.Capabilities.Add) > 0 {
			t.Errorf("container %s adds capabilities %v", ctr.Name, ctr.SecurityContext.Capabilities.Add)
		}
	}
	for k, want := range map[string]string{
		meshmeta.LabelControlPlaneNS:  cpNamespace,
		meshmeta.LabelWorkloadNS:      ns,
		meshmeta.LabelProxyDeployment: deployment,
	} {
		if got := p.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if got := p.Annotations[meshmeta.AnnotationMode]; got != meshmeta.ModeEBPF {
		t.Errorf("annotation %s = %q, want ebpf", meshmeta.AnnotationMode, got)
	}
	ready := false
	for _, cs := range p.Status.ContainerStatuses {
		ready = ready || cs.Ready
	}
	if !ready {
		t.Errorf("pod %s's app is not ready", p.Name)
	}
}

// comparable is what must match between two injections of one template:
// the pod's spec and its labels and annotations, without what differs
// between any two pods of a Deployment (names, the template hash, the
// API-token volume's random name, the proxy's token mount that the
// ServiceAccount admission plugin adds only to containers present before
// the webhook runs) and without the annotation that says who injected.
func comparable(p *corev1.Pod) map[string]any {
	spec := p.Spec.DeepCopy()
	isAPIToken := func(name string) bool { return strings.HasPrefix(name, "kube-api-access-") }
	var vols []corev1.Volume
	for _, v := range spec.Volumes {
		if !isAPIToken(v.Name) {
			vols = append(vols, v)
		}
	}
	spec.Volumes = vols
	clean := func(cs []corev1.Container) {
		for i := range cs {
			var ms []corev1.VolumeMount
			for _, m := range cs[i].VolumeMounts {
				if !isAPIToken(m.Name) {
					ms = append(ms, m)
				}
			}
			cs[i].VolumeMounts = ms
		}
	}
	clean(spec.InitContainers)
	clean(spec.Containers)
	lbls := map[string]string{}
	for k, v := range p.Labels {
		if k != "pod-template-hash" {
			lbls[k] = v
		}
	}
	ann := map[string]string{}
	for k, v := range p.Annotations {
		if k != meshmeta.AnnotationCreatedBy {
			ann[k] = v
		}
	}
	return map[string]any{"spec": spec, "labels": lbls, "annotations": ann}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// bareEchoPod is a pod of the echo server with no owner.
func bareEchoPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name:  "echo",
				Image: echoImage,
				Args:  []string{"serve", "--listen", ":8080"},
			}},
		},
	}
}

// onlyPod waits until app=<name> has exactly one running pod that is not
// being deleted, and returns it.
func (s *suite) onlyPod(t *testing.T, c context.Context, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, c, "one pod of "+name, func(c context.Context) (bool, string, error) {
		var live []corev1.Pod
		for _, p := range s.pods(t, c, ns, map[string]string{"app": name}) {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
				live = append(live, p)
			}
		}
		if len(live) != 1 {
			return false, "", nil
		}
		pod = &live[0]
		return true, "", nil
	})
	return pod
}
