package charts

import (
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestLint runs Helm's linter (what `helm lint` runs) on the chart with its
// defaults and with Prometheus off and iptables mode: no warning, no error.
func TestLint(t *testing.T) {
	for _, vals := range []map[string]any{
		nil,
		{"prometheus": map[string]any{"enabled": false}, "interceptionMode": "iptables"},
	} {
		res := lint.RunAll(ChartName, vals, "sluice")
		for _, m := range res.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint (values %v): %s", vals, m)
			}
		}
	}
}

// TestPrometheusConfig checks that the chart's Prometheus scrapes what the
// metrics API needs: every proxy of this control plane, with namespace,
// pod and owner labels. (That Prometheus accepts the configuration and
// scrapes with it is the end-to-end tests' part: test/e2e's TestDemo
// queries the chart's Prometheus.)
func TestPrometheusConfig(t *testing.T) {
	objs, err := Render(Options{Namespace: "mesh"})
	if err != nil {
		t.Fatal(err)
	}
	cm := find(t, objs, "ConfigMap", "sluice-prometheus-config")
	cfg, _, _ := unstructured.NestedString(cm.Object, "data", "prometheus.yml")
	for _, want := range []string{
		"scrape_interval: 10s",
		"regex: sluice-proxy;sluice-admin;mesh",
		"target_label: namespace", "target_label: pod", "target_label: deployment",
		"target_label: statefulset", "target_label: daemonset", "target_label: k8s_job",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("prometheus.yml lacks %q:\n%s", want, cfg)
		}
	}
	// Without Prometheus, the metrics API needs a URL of another one.
	objs, err = Render(Options{Values: map[string]any{"prometheus": map[string]any{"enabled": false}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if strings.Contains(o.GetName(), "prometheus") {
			t.Errorf("prometheus.enabled=false still renders %s %s", o.GetKind(), o.GetName())
		}
	}
}

// TestHighAvailability: more than one replica spreads a component over
// nodes and gives it a PodDisruptionBudget; one replica gets neither.
func TestHighAvailability(t *testing.T) {
	ha := map[string]any{}
	for _, c := range []string{"destination", "identity", "proxyInjector", "tap", "metricsAPI"} {
		ha[c] = map[string]any{"replicas": 3}
	}
	objs, err := Render(Options{Values: ha})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"destination", "identity", "proxy-injector", "tap", "metrics-api"} {
		find(t, objs, "PodDisruptionBudget", "sluice-"+name)
		d := find(t, objs, "Deployment", "sluice-"+name)
		if _, ok, _ := unstructured.NestedMap(d.Object, "spec", "template", "spec", "affinity", "podAntiAffinity"); !ok {
			t.Errorf("deployment sluice-%s with 3 replicas has no pod anti-affinity", name)
		}
	}
	objs, err = Render(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() == "PodDisruptionBudget" {
			t.Errorf("one replica renders PodDisruptionBudget %s", o.GetName())
		}
		if _, ok, _ := unstructured.NestedMap(o.Object, "spec", "template", "spec", "affinity"); ok && o.GetKind() == "Deployment" {
			t.Errorf("one replica renders an affinity in %s", o.GetName())
		}
	}
}
