// Package kubecheck holds meshctl's checks of a Kubernetes cluster and of
// the Sluice control plane and data plane in it: the API server answers
// and is new enough; the control plane's workloads are ready; the identity
// certificates, the proxy injector's webhook, the tap API service,
// Prometheus and the metrics API work; meshed pods' proxies are ready, up to
// date and scraped; and, before install, that the user may install and the
// namespace is free. It talks to the cluster through client-go only
// (Kubernetes objects, dry-run creates, access reviews and the API server's
// service proxy), so the checks run anywhere the kubeconfig works, and
// tests run them against client-go's fake clientset.
package kubecheck

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/version"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
)

// The categories of the cluster checks.
const (
	CategoryKubernetesAPI healthcheck.CategoryID = "kubernetes-api"
	CategoryControlPlane  healthcheck.CategoryID = "sluice-control-plane"
	CategoryIdentity      healthcheck.CategoryID = "sluice-identity"
	CategoryWebhook       healthcheck.CategoryID = "sluice-webhook"
	CategoryTap           healthcheck.CategoryID = "sluice-tap"
	CategoryPrometheus    healthcheck.CategoryID = "sluice-prometheus"
	CategoryMetricsAPI    healthcheck.CategoryID = "sluice-metrics-api"
	CategoryDataPlane     healthcheck.CategoryID = "sluice-data-plane"
	CategoryPreInstall    healthcheck.CategoryID = "pre-kubernetes-setup"
)

// IDs of the checks that others, here and in other packages, require.
const (
	// CheckKubeAPI fills State.Cluster.
	CheckKubeAPI       healthcheck.CheckID = "kube-api"
	CheckNamespace     healthcheck.CheckID = "control-plane-namespace"
	CheckTrustAnchors  healthcheck.CheckID = "trust-anchors"
	CheckIssuer        healthcheck.CheckID = "issuer"
	CheckWebhookConfig healthcheck.CheckID = "webhook-config"
	CheckPrometheus    healthcheck.CheckID = "prometheus"
	checkDataPlaneNS   healthcheck.CheckID = "data-plane-namespace"
)

// The oldest Kubernetes Sluice supports (the chart's kubeVersion).
const (
	MinKubernetesMajor = 1
	MinKubernetesMinor = 29
)

// MinCertValidity is how long the identity certificates must stay valid:
// the trust anchors fail and the issuer warns below it.
const MinCertValidity = 60 * 24 * time.Hour

// attemptTimeout bounds one attempt of a check that calls through the API
// server's proxies, which wait long for a backend that does not answer.
const attemptTimeout = 15 * time.Second

// Options configure the cluster checks.
type Options struct {
	// Connect connects to the cluster: the first check calls it.
	Connect func(ctx context.Context) (*healthcheck.Cluster, error)
	// Namespace is the control plane's, as the user gave it (for hints).
	Namespace string
	// Wait is how long checks that may pass soon (workloads becoming
	// ready) keep retrying. Zero tries once.
	Wait time.Duration
	// Now is the clock of the certificate checks; nil means time.Now.
	Now func() time.Time
	// DataPlaneNamespace limits the data-plane checks to one namespace; ""
	// checks every namespace.
	DataPlaneNamespace string
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// kubeAPI requires the check that fills State.Cluster.
var kubeAPI = []healthcheck.CheckID{CheckKubeAPI}

// KubernetesAPI is the first category of every cluster check: the API
// server answers (a fatal check: nothing else runs without it) and is new
// enough.
func KubernetesAPI(o Options) healthcheck.Category {
	return healthcheck.Category{ID: CategoryKubernetesAPI, Checkers: []healthcheck.Checker{
		{
			ID:          CheckKubeAPI,
			Description: "can reach the Kubernetes API",
			Hint: "meshctl uses the kubeconfig of --kubeconfig, $KUBECONFIG or ~/.kube/config and its current " +
				"context (or --context); `kubectl version` should answer with the same settings",
			Fatal: true,
			Check: func(ctx context.Context, s *healthcheck.State) error {
				cl, err := o.Connect(ctx)
				if err != nil {
					return err
				}
				v, err := cl.Client.Discovery().ServerVersion()
				if err != nil {
					return fmt.Errorf("get the API server's version: %w", err)
				}
				cl.Version = v
				s.Cluster = cl
				return nil
			},
		},
		{
			Description: fmt.Sprintf("Kubernetes is %d.%d or newer", MinKubernetesMajor, MinKubernetesMinor),
			Hint:        fmt.Sprintf("Sluice's chart and its native sidecar proxies need Kubernetes %d.%d or newer: upgrade the cluster", MinKubernetesMajor, MinKubernetesMinor),
			Requires:    kubeAPI,
			Check: func(_ context.Context, s *healthcheck.State) error {
				return checkKubernetesVersion(s.Cluster.Version.GitVersion, s.Cluster.Version.Major, s.Cluster.Version.Minor)
			},
			Detail: func(s *healthcheck.State) string { return s.Cluster.Version.GitVersion },
		},
	}}
}

// checkKubernetesVersion parses the discovery version (gitVersion, else
// major and minor, which may end in "+") and compares it with the minimum.
func checkKubernetesVersion(gitVersion, major, minor string) error {
	s := gitVersion
	if s == "" {
		s = strings.TrimSuffix(major, "+") + "." + strings.TrimSuffix(minor, "+")
	}
	v, err := version.ParseGeneric(s)
	if err != nil {
		return fmt.Errorf("parse the API server's version %q: %w", s, err)
	}
	if !v.AtLeast(version.MajorMinor(MinKubernetesMajor, MinKubernetesMinor)) {
		return fmt.Errorf("the cluster runs Kubernetes %s, older than %d.%d", s, MinKubernetesMajor, MinKubernetesMinor)
	}
	return nil
}

// PodProblem says what keeps p from running (and, with ready, from having
// every container ready), or "" when nothing does. Terminating pods have
// no problem: they are on their way out.
func PodProblem(p *corev1.Pod, ready bool) string {
	if p.DeletionTimestamp != nil {
		return ""
	}
	statuses := append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...)
	for _, cs := range statuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" && w.Reason != "PodInitializing" {
			msg := fmt.Sprintf("container %s is waiting: %s", cs.Name, w.Reason)
			if w.Message != "" {
				msg += " (" + firstLine(w.Message) + ")"
			}
			if cs.RestartCount > 0 {
				msg += fmt.Sprintf(", restarted %d times", cs.RestartCount)
			}
			if t := cs.LastTerminationState.Terminated; t != nil {
				msg += fmt.Sprintf(", last exit %d", t.ExitCode)
				if t.Message != "" {
					msg += ": " + firstLine(t.Message)
				} else if t.Reason != "" {
					msg += " (" + t.Reason + ")"
				}
			}
			return msg
		}
	}
	if p.Status.Phase != corev1.PodRunning {
		msg := "phase " + string(p.Status.Phase)
		if p.Status.Phase == "" {
			msg = "no phase yet"
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
				return msg + ", not scheduled: " + firstLine(c.Message)
			}
		}
		if p.Status.Reason != "" {
			msg += ": " + p.Status.Reason
		}
		return msg
	}
	if !ready {
		return ""
	}
	var notReady []string
	for _, cs := range p.Status.ContainerStatuses {
		if !cs.Ready {
			notReady = append(notReady, cs.Name)
		}
	}
	if len(notReady) > 0 {
		return "not ready: container " + strings.Join(notReady, ", ")
	}
	return ""
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

// list writes items as an indented list under a first line.
func list(first string, items []string) error {
	return errors.New(first + ":\n  " + strings.Join(items, "\n  "))
}

// notFound makes a NotFound error one line: "no deployment sluice/x".
func notFound(err error, kind, ns, name string) error {
	if apierrors.IsNotFound(err) {
		if ns != "" {
			return fmt.Errorf("no %s %s/%s", kind, ns, name)
		}
		return fmt.Errorf("no %s %s", kind, name)
	}
	return err
}

// ProxyError says what was asked through the API server's proxy and adds
// what the backend answered, which client-go keeps in the causes of the
// error it makes of an answer that is not a Kubernetes Status.
func ProxyError(what string, err error) error {
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		if d := se.Status().Details; d != nil {
			for _, c := range d.Causes {
				if c.Type == metav1.CauseTypeUnexpectedServerResponse && c.Message != "" && !strings.Contains(err.Error(), c.Message) {
					return fmt.Errorf("%s: %w: %s", what, err, truncate(firstLine(c.Message), 300))
				}
			}
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// withTimeout runs check with a context bounded by attemptTimeout.
func withTimeout(check func(ctx context.Context, s *healthcheck.State) error) func(ctx context.Context, s *healthcheck.State) error {
	return func(ctx context.Context, s *healthcheck.State) error {
		ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
		return check(ctx, s)
	}
}

// date formats a certificate's time for messages.
func date(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }
