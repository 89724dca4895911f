package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// meshedNamespace creates a namespace whose pods the injector meshes.
func (s *suite) meshedNamespace(t *testing.T, prefix string) string {
	return s.namespace(t, prefix, map[string]string{meshmeta.AnnotationInject: meshmeta.InjectEnabled})
}

// echoDeployment is a Deployment of test/cluster's echo server on 8080,
// with a readiness probe, selected by app=<name>.
func echoDeployment(name string, replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](2),
					Containers: []corev1.Container{{
						Name:  "echo",
						Image: echoImage,
						Args:  []string{"serve", "--listen", ":8080", "--shutdown-timeout", "1s"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
}

// service is a ClusterIP Service on port 80 for the pods app=<name>.
func service(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}
}

// deployEcho creates an echo Deployment and its Service in ns and waits
// until every replica is ready.
func (s *suite) deployEcho(t *testing.T, c context.Context, ns, name string, replicas int32) *appsv1.Deployment {
	t.Helper()
	if _, err := s.cluster.Client.CoreV1().Services(ns).Create(c, service(name), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.cluster.Client.AppsV1().Deployments(ns).Create(c, echoDeployment(name, replicas), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return s.waitDeploymentReady(t, c, ns, name)
}

// clientLoop creates a pod that requests url every interval, forever.
func (s *suite) clientLoop(t *testing.T, c context.Context, ns, name, url string, interval time.Duration) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name:  "client",
				Image: busyboxImage,
				Args:  []string{"sh", "-c", fmt.Sprintf("while true; do wget -q -O /dev/null %s; sleep %g; done", url, interval.Seconds())},
			}},
		},
	}
	if _, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return s.waitPodRunning(t, c, ns, name)
}

// pods lists the pods of ns that match the selector.
func (s *suite) pods(t *testing.T, c context.Context, ns string, selector map[string]string) []corev1.Pod {
	t.Helper()
	l, err := s.cluster.Client.CoreV1().Pods(ns).List(c, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(selector).String()})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}
