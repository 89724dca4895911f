// Package fakekube is a fake Kubernetes cluster with a healthy Sluice
// installation, for the tests of meshctl's cluster checks: client-go's fake
// clientset and dynamic client holding the objects of the real chart
// (rendered with certificates made at a fixed time), with their workloads
// ready and their pods running on two nodes, meshed pods injected by the
// real injector code, and an httptest server standing behind the API
// server's service and pod proxies (Prometheus, the metrics API, each
// node's agent). Tests break what they check by changing its fields and
// objects.
package fakekube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	restclient "k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/controlplane/inject"
	metricsapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/deploy/charts"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/nodefacts"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// Now is the fake cluster's time: its certificates were made a day
// before. Checks of certificates run with this clock.
var Now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// The fake cluster's names.
const (
	Namespace        = meshmeta.DefaultNamespace
	ContextNamespace = "default"
	// AppNamespace is a namespace annotated for injection, with two meshed
	// pods: web-0 and books-0.
	AppNamespace  = "shop"
	ServerVersion = "v1.34.0"
	// Kernel is every node's kernel.
	Kernel = "6.18.44-fc-v669"
	// AgentPort is the agent's port named admin.
	AgentPort = 9995
)

// Nodes are the fake cluster's nodes.
var Nodes = []string{"node-a", "node-b"}

// Target is one of Prometheus' active targets.
type Target struct {
	Labels    map[string]string `json:"labels"`
	ScrapeURL string            `json:"scrapeUrl"`
	Health    string            `json:"health"`
	LastError string            `json:"lastError"`
}

// Cluster is the fake cluster.
type Cluster struct {
	Client  *fake.Clientset
	Dynamic *dynamicfake.FakeDynamicClient

	mu sync.Mutex
	// Services are the backends of the API server's service proxy, by
	// "<service>:<port>" in Namespace; a missing one answers as a service
	// without endpoints does.
	Services map[string]http.Handler
	// Pods are the backends of the pod proxy, by "<pod>:<port>" (agent pods,
	// in Namespace).
	Pods map[string]http.Handler
	// Agents are what each node's agent answers at /status.
	Agents map[string]*api.Status
	// Facts are each node's kernel facts: what its agent answers at
	// /node-facts and a probe pod prints.
	Facts map[string]nodefacts.Facts
	// Targets are Prometheus' active targets; ProxyUp the value of
	// up{job="sluice-proxy"} by "<namespace>/<pod>".
	Targets []Target
	ProxyUp map[string]string
	// Webhook does to pods created in a dry run what the proxy injector's
	// webhook does; it injects them as the injector would.
	Webhook func(*corev1.Pod) (*corev1.Pod, error)
	// Denied are the resources the user may not create.
	Denied map[string]bool
	// Probe says how the probe pod on a node ends: Succeeded with its log,
	// Failed with its container's message, or Pending in ImagePullBackOff
	// with its message. Nil: it succeeds and prints the facts of its node.
	Probe func(node string) (corev1.PodPhase, string)
	// Probes are the probe pods created, and Deleted those deleted.
	Probes, Deleted []string

	server *httptest.Server
	values inject.Values
	seq    int
}

// Healthy returns a cluster with Sluice installed and working.
func Healthy(t testing.TB) *Cluster {
	t.Helper()
	c := newCluster(t)
	c.install(t)
	return c
}

// Empty returns a cluster without Sluice: its nodes and namespaces only.
func Empty(t testing.TB) *Cluster {
	t.Helper()
	return newCluster(t)
}

// Connect is the cluster's connection, for kubecheck.Options.Connect.
func (c *Cluster) Connect(context.Context) (*healthcheck.Cluster, error) {
	return &healthcheck.Cluster{Client: c.Client, Dynamic: c.Dynamic, Namespace: Namespace, ContextNamespace: ContextNamespace}, nil
}

func newCluster(t testing.TB) *Cluster {
	c := &Cluster{
		Client:   fake.NewClientset(),
		Services: map[string]http.Handler{},
		Pods:     map[string]http.Handler{},
		Agents:   map[string]*api.Status{},
		Facts:    map[string]nodefacts.Facts{},
		ProxyUp:  map[string]string{},
		Denied:   map[string]bool{},
	}
	c.Dynamic = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{apiServices: "APIServiceList"})
	c.Client.Discovery().(*fakediscovery.FakeDiscovery).FakedServerVersion = &version.Info{
		Major: "1", Minor: "34", GitVersion: ServerVersion,
	}
	c.server = httptest.NewServer(http.HandlerFunc(c.serveProxied))
	t.Cleanup(c.server.Close)
	c.Client.PrependProxyReactor("*", c.proxy)
	c.Client.PrependReactor("create", "pods", c.createPod)
	c.Client.PrependReactor("delete", "pods", c.deletePod)
	c.Client.PrependReactor("create", "selfsubjectaccessreviews", c.review)
	for _, ns := range []string{"default", "kube-system"} {
		c.add(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	}
	for _, n := range Nodes {
		c.add(t, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{corev1.LabelOSStable: "linux"}},
			Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
		})
		c.Facts[n] = nodefacts.Facts{Kernel: Kernel, BTF: true, Cgroup2Mount: "/sys/fs/cgroup/unified", BPFFSMounted: true}
	}
	return c
}

func (c *Cluster) add(t testing.TB, obj runtime.Object) {
	t.Helper()
	if err := c.Client.Tracker().Add(obj); err != nil {
		t.Fatalf("add %T: %v", obj, err)
	}
}

var apiServices = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// install adds the chart's objects, with ready workloads and running pods,
// the meshed pods of AppNamespace and the backends of the proxies.
func (c *Cluster) install(t testing.TB) {
	t.Helper()
	creds, err := pki.Generate(pki.GenerateOptions{Now: Now.Add(-24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	injectorCA, injectorCrt, injectorKey := ServingCert(t, meshmeta.InjectorService+"."+Namespace+".svc", Now.Add(-24*time.Hour), Now.AddDate(10, 0, 0))
	objs, err := charts.Render(charts.Options{Namespace: Namespace, Values: map[string]any{
		"identity": map[string]any{
			"trustAnchorsPEM": string(creds.TrustAnchorPEM),
			"issuer":          map[string]any{"crtPEM": string(creds.IssuerCertPEM), "keyPEM": string(creds.IssuerKeyPEM)},
		},
		"proxyInjector": map[string]any{"tls": map[string]any{
			"crtPEM": string(injectorCrt), "keyPEM": string(injectorKey), "caBundlePEM": string(injectorCA),
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range objs {
		if u.GetKind() == "APIService" {
			if err := unstructured.SetNestedSlice(u.Object, []any{map[string]any{"type": "Available", "status": "True", "reason": "Passed"}}, "status", "conditions"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Dynamic.Resource(apiServices).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		obj, err := scheme.Scheme.New(u.GroupVersionKind())
		if err != nil {
			t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, obj); err != nil {
			t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
		c.addReady(t, obj)
	}
	if c.values, err = inject.LoadValues(context.Background(), c.Client, Namespace); err != nil {
		t.Fatal(err)
	}
	c.Webhook = func(p *corev1.Pod) (*corev1.Pod, error) {
		tmpl, err := inject.Injector{Values: c.values, CreatedBy: "fakekube"}.Inject(&corev1.PodTemplateSpec{ObjectMeta: p.ObjectMeta, Spec: p.Spec}, inject.Workload{Namespace: p.Namespace})
		if err != nil {
			return nil, err
		}
		out := p.DeepCopy()
		out.ObjectMeta, out.Spec = tmpl.ObjectMeta, tmpl.Spec
		return out, nil
	}
	c.add(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: AppNamespace,
		Annotations: map[string]string{meshmeta.AnnotationInject: meshmeta.InjectEnabled}}})
	for _, app := range []string{"web", "books"} {
		c.AddMeshedPod(t, AppNamespace, app+"-0")
	}
	c.Services[fmt.Sprintf("prometheus:%d", 9090)] = http.HandlerFunc(c.prometheus)
	c.Services[fmt.Sprintf("%s:%d", meshmeta.MetricsAPIService, meshmeta.MetricsAPIPort)] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != metricsapi.StatPath {
			http.NotFound(w, r)
			return
		}
		writeJSON(w, metricsapi.StatResponse{Window: "1m0s"})
	})
}

// addReady adds a chart object; a Deployment or DaemonSet comes with its
// status ready and its pods running, and Prometheus scrapes them.
func (c *Cluster) addReady(t testing.TB, obj runtime.Object) {
	t.Helper()
	switch o := obj.(type) {
	case *appsv1.Deployment:
		n := int32(1)
		if o.Spec.Replicas != nil {
			n = *o.Spec.Replicas
		}
		o.Status = appsv1.DeploymentStatus{Replicas: n, UpdatedReplicas: n, ReadyReplicas: n, AvailableReplicas: n}
		c.add(t, o)
		c.addPod(t, o.Name+"-7d9c5-x2k4q", "", o.Spec.Template)
	case *appsv1.DaemonSet:
		n := int32(len(Nodes))
		o.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: n, CurrentNumberScheduled: n, NumberReady: n, UpdatedNumberScheduled: n, NumberAvailable: n}
		c.add(t, o)
		for _, node := range Nodes {
			name := o.Name + "-" + node
			c.addPod(t, name, node, o.Spec.Template)
			st := AgentStatus()
			c.Agents[node] = &st
			c.Pods[fmt.Sprintf("%s:%d", name, AgentPort)] = c.agent(node)
		}
	default:
		c.add(t, obj)
	}
}

// addPod adds a running, ready pod of a workload's template.
func (c *Cluster) addPod(t testing.TB, name, node string, tmpl corev1.PodTemplateSpec) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	p.Name, p.Namespace, p.Spec.NodeName = name, Namespace, node
	if node == "" {
		p.Spec.NodeName = Nodes[0]
	}
	p.Status = runningStatus(p.Spec)
	c.add(t, p)
	component := p.Labels["sluice.io/control-plane-component"]
	for _, ctr := range p.Spec.Containers {
		for _, port := range ctr.Ports {
			if port.Name == "admin" {
				c.Targets = append(c.Targets, Target{
					Labels:    map[string]string{"job": "sluice-controller", "component": component, "pod": name, "namespace": Namespace},
					ScrapeURL: fmt.Sprintf("http://10.0.0.%d:%d/metrics", len(c.Targets)+10, port.ContainerPort),
					Health:    "up",
				})
			}
		}
	}
}

// AddMeshedPod adds a running pod injected by the injector, its proxy
// ready and scraped.
func (c *Cluster) AddMeshedPod(t testing.TB, ns, name string) *corev1.Pod {
	t.Helper()
	app, _, _ := strings.Cut(name, "-")
	tmpl := &corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: app, Image: "example.com/" + app + ":1"}}},
	}
	out, err := inject.Injector{Values: c.values, CreatedBy: "fakekube"}.Inject(tmpl, inject.Workload{Namespace: ns, Kind: "Deployment", Name: app})
	if err != nil {
		t.Fatal(err)
	}
	p := &corev1.Pod{ObjectMeta: out.ObjectMeta, Spec: out.Spec}
	p.Name, p.Namespace, p.Spec.NodeName = name, ns, Nodes[len(c.ProxyUp)%len(Nodes)]
	p.Status = runningStatus(p.Spec)
	c.add(t, p)
	c.ProxyUp[ns+"/"+name] = "1"
	return p
}

// runningStatus is the status of a pod whose containers all run and are
// ready (init containers that restart always are sidecars that run too).
func runningStatus(spec corev1.PodSpec) corev1.PodStatus {
	st := corev1.PodStatus{Phase: corev1.PodRunning}
	running := func(name string) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: name, Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	}
	for _, ic := range spec.InitContainers {
		if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			st.InitContainerStatuses = append(st.InitContainerStatuses, running(ic.Name))
		}
	}
	for _, ctr := range spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, running(ctr.Name))
	}
	return st
}

// AgentStatus is what a healthy agent in eBPF mode answers.
func AgentStatus() api.Status {
	return api.Status{
		Version: "dev", Mode: api.ModeEBPF, PinRoot: "/sys/fs/bpf/sluice", CgroupV2: "/sys/fs/cgroup/unified",
		Kernel: Kernel, RedirectEnabled: true, Enrollments: 1,
		Features: []api.Feature{
			{Name: "BPF_PROG_TYPE_SK_LOOKUP", MinKernel: "5.9", Required: true, OK: true},
			{Name: "attach type cgroup/connect4", MinKernel: "4.17", Required: true, OK: true},
			{Name: "bpf_get_netns_cookie in sk_msg", MinKernel: "5.15", OK: true},
		},
		Programs: []api.Program{
			{Name: "sluice_connect4", Type: "CGroupSockAddr", AttachType: "CGroupInet4Connect", AttachedTo: "/sys/fs/cgroup/unified", Attached: true},
			{Name: "sluice_sk_msg", Type: "SkMsg", AttachType: "SkMsgVerdict", AttachedTo: "map sock_pairs", Attached: true},
		},
		Pins: []string{"links/sluice_connect4", "maps/pods", "progs/sluice_connect4", "progs/sluice_sk_msg"},
		Maps: []api.MapUsage{{Name: "pods", Entries: 1, MaxEntries: 1024}},
	}
}

// agent serves the agent of node: /status and /node-facts.
func (c *Cluster) agent(node string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		c.mu.Lock()
		st := c.Agents[node]
		c.mu.Unlock()
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /node-facts", func(w http.ResponseWriter, _ *http.Request) {
		c.mu.Lock()
		f := c.Facts[node]
		c.mu.Unlock()
		writeJSON(w, f)
	})
	return mux
}

var namespaceMatcher = regexp.MustCompile(`namespace="([^"]*)"`)

// prometheus answers /-/ready, /api/v1/targets and the up query.
func (c *Cluster) prometheus(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch r.URL.Path {
	case "/-/ready":
		io.WriteString(w, "Prometheus Server is Ready.\n")
	case "/api/v1/targets":
		writeJSON(w, map[string]any{"status": "success", "data": map[string]any{"activeTargets": c.Targets}})
	case "/api/v1/query":
		q := r.URL.Query().Get("query")
		if !strings.HasPrefix(q, `up{job="sluice-proxy"`) {
			http.Error(w, `{"status":"error","error":"unexpected query"}`, http.StatusBadRequest)
			return
		}
		var ns string
		if m := namespaceMatcher.FindStringSubmatch(q); m != nil {
			ns = m[1]
		}
		result := []any{}
		for pod, v := range c.ProxyUp {
			podNS, name, _ := strings.Cut(pod, "/")
			if ns != "" && podNS != ns {
				continue
			}
			result = append(result, map[string]any{
				"metric": map[string]string{"__name__": "up", "job": "sluice-proxy", "namespace": podNS, "pod": name},
				"value":  []any{float64(Now.Unix()), v},
			})
		}
		writeJSON(w, map[string]any{"status": "success", "data": map[string]any{"resultType": "vector", "result": result}})
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// proxy answers the clientset's ProxyGet of services and pods with a
// response from the backend, through the httptest server.
func (c *Cluster) proxy(action k8stesting.Action) (bool, restclient.ResponseWrapper, error) {
	a, ok := action.(k8stesting.ProxyGetAction)
	if !ok {
		return false, nil, nil
	}
	return true, &proxied{c: c, action: a}, nil
}

type proxied struct {
	c      *Cluster
	action k8stesting.ProxyGetAction
}

// DoRaw GETs the backend. A backend that is not there, or answers with an
// error, gives the errors client-go gives for the API server's answers.
func (p *proxied) DoRaw(ctx context.Context) ([]byte, error) {
	a := p.action
	resource := a.GetResource().Resource
	key := a.GetName() + ":" + a.GetPort()
	p.c.mu.Lock()
	h := p.c.Services[key]
	if resource == "pods" {
		h = p.c.Pods[key]
	}
	p.c.mu.Unlock()
	if h == nil {
		if resource == "pods" {
			return nil, apierrors.NewInternalError(fmt.Errorf("error trying to reach service: dial tcp 10.0.0.1:%s: connect: connection refused", a.GetPort()))
		}
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("no endpoints available for service %q", a.GetName()))
	}
	q := url.Values{}
	for k, v := range a.GetParams() {
		q.Set(k, v)
	}
	u := p.c.server.URL + "/" + resource + "/" + key + "/" + strings.TrimPrefix(a.GetPath(), "/")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.c.server.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, apierrors.NewGenericServerResponse(resp.StatusCode, "GET", schema.GroupResource{Resource: resource}, key, string(body), 0, true)
	}
	return body, nil
}

func (p *proxied) Stream(ctx context.Context) (io.ReadCloser, error) {
	b, err := p.DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// serveProxied routes /<resource>/<name:port>/<path> to the backend.
func (c *Cluster) serveProxied(w http.ResponseWriter, r *http.Request) {
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	if len(parts) < 2 {
		http.NotFound(w, r)
		return
	}
	c.mu.Lock()
	h := c.Services[parts[1]]
	if parts[0] == "pods" {
		h = c.Pods[parts[1]]
	}
	c.mu.Unlock()
	if h == nil {
		http.NotFound(w, r)
		return
	}
	http.StripPrefix("/"+parts[0]+"/"+parts[1], h).ServeHTTP(w, r)
}

// createPod runs the webhook on dry-run creates, and names and runs probe
// pods (created with a generated name).
func (c *Cluster) createPod(action k8stesting.Action) (bool, runtime.Object, error) {
	a := action.(k8stesting.CreateActionImpl)
	pod := a.GetObject().(*corev1.Pod)
	if len(a.CreateOptions.DryRun) > 0 {
		if c.Webhook == nil {
			return true, pod, nil
		}
		out, err := c.Webhook(pod.DeepCopy())
		if err != nil {
			return true, nil, err
		}
		out.Name = pod.GenerateName + "dryrun"
		return true, out, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if pod.Name == "" {
		c.seq++
		pod.Name = fmt.Sprintf("%s%05d", pod.GenerateName, c.seq)
	}
	if pod.Labels["sluice.io/node-facts"] != "" {
		c.Probes = append(c.Probes, pod.Name)
		phase, log := c.probe(pod.Spec.NodeName)
		pod.Status.Phase = phase
		switch phase {
		case corev1.PodFailed:
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "node-facts", State: corev1.ContainerState{
				Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Message: log}}}}
		case corev1.PodPending:
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "node-facts", State: corev1.ContainerState{
				Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: log}}}}
		}
	}
	return false, nil, nil // the tracker stores it
}

func (c *Cluster) probe(node string) (corev1.PodPhase, string) {
	if c.Probe != nil {
		return c.Probe(node)
	}
	b, _ := json.Marshal(c.Facts[node])
	return corev1.PodSucceeded, string(b) + "\n"
}

func (c *Cluster) deletePod(action k8stesting.Action) (bool, runtime.Object, error) {
	name := action.(k8stesting.DeleteAction).GetName()
	c.mu.Lock()
	defer c.mu.Unlock()
	if strings.HasPrefix(name, "sluice-node-facts-") {
		c.Deleted = append(c.Deleted, name)
	}
	return false, nil, nil
}

// ProbeLogs reads a probe pod's log, for ebpfcheck.ProbeOptions.Logs:
// client-go's fake clientset answers every pods/log with "fake logs".
func (c *Cluster) ProbeLogs(_ context.Context, pod *corev1.Pod) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, log := c.probe(pod.Spec.NodeName)
	return []byte(log), nil
}

// review answers SelfSubjectAccessReviews: allowed unless Denied.
func (c *Cluster) review(action k8stesting.Action) (bool, runtime.Object, error) {
	r := action.(k8stesting.CreateAction).GetObject().(*authv1.SelfSubjectAccessReview).DeepCopy()
	res := r.Spec.ResourceAttributes.Resource
	r.Status.Allowed = !c.Denied[res]
	if !r.Status.Allowed {
		r.Status.Reason = "no RBAC policy matched"
	}
	return true, r, nil
}

// SetIdentity replaces the trust anchors (configmap
// sluice-identity-trust-roots) and the issuer (secret
// sluice-identity-issuer).
func (c *Cluster) SetIdentity(t testing.TB, anchorsPEM, crtPEM, keyPEM []byte) {
	t.Helper()
	ctx := context.Background()
	cms := c.Client.CoreV1().ConfigMaps(Namespace)
	cm, err := cms.Get(ctx, "sluice-identity-trust-roots", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["ca-bundle.crt"] = string(anchorsPEM)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	secrets := c.Client.CoreV1().Secrets(Namespace)
	sec, err := secrets.Get(ctx, "sluice-identity-issuer", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data[corev1.TLSCertKey], sec.Data[corev1.TLSPrivateKeyKey] = crtPEM, keyPEM
	if _, err := secrets.Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ServingCert makes a CA and a server certificate for host signed by it,
// valid from notBefore to notAfter, as PEM: the CA, the certificate and
// its key.
func ServingCert(t testing.TB, host string, notBefore, notAfter time.Time) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host + "-ca"},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}
