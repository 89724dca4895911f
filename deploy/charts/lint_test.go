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
