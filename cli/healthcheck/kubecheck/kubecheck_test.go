package kubecheck

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/install"
	"github.com/sluice-mesh/sluice/cli/internal/checktest"
	"github.com/sluice-mesh/sluice/cli/internal/fakekube"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

var ctx = context.Background()

func options(c *fakekube.Cluster) Options {
	return Options{
		Connect:   c.Connect,
		Namespace: fakekube.Namespace,
		Now:       func() time.Time { return fakekube.Now },
	}
}

// mode says which categories a test runs.
type mode int

const (
	modeDefault mode = iota
	modeProxy
	modePre
)

func categories(m mode, o Options) []healthcheck.Category {
	cats := []healthcheck.Category{KubernetesAPI(o)}
	switch m {
	case modePre:
		return append(cats, PreInstall(o))
	case modeProxy:
		return append(append(cats, ControlPlane(o)...), DataPlane(o))
	}
	return append(cats, ControlPlane(o)...)
}

// expect is the wanted outcome of a check.
type expect = checktest.Expect

var (
	pass  = checktest.Pass
	fails = checktest.Fails
	warns = checktest.Warns
	skips = checktest.Skips
)

// healthyDefault is every check of the default mode, passing.
func healthyDefault() map[string]expect {
	w := map[string]expect{
		"kubernetes-api: can reach the Kubernetes API":                                          pass,
		"kubernetes-api: Kubernetes is 1.29 or newer":                                           pass,
		"sluice-control-plane: control plane namespace exists":                                  pass,
		"sluice-control-plane: control plane pods are running":                                  pass,
		"sluice-identity: trust anchors are valid for at least 60 days":                         pass,
		"sluice-identity: issuer certificate chains to the trust anchors":                       pass,
		"sluice-identity: issuer certificate is valid for at least 60 days":                     pass,
		"sluice-webhook: proxy injector webhook's caBundle verifies the injector's certificate": pass,
		"sluice-webhook: proxy injector webhook injects pods":                                   pass,
		"sluice-tap: tap API service is available":                                              pass,
		"sluice-prometheus: Prometheus answers":                                                 pass,
		"sluice-prometheus: control plane and agents are scraped":                               pass,
		"sluice-metrics-api: metrics API answers":                                               pass,
		"sluice-control-plane: sluice-agent DaemonSet is ready":                                 pass,
		"sluice-control-plane: sluice-prometheus Deployment is ready":                           pass,
	}
	for _, d := range []string{"destination", "identity", "proxy-injector", "tap", "metrics-api"} {
		w["sluice-control-plane: sluice-"+d+" Deployment is ready"] = pass
	}
	return w
}

func healthyProxy() map[string]expect {
	w := healthyDefault()
	for _, d := range []string{
		"data plane proxies are ready", "data plane proxies run the control plane's version",
		"pods of meshed namespaces have a proxy", "data plane proxies are scraped by Prometheus",
	} {
		w["sluice-data-plane: "+d] = pass
	}
	return w
}

func healthyPre() map[string]expect {
	w := map[string]expect{
		"kubernetes-api: can reach the Kubernetes API":                     pass,
		"kubernetes-api: Kubernetes is 1.29 or newer":                      pass,
		"pre-kubernetes-setup: control plane namespace does not exist yet": pass,
	}
	for _, r := range installResources {
		desc := "can create " + r.kind
		switch r.namespace {
		case "":
		case "-":
			desc += " in namespace sluice"
		default:
			desc += " in namespace " + r.namespace
		}
		w["pre-kubernetes-setup: "+desc] = pass
	}
	return w
}

// tc is a broken cluster and what the checks say about it.
type tc struct {
	name   string
	mode   mode
	empty  bool // without Sluice
	break_ func(t *testing.T, c *fakekube.Cluster, o *Options)
	wantOK bool
	// want changes the healthy expectations; only lets every other check
	// out.
	want func(w map[string]expect)
	only bool
}

func (tc tc) run(t *testing.T) {
	var c *fakekube.Cluster
	if tc.empty {
		c = fakekube.Empty(t)
	} else {
		c = fakekube.Healthy(t)
	}
	o := options(c)
	if tc.break_ != nil {
		tc.break_(t, c, &o)
	}
	want := map[string]expect{}
	if !tc.only {
		switch tc.mode {
		case modeDefault:
			want = healthyDefault()
		case modeProxy:
			want = healthyProxy()
		case modePre:
			want = healthyPre()
		}
	}
	if tc.want != nil {
		tc.want(want)
	}
	got, ok := checktest.Run(t, categories(tc.mode, o))
	if ok != tc.wantOK {
		t.Errorf("run passed = %v, want %v", ok, tc.wantOK)
	}
	checktest.Compare(t, got, want)
}

func TestKubernetesAPI(t *testing.T) {
	for _, tc := range []tc{
		{name: "healthy", wantOK: true},
		{
			name: "unreachable",
			break_: func(_ *testing.T, _ *fakekube.Cluster, o *Options) {
				o.Connect = func(context.Context) (*healthcheck.Cluster, error) {
					return nil, errors.New("cannot reach the Kubernetes API server at https://127.0.0.1:6443 (connection refused)")
				}
			},
			only: true,
			want: func(w map[string]expect) {
				w["kubernetes-api: can reach the Kubernetes API"] = fails("cannot reach the Kubernetes API server at https://127.0.0.1:6443")
			},
		},
		{
			name: "old",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) {
				c.Client.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{Major: "1", Minor: "28+", GitVersion: "v1.28.3-gke.100"}
			},
			wantOK: false,
			want: func(w map[string]expect) {
				w["kubernetes-api: Kubernetes is 1.29 or newer"] = fails("the cluster runs Kubernetes v1.28.3-gke.100, older than 1.29")
			},
		},
		{
			name: "not installed", empty: true, only: true,
			want: func(w map[string]expect) {
				w["kubernetes-api: can reach the Kubernetes API"] = pass
				w["kubernetes-api: Kubernetes is 1.29 or newer"] = pass
				w["sluice-control-plane: control plane namespace exists"] = fails(`no namespace "sluice": Sluice is not installed in this cluster`)
			},
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

func TestKubernetesVersion(t *testing.T) {
	for _, v := range [][3]string{{"v1.29.0", "", ""}, {"", "1", "30+"}, {"v2.0.0", "", ""}, {"v1.34.0-rc.1", "", ""}} {
		if err := checkKubernetesVersion(v[0], v[1], v[2]); err != nil {
			t.Errorf("%v: %v", v, err)
		}
	}
	for _, v := range [][3]string{{"v1.28.9", "", ""}, {"", "1", "28+"}, {"", "", ""}, {"banana", "", ""}} {
		if err := checkKubernetesVersion(v[0], v[1], v[2]); err == nil {
			t.Errorf("%v accepted", v)
		}
	}
}

func TestControlPlane(t *testing.T) {
	for _, tc := range []tc{
		{
			name: "deployment not ready",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				d, err := c.Client.AppsV1().Deployments(fakekube.Namespace).Get(ctx, "sluice-destination", metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				d.Status.ReadyReplicas, d.Status.AvailableReplicas = 0, 0
				if _, err := c.Client.AppsV1().Deployments(fakekube.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-control-plane: sluice-destination Deployment is ready"] = fails("0/1 replicas ready, 1/1 updated, 0 available, 1 in all")
			},
		},
		{
			name: "deployment missing",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				if err := c.Client.AppsV1().Deployments(fakekube.Namespace).Delete(ctx, "sluice-tap", metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-control-plane: sluice-tap Deployment is ready"] = fails("no deployment sluice/sluice-tap")
			},
		},
		{
			name: "agents not ready",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				d, err := c.Client.AppsV1().DaemonSets(fakekube.Namespace).Get(ctx, install.AgentDaemonSet, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				d.Status.NumberReady = 1
				if _, err := c.Client.AppsV1().DaemonSets(fakekube.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-control-plane: sluice-agent DaemonSet is ready"] = fails("1/2 nodes ready, 2/2 updated")
			},
		},
		{
			name: "crash loop",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				setPodStatus(t, c, fakekube.Namespace, "sluice-identity-7d9c5-x2k4q", func(st *corev1.PodStatus) {
					st.ContainerStatuses[0].Ready = false
					st.ContainerStatuses[0].RestartCount = 5
					st.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 2m40s restarting failed container"}}
					st.ContainerStatuses[0].LastTerminationState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: "load issuer: expired\nmore"}}
				})
			},
			want: func(w map[string]expect) {
				w["sluice-control-plane: control plane pods are running"] = fails("1 of 8 pods do not run:\n  sluice-identity-7d9c5-x2k4q: container identity is waiting: " +
					"CrashLoopBackOff (back-off 2m40s restarting failed container), restarted 5 times, last exit 1: load issuer: expired")
			},
		},
		{
			name: "pod unschedulable",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				setPodStatus(t, c, fakekube.Namespace, "sluice-tap-7d9c5-x2k4q", func(st *corev1.PodStatus) {
					*st = corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{
						Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Message: "0/2 nodes are available: 2 Insufficient cpu."}}}
				})
			},
			want: func(w map[string]expect) {
				w["sluice-control-plane: control plane pods are running"] = fails("sluice-tap-7d9c5-x2k4q: phase Pending, not scheduled: 0/2 nodes are available: 2 Insufficient cpu.")
			},
		},
		{
			name: "prometheus disabled", wantOK: true,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				if err := c.Client.AppsV1().Deployments(fakekube.Namespace).Delete(ctx, "sluice-prometheus", metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				if err := c.Client.CoreV1().Services(fakekube.Namespace).Delete(ctx, PrometheusService, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				delete(c.Services, "prometheus:9090")
			},
			want: func(w map[string]expect) {
				w["sluice-control-plane: sluice-prometheus Deployment is ready"] = skips("not run: not installed (prometheus.enabled is false)")
				w["sluice-prometheus: Prometheus answers"] = warns("no service sluice/prometheus: the chart's Prometheus is disabled")
				w["sluice-prometheus: control plane and agents are scraped"] = skips(`requires "Prometheus answers", which warned`)
			},
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

func setPodStatus(t *testing.T, c *fakekube.Cluster, ns, name string, f func(*corev1.PodStatus)) {
	t.Helper()
	p, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f(&p.Status)
	if _, err := c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func generate(t *testing.T, o pki.GenerateOptions) *pki.Credentials {
	t.Helper()
	creds, err := pki.Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

const day = 24 * time.Hour

func TestIdentity(t *testing.T) {
	for _, tc := range []tc{
		{
			name: "anchor expires in 30 days",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				cr := generate(t, pki.GenerateOptions{Now: fakekube.Now.Add(-day), AnchorLifetime: 31 * day, IssuerLifetime: 20 * day})
				c.SetIdentity(t, cr.TrustAnchorPEM, cr.IssuerCertPEM, cr.IssuerKeyPEM)
			},
			want: func(w map[string]expect) {
				w["sluice-identity: trust anchors are valid for at least 60 days"] = fails(`trust anchor "CN=root.sluice.cluster.local" expires on 2026-03-31 12:00 UTC, in 30 days`)
				w["sluice-identity: issuer certificate chains to the trust anchors"] = skips(`requires "trust anchors are valid for at least 60 days", which failed`)
				w["sluice-identity: issuer certificate is valid for at least 60 days"] = skips("which was skipped")
			},
		},
		{
			name: "anchor expired",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				cr := generate(t, pki.GenerateOptions{Now: fakekube.Now.Add(-10 * day), AnchorLifetime: 5 * day, IssuerLifetime: 4 * day})
				c.SetIdentity(t, cr.TrustAnchorPEM, cr.IssuerCertPEM, cr.IssuerKeyPEM)
			},
			want: func(w map[string]expect) {
				w["sluice-identity: trust anchors are valid for at least 60 days"] = fails(`trust anchor "CN=root.sluice.cluster.local" expired on 2026-02-24 12:00 UTC`)
				w["sluice-identity: issuer certificate chains to the trust anchors"] = skips()
				w["sluice-identity: issuer certificate is valid for at least 60 days"] = skips()
			},
		},
		{
			name: "anchors do not parse",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				c.SetIdentity(t, []byte("not PEM"), nil, nil)
			},
			want: func(w map[string]expect) {
				w["sluice-identity: trust anchors are valid for at least 60 days"] = fails("configmap sluice/sluice-identity-trust-roots, key ca-bundle.crt: no PEM CERTIFICATE block found")
				w["sluice-identity: issuer certificate chains to the trust anchors"] = skips()
				w["sluice-identity: issuer certificate is valid for at least 60 days"] = skips()
			},
		},
		{
			name: "issuer expires in 20 days", wantOK: true,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				cr := generate(t, pki.GenerateOptions{Now: fakekube.Now.Add(-day), IssuerLifetime: 21 * day})
				c.SetIdentity(t, cr.TrustAnchorPEM, cr.IssuerCertPEM, cr.IssuerKeyPEM)
			},
			want: func(w map[string]expect) {
				w["sluice-identity: issuer certificate is valid for at least 60 days"] = warns(`issuer certificate "CN=identity.sluice.cluster.local" expires on 2026-03-21 12:00 UTC, in 20 days`)
			},
		},
		{
			name: "issuer of another root",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				a := generate(t, pki.GenerateOptions{Now: fakekube.Now.Add(-day)})
				b := generate(t, pki.GenerateOptions{Now: fakekube.Now.Add(-day)})
				c.SetIdentity(t, a.TrustAnchorPEM, b.IssuerCertPEM, b.IssuerKeyPEM)
			},
			want: func(w map[string]expect) {
				w["sluice-identity: issuer certificate chains to the trust anchors"] = fails("secret sluice/sluice-identity-issuer:", "does not chain to the trust anchors")
				w["sluice-identity: issuer certificate is valid for at least 60 days"] = skips()
			},
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

func TestWebhook(t *testing.T) {
	const injects = "sluice-webhook: proxy injector webhook injects pods"
	for _, tc := range []tc{
		{
			name: "caBundle of another CA",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				mwcs := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
				mwc, err := mwcs.Get(ctx, WebhookConfigName(fakekube.Namespace), metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				mwc.Webhooks[0].ClientConfig.CABundle, _, _ = fakekube.ServingCert(t, "sluice-proxy-injector.sluice.svc", fakekube.Now.Add(-day), fakekube.Now.Add(day))
				if _, err := mwcs.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-webhook: proxy injector webhook's caBundle verifies the injector's certificate"] = fails(
					"the caBundle of mutatingwebhookconfiguration sluice-sluice-proxy-injector does not verify the certificate of secret " +
						"sluice/sluice-proxy-injector-tls for sluice-proxy-injector.sluice.svc: x509: certificate signed by unknown authority")
				w[injects] = skips()
			},
		},
		{
			name: "certificate for another name",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				ca, crt, key := fakekube.ServingCert(t, "sluice-proxy-injector.other.svc", fakekube.Now.Add(-day), fakekube.Now.Add(day))
				mwcs := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
				mwc, _ := mwcs.Get(ctx, WebhookConfigName(fakekube.Namespace), metav1.GetOptions{})
				mwc.Webhooks[0].ClientConfig.CABundle = ca
				if _, err := mwcs.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
				sec, _ := c.Client.CoreV1().Secrets(fakekube.Namespace).Get(ctx, injectorTLSSecret, metav1.GetOptions{})
				sec.Data["tls.crt"], sec.Data["tls.key"] = crt, key
				if _, err := c.Client.CoreV1().Secrets(fakekube.Namespace).Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-webhook: proxy injector webhook's caBundle verifies the injector's certificate"] = fails("certificate is valid for sluice-proxy-injector.other.svc, not sluice-proxy-injector.sluice.svc")
				w[injects] = skips()
			},
		},
		{
			name: "configuration missing",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				if err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, WebhookConfigName(fakekube.Namespace), metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-webhook: proxy injector webhook's caBundle verifies the injector's certificate"] = fails("no mutatingwebhookconfiguration sluice-sluice-proxy-injector")
				w[injects] = skips()
			},
		},
		{
			name:   "webhook ignored",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) { c.Webhook = nil },
			want: func(w map[string]expect) {
				w[injects] = fails("a pod annotated sluice.io/inject: enabled was created (dry run) in namespace default without a sluice-proxy container")
			},
		},
		{
			name: "webhook fails",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) {
				c.Webhook = func(*corev1.Pod) (*corev1.Pod, error) {
					return nil, errors.New(`Internal error occurred: failed calling webhook "proxy-injector.sluice.io": context deadline exceeded`)
				}
			},
			want: func(w map[string]expect) {
				w[injects] = fails(`create a pod in namespace default (dry run): Internal error occurred: failed calling webhook "proxy-injector.sluice.io"`)
			},
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

func TestDryRunNamespace(t *testing.T) {
	for ctxNS, want := range map[string]string{"": "default", "shop": "shop", "sluice": "default", "kube-system": "default"} {
		if got := dryRunNamespace(&healthcheck.Cluster{Namespace: "sluice", ContextNamespace: ctxNS}); got != want {
			t.Errorf("context namespace %q: %q, want %q", ctxNS, got, want)
		}
	}
}

func TestServices(t *testing.T) {
	for _, tc := range []tc{
		{
			name: "tap not available",
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				as, err := c.Dynamic.Resource(APIServices).Get(ctx, TapAPIService, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				_ = unstructured.SetNestedSlice(as.Object, []any{map[string]any{"type": "Available", "status": "False",
					"reason": "FailedDiscoveryCheck", "message": "failing or missing response from https://10.96.0.12:443"}}, "status", "conditions")
				if _, err := c.Dynamic.Resource(APIServices).Update(ctx, as, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-tap: tap API service is available"] = fails("apiservice v1alpha1.tap.sluice.io is not available: FailedDiscoveryCheck: failing or missing response")
			},
		},
		{
			name:   "prometheus down",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) { delete(c.Services, "prometheus:9090") },
			want: func(w map[string]expect) {
				w["sluice-prometheus: Prometheus answers"] = fails(`GET /-/ready of service sluice/prometheus:9090: no endpoints available for service "prometheus"`)
				w["sluice-prometheus: control plane and agents are scraped"] = skips()
			},
		},
		{
			name: "target down",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) {
				for i, tg := range c.Targets {
					if tg.Labels["pod"] == "sluice-identity-7d9c5-x2k4q" {
						c.Targets[i].Health, c.Targets[i].LastError = "down", "Get \""+tg.ScrapeURL+"\": connection refused"
						c.Targets[i].ScrapeURL = "http://10.0.0.99:9990/metrics"
					}
				}
			},
			want: func(w map[string]expect) {
				w["sluice-prometheus: control plane and agents are scraped"] = fails("1 of 7 targets of job sluice-controller are not up:\n  " +
					"identity sluice-identity-7d9c5-x2k4q (http://10.0.0.99:9990/metrics) is down: Get \"http://")
			},
		},
		{
			name:   "no targets",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) { c.Targets = nil },
			want: func(w map[string]expect) {
				w["sluice-prometheus: control plane and agents are scraped"] = fails("no target of job sluice-controller in Prometheus")
			},
		},
		{
			name: "metrics API fails",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) {
				c.Services["sluice-metrics-api:8085"] = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
					http.Error(w, `{"error":"query Prometheus at http://prometheus.sluice.svc.cluster.local:9090: connection refused"}`, http.StatusServiceUnavailable)
				})
			},
			want: func(w map[string]expect) {
				w["sluice-metrics-api: metrics API answers"] = fails("GET /api/v1/stat of service sluice/sluice-metrics-api:8085: ",
					"query Prometheus at http://prometheus.sluice.svc.cluster.local:9090: connection refused")
			},
		},
		{
			name:   "metrics API without endpoints",
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) { delete(c.Services, "sluice-metrics-api:8085") },
			want: func(w map[string]expect) {
				w["sluice-metrics-api: metrics API answers"] = fails(`no endpoints available for service "sluice-metrics-api"`)
			},
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

func TestDataPlane(t *testing.T) {
	const (
		ready   = "sluice-data-plane: data plane proxies are ready"
		version = "sluice-data-plane: data plane proxies run the control plane's version"
		meshed  = "sluice-data-plane: pods of meshed namespaces have a proxy"
		scraped = "sluice-data-plane: data plane proxies are scraped by Prometheus"
	)
	for _, tc := range []tc{
		{name: "healthy", mode: modeProxy, wantOK: true},
		{
			name: "proxy not ready", mode: modeProxy,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				setPodStatus(t, c, fakekube.AppNamespace, "web-0", func(st *corev1.PodStatus) {
					st.InitContainerStatuses[0].Ready = false
					st.InitContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
				})
			},
			want: func(w map[string]expect) {
				w[ready] = fails("1 of 2 proxies are not ready:\n  shop/web-0: waiting: CrashLoopBackOff")
			},
		},
		{
			name: "old proxy", mode: modeProxy, wantOK: true,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				p, _ := c.Client.CoreV1().Pods(fakekube.AppNamespace).Get(ctx, "books-0", metav1.GetOptions{})
				p.Spec.InitContainers[0].Image = "ghcr.io/sluice-mesh/proxy:v0.0.9"
				if _, err := c.Client.CoreV1().Pods(fakekube.AppNamespace).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w[version] = warns("1 of 2 proxies do not run the control plane's version dev:\n  shop/books-0 (v0.0.9)")
			},
		},
		{
			name: "unmeshed pod", mode: modeProxy, wantOK: true,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				for _, p := range []*corev1.Pod{
					{ObjectMeta: metav1.ObjectMeta{Name: "legacy-0", Namespace: fakekube.AppNamespace}},
					// Opted out, or finished: fine.
					{ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: fakekube.AppNamespace, Annotations: map[string]string{meshmeta.AnnotationInject: meshmeta.InjectDisabled}}},
					{ObjectMeta: metav1.ObjectMeta{Name: "job-0", Namespace: fakekube.AppNamespace}, Status: corev1.PodStatus{Phase: corev1.PodSucceeded}},
					// Not in a meshed namespace.
					{ObjectMeta: metav1.ObjectMeta{Name: "other-0", Namespace: "default"}},
				} {
					p.Spec.Containers = []corev1.Container{{Name: "app", Image: "app"}}
					if err := c.Client.Tracker().Add(p); err != nil {
						t.Fatal(err)
					}
				}
			},
			want: func(w map[string]expect) {
				w[meshed] = warns("1 pods of meshed namespaces have no proxy:\n  shop/legacy-0")
			},
		},
		{
			name: "proxy down for Prometheus", mode: modeProxy,
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) { c.ProxyUp["shop/web-0"] = "0" },
			want: func(w map[string]expect) {
				w[scraped] = fails(`1 of 2 proxies are down for Prometheus (up{job="sluice-proxy"} is 0):` + "\n  shop/web-0")
			},
		},
		{
			name: "proxy not scraped", mode: modeProxy, wantOK: true,
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) { delete(c.ProxyUp, "shop/books-0") },
			want: func(w map[string]expect) {
				w[scraped] = warns("1 ready proxies are not scraped by Prometheus yet", "shop/books-0")
			},
		},
		{
			name: "no meshed pods", mode: modeProxy, wantOK: true,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				for _, p := range []string{"web-0", "books-0"} {
					if err := c.Client.CoreV1().Pods(fakekube.AppNamespace).Delete(ctx, p, metav1.DeleteOptions{}); err != nil {
						t.Fatal(err)
					}
				}
				c.ProxyUp = map[string]string{}
			},
			want: func(w map[string]expect) {
				w[ready] = warns("no meshed pods (label sluice.io/control-plane-ns=sluice) in every namespace")
			},
		},
		{
			name: "prometheus disabled", mode: modeProxy, wantOK: true,
			break_: func(t *testing.T, c *fakekube.Cluster, _ *Options) {
				if err := c.Client.CoreV1().Services(fakekube.Namespace).Delete(ctx, PrometheusService, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["sluice-prometheus: Prometheus answers"] = warns("the chart's Prometheus is disabled")
				w["sluice-prometheus: control plane and agents are scraped"] = skips()
				w[scraped] = skips(`requires "Prometheus answers", which warned`)
			},
		},
		{
			name: "one namespace", mode: modeProxy, wantOK: true,
			break_: func(t *testing.T, c *fakekube.Cluster, o *Options) {
				o.DataPlaneNamespace = fakekube.AppNamespace
				c.AddMeshedPod(t, "default", "elsewhere-0")
				c.ProxyUp["default/elsewhere-0"] = "0" // not looked at
			},
			want: func(w map[string]expect) { w["sluice-data-plane: data plane namespace exists"] = pass },
		},
		{
			name: "namespace missing", mode: modeProxy,
			break_: func(_ *testing.T, _ *fakekube.Cluster, o *Options) { o.DataPlaneNamespace = "nope" },
			want: func(w map[string]expect) {
				w["sluice-data-plane: data plane namespace exists"] = fails("no namespace nope")
				for _, k := range []string{ready, version, meshed, scraped} {
					w[k] = skips(`requires "data plane namespace exists", which failed`)
				}
			},
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

func TestPreInstall(t *testing.T) {
	for _, tc := range []tc{
		{name: "empty cluster", mode: modePre, empty: true, wantOK: true},
		{
			name: "installed", mode: modePre, wantOK: true,
			want: func(w map[string]expect) {
				w["pre-kubernetes-setup: control plane namespace does not exist yet"] = warns("namespace sluice already exists: is Sluice already installed? Use `meshctl upgrade`")
			},
		},
		{
			name: "no rights", mode: modePre, empty: true,
			break_: func(_ *testing.T, c *fakekube.Cluster, _ *Options) {
				c.Denied["clusterroles"], c.Denied["daemonsets"] = true, true
			},
			want: func(w map[string]expect) {
				w["pre-kubernetes-setup: can create ClusterRoles"] = fails("you may not create clusterroles.rbac.authorization.k8s.io: no RBAC policy matched")
				w["pre-kubernetes-setup: can create DaemonSets in namespace sluice"] = fails("you may not create daemonsets.apps in namespace sluice")
			},
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

// TestRetries checks that --wait makes a check that may pass soon retry:
// a deployment that becomes ready while the check waits.
func TestRetries(t *testing.T) {
	c := fakekube.Healthy(t)
	deps := c.Client.AppsV1().Deployments(fakekube.Namespace)
	d, _ := deps.Get(ctx, "sluice-destination", metav1.GetOptions{})
	d.Status.ReadyReplicas = 0
	if _, err := deps.UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	o := options(c)
	o.Wait = 10 * time.Second
	cats := []healthcheck.Category{KubernetesAPI(o), {ID: CategoryControlPlane, Checkers: controlPlaneCheckers(o)[:2]}}
	attempts := 0
	ok := healthcheck.Runner{RetryInterval: time.Millisecond}.Run(ctx, cats, &healthcheck.State{}, func(r healthcheck.Result) {
		if !r.Retrying {
			return
		}
		if attempts++; attempts == 3 {
			d.Status.ReadyReplicas = 1
			if _, err := deps.UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
			}
		}
	})
	if !ok || attempts != 3 {
		t.Errorf("run passed = %v after %d retries; want true after 3", ok, attempts)
	}
}

func TestPodProblem(t *testing.T) {
	now := metav1.Now()
	for _, tc := range []struct {
		pod         corev1.Pod
		ready, want string
	}{
		{pod: corev1.Pod{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}}},
		{pod: corev1.Pod{}, want: "no phase yet"},
		{pod: corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodFailed, Reason: "Evicted"}}, want: "phase Failed: Evicted"},
		{pod: corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{Name: "a",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: "Back-off pulling image \"x\""}}}}}},
			want: `container a is waiting: ImagePullBackOff (Back-off pulling image "x")`},
		{pod: corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{Name: "a",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}}}}, want: "phase Pending"},
		{pod: corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: "a"}, {Name: "b", Ready: true}}}},
			ready: "not ready: container a"},
	} {
		if got := PodProblem(&tc.pod, false); got != tc.want {
			t.Errorf("PodProblem(%+v) = %q, want %q", tc.pod.Status, got, tc.want)
		}
		want := tc.want
		if tc.ready != "" {
			want = tc.ready
		}
		if got := PodProblem(&tc.pod, true); got != want {
			t.Errorf("PodProblem(%+v, ready) = %q, want %q", tc.pod.Status, got, want)
		}
	}
}

func TestDeploymentReady(t *testing.T) {
	two := int32(2)
	d := func(gen, observed int64, st ...int32) error {
		dep := &appsv1.Deployment{}
		dep.Generation = gen
		dep.Spec.Replicas = &two
		dep.Status.ObservedGeneration = observed
		dep.Status.Replicas, dep.Status.UpdatedReplicas, dep.Status.ReadyReplicas, dep.Status.AvailableReplicas = st[0], st[1], st[2], st[3]
		return deploymentReady(dep)
	}
	if err := d(2, 2, 2, 2, 2, 2); err != nil {
		t.Errorf("ready deployment: %v", err)
	}
	for i, err := range []error{d(3, 2, 2, 2, 2, 2), d(2, 2, 3, 2, 2, 2), d(2, 2, 2, 1, 2, 2), d(2, 2, 2, 2, 1, 2), d(2, 2, 2, 2, 2, 1)} {
		if err == nil {
			t.Errorf("case %d: not ready deployment passed", i)
		}
	}
}

// TestServiceProxyRealClient checks, with a real client against a fake API
// server, the URLs of the service proxy and that a backend's error answer
// reaches the message.
func TestServiceProxyRealClient(t *testing.T) {
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.RequestURI())
		if strings.Contains(r.URL.Path, "sluice-metrics-api") {
			http.Error(w, `{"error":"query Prometheus: connection refused"}`, http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "Prometheus Server is Ready.\n")
	}))
	defer srv.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	s := &healthcheck.State{Cluster: &healthcheck.Cluster{Client: client, Namespace: "mesh"}}
	if _, err := prometheusGet(ctx, s.Cluster, "/-/ready", nil); err != nil {
		t.Error(err)
	}
	err = metricsAPICheckers(Options{})[0].Check(ctx, s)
	if err == nil || !strings.Contains(err.Error(), "GET /api/v1/stat of service mesh/sluice-metrics-api:8085: ") ||
		!strings.Contains(err.Error(), `query Prometheus: connection refused`) {
		t.Errorf("metrics API error: %v", err)
	}
	want := []string{
		"/api/v1/namespaces/mesh/services/http:prometheus:9090/proxy/-/ready",
		"/api/v1/namespaces/mesh/services/http:sluice-metrics-api:8085/proxy/api/v1/stat?resource=namespace",
	}
	if !slices.Equal(paths, want) {
		t.Errorf("paths %q, want %q", paths, want)
	}
}
