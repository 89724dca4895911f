package kubecheck

import (
	"context"
	"errors"
	"fmt"

	authv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
)

// installResource is a kind of object `meshctl install` creates.
type installResource struct {
	group, resource, kind string
	// namespace is where the chart creates it: "" for cluster-wide kinds,
	// "-" for the control plane's namespace.
	namespace string
}

// installResources are the kinds of the chart's objects.
var installResources = []installResource{
	{"", "namespaces", "Namespaces", ""},
	{"rbac.authorization.k8s.io", "clusterroles", "ClusterRoles", ""},
	{"rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBindings", ""},
	{"admissionregistration.k8s.io", "mutatingwebhookconfigurations", "MutatingWebhookConfigurations", ""},
	{"apiregistration.k8s.io", "apiservices", "APIServices", ""},
	// The tap service reads the API server's client CA from kube-system.
	{"rbac.authorization.k8s.io", "rolebindings", "RoleBindings", metav1.NamespaceSystem},
	{"", "serviceaccounts", "ServiceAccounts", "-"},
	{"", "secrets", "Secrets", "-"},
	{"", "configmaps", "ConfigMaps", "-"},
	{"", "services", "Services", "-"},
	{"apps", "deployments", "Deployments", "-"},
	{"apps", "daemonsets", "DaemonSets", "-"},
}

// PreInstall returns the checks of a cluster before Sluice is installed,
// after KubernetesAPI: the control plane's namespace is free and the user
// may create every kind of object the chart has.
func PreInstall(o Options) healthcheck.Category {
	out := []healthcheck.Checker{{
		Description: "control plane namespace does not exist yet",
		Hint: "`meshctl check` (without --pre) checks an installed control plane, and `meshctl upgrade` changes it; " +
			"pass -L/--control-plane-namespace to install another one elsewhere",
		Warning:  true,
		Requires: kubeAPI,
		Check: func(ctx context.Context, s *healthcheck.State) error {
			_, err := s.Cluster.Client.CoreV1().Namespaces().Get(ctx, s.Cluster.Namespace, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				return nil
			case err != nil:
				return fmt.Errorf("read namespace %s: %w", s.Cluster.Namespace, err)
			}
			return fmt.Errorf("namespace %s already exists: is Sluice already installed? Use `meshctl upgrade` to change it", s.Cluster.Namespace)
		},
	}}
	for _, r := range installResources {
		desc := "can create " + r.kind
		switch r.namespace {
		case "":
		case "-":
			desc += " in namespace " + o.Namespace
		default:
			desc += " in namespace " + r.namespace
		}
		out = append(out, healthcheck.Checker{
			Description: desc,
			Hint: "installing Sluice creates cluster-wide objects (RBAC, the injector's webhook, the tap API service) " +
				"and its control plane: use a kubeconfig context with cluster-admin rights, or ask an administrator to install it",
			Requires: kubeAPI,
			Check:    func(ctx context.Context, s *healthcheck.State) error { return canCreate(ctx, s.Cluster, r) },
		})
	}
	return healthcheck.Category{ID: CategoryPreInstall, Checkers: out}
}

// canCreate asks the API server, with a SelfSubjectAccessReview, whether
// the kubeconfig's user may create r.
func canCreate(ctx context.Context, cl *healthcheck.Cluster, r installResource) error {
	ns := r.namespace
	if ns == "-" {
		ns = cl.Namespace
	}
	review := &authv1.SelfSubjectAccessReview{Spec: authv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authv1.ResourceAttributes{Verb: "create", Group: r.group, Resource: r.resource, Namespace: ns},
	}}
	got, err := cl.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("ask whether you may create %s: %w", r.resource, err)
	}
	if got.Status.Allowed {
		return nil
	}
	what := r.resource
	if r.group != "" {
		what += "." + r.group
	}
	if ns != "" {
		what += " in namespace " + ns
	}
	msg := "you may not create " + what
	if got.Status.Reason != "" {
		msg += ": " + got.Status.Reason
	}
	if got.Status.EvaluationError != "" {
		msg += " (" + got.Status.EvaluationError + ")"
	}
	return errors.New(msg)
}
