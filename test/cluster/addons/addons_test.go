package addons

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func TestCoreDNSManifests(t *testing.T) {
	objs, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	var svc corev1.Service
	var cm corev1.ConfigMap
	var deploy appsv1.Deployment
	for _, o := range objs {
		kinds[o.GetKind()+"/"+o.GetName()] = true
		var into any
		switch o.GetKind() {
		case "Service":
			into = &svc
		case "ConfigMap":
			into = &cm
		case "Deployment":
			into = &deploy
		default:
			continue
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
			t.Errorf("%s %s does not convert strictly: %v", o.GetKind(), o.GetName(), err)
		}
	}
	for _, want := range []string{"ServiceAccount/coredns", "ClusterRole/system:coredns", "ClusterRoleBinding/system:coredns",
		"ConfigMap/coredns", "Deployment/coredns", "Service/kube-dns"} {
		if !kinds[want] {
			t.Errorf("no %s in the manifests (have %v)", want, kinds)
		}
	}
	if svc.Spec.ClusterIP != "10.96.0.10" || len(svc.Spec.Ports) != 3 {
		t.Errorf("kube-dns Service: clusterIP %q, %d ports; want 10.96.0.10 with 53/UDP, 53/TCP, 9153", svc.Spec.ClusterIP, len(svc.Spec.Ports))
	}
	corefile := cm.Data["Corefile"]
	for _, plugin := range []string{"errors", "health :8080", "ready :8181", "kubernetes cluster.local in-addr.arpa ip6.arpa",
		"forward . /etc/resolv.conf", "cache 30", "loop", "reload"} {
		if !strings.Contains(corefile, plugin) {
			t.Errorf("Corefile lacks %q:\n%s", plugin, corefile)
		}
	}
	c := deploy.Spec.Template.Spec.Containers[0]
	if *deploy.Spec.Replicas != 1 || c.ReadinessProbe.HTTPGet.Port.IntValue() != 8181 || c.LivenessProbe.HTTPGet.Port.IntValue() != 8080 {
		t.Errorf("Deployment: replicas %d, readiness port %v, liveness port %v; want 1, 8181, 8080",
			*deploy.Spec.Replicas, c.ReadinessProbe.HTTPGet.Port, c.LivenessProbe.HTTPGet.Port)
	}
}

func TestDecodeSkipsEmptyDocuments(t *testing.T) {
	objs, err := Decode([]byte("---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].GetName() != "a" {
		t.Fatalf("got %d objects, want the one Namespace", len(objs))
	}
	if _, err := Decode([]byte("apiVersion: v1\nkind: Namespace\n")); err == nil {
		t.Error("an object without a name decoded without error")
	}
}
