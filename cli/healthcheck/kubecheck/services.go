package kubecheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// The chart's Prometheus: its Service and port, and its scrape jobs of the
// control plane (and agents) and of the proxies.
const (
	PrometheusService    = "prometheus"
	PrometheusPort       = 9090
	JobController        = "sluice-controller"
	JobProxy             = "sluice-proxy"
	prometheusDeployment = "sluice-prometheus"
)

// TapAPIService is the APIService of the tap API.
const TapAPIService = tapapi.Version + "." + tapapi.Group

// APIServices is the resource of APIService objects.
var APIServices = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

func tapCheckers(o Options) []healthcheck.Checker {
	return []healthcheck.Checker{{
		Description: "tap API service is available",
		Hint: fmt.Sprintf("the API server serves %s from the tap service: `kubectl get apiservice %s -o yaml` says "+
			"why it is not available, and `kubectl -n %s logs deploy/sluice-tap` what the tap service says",
			tapapi.GroupVersion, TapAPIService, o.Namespace),
		Requires:      []healthcheck.CheckID{CheckNamespace},
		RetryDeadline: o.Wait,
		Check: func(ctx context.Context, s *healthcheck.State) error {
			as, err := s.Cluster.Dynamic.Resource(APIServices).Get(ctx, TapAPIService, metav1.GetOptions{})
			if err != nil {
				return notFound(err, "apiservice", "", TapAPIService)
			}
			conds, _, _ := unstructured.NestedSlice(as.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] != "Available" {
					continue
				}
				if m["status"] == "True" {
					return nil
				}
				return fmt.Errorf("apiservice %s is not available: %v: %v", TapAPIService, m["reason"], m["message"])
			}
			return fmt.Errorf("apiservice %s has no Available condition yet", TapAPIService)
		},
	}}
}

func prometheusCheckers(o Options) []healthcheck.Checker {
	ns := o.Namespace
	return []healthcheck.Checker{
		{
			ID:          CheckPrometheus,
			Description: "Prometheus answers",
			Hint: fmt.Sprintf("meshctl stat, top, edges and the dashboard read the proxies' metrics from Prometheus: "+
				"the chart's runs as deployment %s/%s (prometheus.enabled); `kubectl -n %s logs deploy/%s` says why it "+
				"does not answer", ns, prometheusDeployment, ns, prometheusDeployment),
			Requires:      []healthcheck.CheckID{CheckNamespace},
			RetryDeadline: o.Wait,
			Check: withTimeout(func(ctx context.Context, s *healthcheck.State) error {
				cl := s.Cluster
				_, err := cl.Client.CoreV1().Services(cl.Namespace).Get(ctx, PrometheusService, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					return healthcheck.Warn(fmt.Errorf("no service %s/%s: the chart's Prometheus is disabled (prometheus.enabled "+
						"is false); the metrics API queries the Prometheus of metricsAPI.prometheusURL, which must scrape "+
						"the proxies as the chart's does", cl.Namespace, PrometheusService))
				}
				if err != nil {
					return err
				}
				_, err = prometheusGet(ctx, cl, "/-/ready", nil)
				return err
			}),
		},
		{
			Description: "control plane and agents are scraped",
			Hint: fmt.Sprintf("Prometheus scrapes the port named admin of every pod of namespace %s with the label %s "+
				"(job %s): a target that is down has a pod that is not ready or an admin port that does not answer; "+
				"`kubectl -n %s get pods -o wide` and Prometheus' targets page (/targets) say more",
				ns, ComponentLabel, JobController, ns),
			Requires:      []healthcheck.CheckID{CheckPrometheus},
			RetryDeadline: o.Wait,
			Check:         withTimeout(checkControllerTargets),
		},
	}
}

// prometheusGet GETs path of the chart's Prometheus through the API
// server's service proxy.
func prometheusGet(ctx context.Context, cl *healthcheck.Cluster, path string, params map[string]string) ([]byte, error) {
	b, err := cl.Client.CoreV1().Services(cl.Namespace).ProxyGet("http", PrometheusService, strconv.Itoa(PrometheusPort), path, params).DoRaw(ctx)
	if err != nil {
		return nil, ProxyError(fmt.Sprintf("GET %s of service %s/%s:%d", path, cl.Namespace, PrometheusService, PrometheusPort), err)
	}
	return b, nil
}

// promTargets is the answer of Prometheus' /api/v1/targets.
type promTargets struct {
	Data struct {
		ActiveTargets []struct {
			Labels    map[string]string `json:"labels"`
			ScrapeURL string            `json:"scrapeUrl"`
			Health    string            `json:"health"`
			LastError string            `json:"lastError"`
		} `json:"activeTargets"`
	} `json:"data"`
}

// checkControllerTargets fails unless Prometheus has control-plane targets
// and all of them are up.
func checkControllerTargets(ctx context.Context, s *healthcheck.State) error {
	b, err := prometheusGet(ctx, s.Cluster, "/api/v1/targets", map[string]string{"state": "active"})
	if err != nil {
		return err
	}
	var t promTargets
	if err := json.Unmarshal(b, &t); err != nil {
		return fmt.Errorf("decode Prometheus' targets: %w", err)
	}
	n := 0
	var down []string
	for _, tg := range t.Data.ActiveTargets {
		if tg.Labels["job"] != JobController {
			continue
		}
		n++
		if tg.Health != "up" {
			msg := fmt.Sprintf("%s %s (%s) is %s", tg.Labels["component"], tg.Labels["pod"], tg.ScrapeURL, tg.Health)
			if tg.LastError != "" {
				msg += ": " + firstLine(tg.LastError)
			}
			down = append(down, msg)
		}
	}
	if n == 0 {
		return fmt.Errorf("no target of job %s in Prometheus", JobController)
	}
	if len(down) > 0 {
		sort.Strings(down)
		return list(fmt.Sprintf("%d of %d targets of job %s are not up", len(down), n, JobController), down)
	}
	return nil
}

// promVector is the answer of an instant query of Prometheus' /api/v1/query.
type promVector struct {
	Data struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

// prometheusQuery runs an instant query and returns its samples' labels
// and values.
func prometheusQuery(ctx context.Context, cl *healthcheck.Cluster, query string) ([]sample, error) {
	b, err := prometheusGet(ctx, cl, "/api/v1/query", map[string]string{"query": query})
	if err != nil {
		return nil, err
	}
	var v promVector
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("decode the answer to %s: %w", query, err)
	}
	out := make([]sample, 0, len(v.Data.Result))
	for _, r := range v.Data.Result {
		val, _ := r.Value[1].(string)
		out = append(out, sample{labels: r.Metric, value: val})
	}
	return out, nil
}

type sample struct {
	labels map[string]string
	value  string
}

func metricsAPICheckers(o Options) []healthcheck.Checker {
	return []healthcheck.Checker{{
		Description: "metrics API answers",
		Hint: fmt.Sprintf("meshctl stat, top, edges and the dashboard ask the metrics API, which asks Prometheus: "+
			"`kubectl -n %s logs deploy/sluice-metrics-api` says why it does not answer", o.Namespace),
		Requires:      []healthcheck.CheckID{CheckNamespace},
		RetryDeadline: o.Wait,
		Check: withTimeout(func(ctx context.Context, s *healthcheck.State) error {
			cl := s.Cluster
			params := map[string]string{}
			for k, v := range (metricsapi.StatRequest{Resource: metricsapi.Namespace}).Values() {
				params[k] = v[0]
			}
			b, err := cl.Client.CoreV1().Services(cl.Namespace).ProxyGet("http", meshmeta.MetricsAPIService,
				strconv.Itoa(meshmeta.MetricsAPIPort), metricsapi.StatPath, params).DoRaw(ctx)
			if err != nil {
				return ProxyError(fmt.Sprintf("GET %s of service %s/%s:%d", metricsapi.StatPath, cl.Namespace,
					meshmeta.MetricsAPIService, meshmeta.MetricsAPIPort), err)
			}
			var resp metricsapi.StatResponse
			if err := json.Unmarshal(b, &resp); err != nil {
				return fmt.Errorf("decode the metrics API's answer: %w", err)
			}
			if resp.Window == "" {
				return errors.New("the metrics API's answer has no window: is it the metrics API?")
			}
			return nil
		}),
	}}
}
