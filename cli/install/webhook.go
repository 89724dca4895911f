package install

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// dryRunImage is the image of the pod WebhookInjects creates in a dry run
// (never pulled: the pod is not stored).
const dryRunImage = "registry.k8s.io/pause:3.10"

// WebhookInjects creates, in a server-side dry run in namespace ns, a pod
// annotated for injection, and fails unless it comes back with the proxy:
// the proxy injector answers the API server. A webhook with failurePolicy
// Fail that does not answer makes the create fail; with Ignore the pod
// comes back without the proxy.
func WebhookInjects(ctx context.Context, client kubernetes.Interface, ns string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "sluice-check-webhook-",
			Namespace:    ns,
			Annotations:  map[string]string{meshmeta.AnnotationInject: meshmeta.InjectEnabled},
			Labels:       map[string]string{"app.kubernetes.io/part-of": "sluice", "app.kubernetes.io/name": "sluice-check"},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: dryRunImage}}},
	}
	got, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		return fmt.Errorf("create a pod in namespace %s (dry run): %w", ns, err)
	}
	if !inject.Injected(&got.Spec) {
		return errors.New("a pod annotated " + meshmeta.AnnotationInject + ": " + meshmeta.InjectEnabled +
			" was created (dry run) in namespace " + ns + " without a " + meshmeta.ProxyContainerName + " container")
	}
	return nil
}
