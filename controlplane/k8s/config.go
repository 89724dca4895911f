// Package k8s holds what the control plane's services share to talk to the
// Kubernetes API: client configuration, and (see api.go) one informer
// wrapper built with the explicit list of resources a service watches.
package k8s

import (
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig returns the client configuration: the kubeconfig file at path
// when it is set, else $KUBECONFIG when set, else the pod's in-cluster
// service account.
func RESTConfig(path string) (*rest.Config, error) {
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig and not in a pod: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// NewClient returns a clientset for RESTConfig(path), identifying itself as
// userAgent (such as "sluice-destination").
func NewClient(path, userAgent string) (kubernetes.Interface, *rest.Config, error) {
	cfg, err := RESTConfig(path)
	if err != nil {
		return nil, nil, err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = userAgent
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("make a Kubernetes client: %w", err)
	}
	return c, cfg, nil
}
