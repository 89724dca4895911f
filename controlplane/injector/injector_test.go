package injector

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/controlplane/inject/manifest"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

func namespace(name string, annotations map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
}

var enabled = map[string]string{meshmeta.AnnotationInject: meshmeta.InjectEnabled}

// webRS is the ReplicaSet of the fixture's pod, owned by Deployment web.
var webRS = &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{
	Name: "web-7c5ddbdf54", Namespace: "shop",
	OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "web", Controller: new(true)}},
}}

func testValues(t *testing.T) inject.Values {
	t.Helper()
	v := inject.DefaultValues()
	v.Proxy.Version = "v1.0.0"
	v.Init.Version = "v1.0.0"
	pem, err := os.ReadFile("../inject/testdata/anchors.pem")
	if err != nil {
		t.Fatal(err)
	}
	v.Identity.TrustAnchorsPEM = string(pem)
	return v
}

type fixture struct {
	srv *httptest.Server
	h   *Handler
	reg *prometheus.Registry
	in  inject.Injector
}

// newFixture serves the webhook with namespaces from a lister (the
// informer's cache) in front of a fake clientset that holds objs.
func newFixture(t *testing.T, cached []*corev1.Namespace, objs ...runtime.Object) *fixture {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, ns := range cached {
		if err := idx.Add(ns); err != nil {
			t.Fatal(err)
		}
	}
	client := fake.NewClientset(objs...)
	reg := prometheus.NewRegistry()
	in := inject.Injector{Values: testValues(t), CreatedBy: "sluice/proxy-injector test"}
	h, err := NewHandler(Config{
		Injector:   in,
		Namespaces: NewNamespaceGetter(corelisters.NewNamespaceLister(idx), client),
		Owners:     NewOwnerResolver(client),
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, h: h, reg: reg, in: in}
}

func (f *fixture) post(t *testing.T, body []byte) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(f.srv.URL+Path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// review posts body and decodes the AdmissionReview answer.
func (f *fixture) review(t *testing.T, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	resp, b := f.post(t, body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &rv); err != nil {
		t.Fatalf("answer is not an AdmissionReview: %v: %s", err, b)
	}
	if rv.APIVersion != "admission.k8s.io/v1" || rv.Kind != "AdmissionReview" || rv.Response == nil {
		t.Fatalf("answer %s", b)
	}
	if rv.Response.UID != "0df28fbd-5f5f-11e8-bc74-36e6bb280816" {
		t.Errorf("response uid %q is not the request's", rv.Response.UID)
	}
	return rv.Response
}

// count reads sluice_injector_admissions_total{outcome, reason} from the
// registry the handler registered with.
func (f *fixture) count(outcome, reason string) float64 {
	mfs, err := f.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sluice_injector_admissions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["outcome"] == outcome && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func fixtureReview(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/review-pod.json")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reviewWith returns the fixture with its pod changed by mutate.
func reviewWith(t *testing.T, mutate func(*admissionv1.AdmissionRequest, *corev1.Pod)) []byte {
	t.Helper()
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(fixtureReview(t), &rv); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(rv.Request.Object.Raw, &pod); err != nil {
		t.Fatal(err)
	}
	mutate(rv.Request, &pod)
	raw, err := json.Marshal(&pod)
	if err != nil {
		t.Fatal(err)
	}
	rv.Request.Object.Raw = raw
	b, err := json.Marshal(&rv)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// patched applies the response's patch to the request's pod as the API
// server does (evanphx/json-patch).
func patched(t *testing.T, review []byte, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", resp.PatchType)
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(review, &rv); err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	out, err := p.Apply(rv.Request.Object.Raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", resp.Patch, err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(out, &pod); err != nil {
		t.Fatal(err)
	}
	return &pod
}

func TestInjectEnabledNamespace(t *testing.T) {
	f := newFixture(t, []*corev1.Namespace{namespace("shop", enabled)}, webRS)
	body := fixtureReview(t)
	resp := f.review(t, body)
	if !resp.Allowed {
		t.Fatalf("pod refused: %+v", resp.Result)
	}
	got := patched(t, body, resp)

	var rv admissionv1.AdmissionReview
	json.Unmarshal(body, &rv)
	var orig corev1.Pod
	json.Unmarshal(rv.Request.Object.Raw, &orig)
	want, err := f.in.Inject(&corev1.PodTemplateSpec{ObjectMeta: orig.ObjectMeta, Spec: orig.Spec},
		inject.Workload{Kind: "Deployment", Name: "web", Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := json.Marshal(corev1.PodTemplateSpec{ObjectMeta: got.ObjectMeta, Spec: got.Spec})
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Fatalf("patched pod differs from inject's template:\n%s\n%s", g, w)
	}
	if got.Spec.InitContainers[0].Name != meshmeta.ProxyContainerName || got.Labels[meshmeta.LabelProxyDeployment] != "web" {
		t.Errorf("pod %+v", got.ObjectMeta.Labels)
	}
	if n := f.count(OutcomeInjected, inject.CodeEnabled); n != 1 {
		t.Errorf("injected count %v", n)
	}
}

func TestSkipped(t *testing.T) {
	tests := []struct {
		name     string
		ns       map[string]string
		mutate   func(*admissionv1.AdmissionRequest, *corev1.Pod)
		code     string
		reason   string
		warnings bool
	}{
		{"namespace not enabled", nil, func(*admissionv1.AdmissionRequest, *corev1.Pod) {}, inject.CodeNotEnabled, "neither the pod nor its namespace", false},
		{"pod disabled", enabled, func(_ *admissionv1.AdmissionRequest, p *corev1.Pod) {
			p.Annotations[meshmeta.AnnotationInject] = meshmeta.InjectDisabled
		}, inject.CodeDisabled, "disabled", false},
		{"hostNetwork", enabled, func(_ *admissionv1.AdmissionRequest, p *corev1.Pod) { p.Spec.HostNetwork = true }, inject.CodeHostNetwork, "hostNetwork", true},
		{"already injected", enabled, func(_ *admissionv1.AdmissionRequest, p *corev1.Pod) {
			p.Spec.InitContainers = append([]corev1.Container{{Name: meshmeta.ProxyContainerName}}, p.Spec.InitContainers...)
		}, inject.CodeAlreadyInjected, "already injected", false},
		{"update", enabled, func(r *admissionv1.AdmissionRequest, _ *corev1.Pod) { r.Operation = admissionv1.Update }, "not-pod-create", "not UPDATE", false},
		{"not a pod", enabled, func(r *admissionv1.AdmissionRequest, _ *corev1.Pod) {
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
		}, "not-pod-create", "only pod creations", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, []*corev1.Namespace{namespace("shop", tt.ns)}, webRS)
			resp := f.review(t, reviewWith(t, tt.mutate))
			if !resp.Allowed || resp.Patch != nil || resp.PatchType != nil {
				t.Fatalf("response %+v, want allowed without a patch", resp)
			}
			if resp.Result == nil || !strings.Contains(resp.Result.Message, tt.reason) || !strings.Contains(resp.AuditAnnotations["result"], tt.reason) {
				t.Errorf("reason %+v %v does not say %q", resp.Result, resp.AuditAnnotations, tt.reason)
			}
			if (len(resp.Warnings) > 0) != tt.warnings {
				t.Errorf("warnings %q", resp.Warnings)
			}
			if n := f.count(OutcomeSkipped, tt.code); n != 1 {
				t.Errorf("skipped{%s} = %v", tt.code, n)
			}
		})
	}
}

func TestPodAnnotationWithoutNamespace(t *testing.T) {
	// The pod's own annotation needs no namespace lookup: neither the
	// cache nor the API has this namespace.
	f := newFixture(t, nil, webRS)
	resp := f.review(t, reviewWith(t, func(_ *admissionv1.AdmissionRequest, p *corev1.Pod) {
		p.Annotations[meshmeta.AnnotationInject] = meshmeta.InjectEnabled
	}))
	if !resp.Allowed || resp.Patch == nil {
		t.Fatalf("pod with sluice.io/inject: enabled not injected: %+v", resp)
	}
}

func TestNamespaceFromAPIWhenNotCached(t *testing.T) {
	f := newFixture(t, nil, webRS, namespace("shop", enabled))
	if resp := f.review(t, fixtureReview(t)); !resp.Allowed || resp.Patch == nil {
		t.Fatalf("namespace created after the cache synced: %+v", resp)
	}
}

func TestNamespaceLookupFails(t *testing.T) {
	f := newFixture(t, nil)
	resp := f.review(t, fixtureReview(t))
	if !resp.Allowed || resp.Patch != nil {
		t.Fatalf("response %+v, want allowed unchanged", resp)
	}
	if len(resp.Warnings) == 0 || !strings.Contains(resp.Warnings[0], "shop") {
		t.Errorf("warnings %q", resp.Warnings)
	}
	if n := f.count(OutcomeError, "namespace-lookup"); n != 1 {
		t.Errorf("error count %v", n)
	}
}

func TestInvalidConfigDenied(t *testing.T) {
	f := newFixture(t, []*corev1.Namespace{namespace("shop", enabled)}, webRS)
	resp := f.review(t, reviewWith(t, func(_ *admissionv1.AdmissionRequest, p *corev1.Pod) {
		p.Annotations[meshmeta.AnnotationSkipOutboundPorts] = "postgres"
	}))
	if resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusUnprocessableEntity ||
		!strings.Contains(resp.Result.Message, meshmeta.AnnotationSkipOutboundPorts) {
		t.Fatalf("response %+v, want a refusal naming the annotation", resp)
	}
	if n := f.count(OutcomeDenied, "invalid-config"); n != 1 {
		t.Errorf("denied count %v", n)
	}
}

func TestMalformed(t *testing.T) {
	f := newFixture(t, []*corev1.Namespace{namespace("shop", enabled)})
	good := string(fixtureReview(t))
	tests := []struct {
		name, method, contentType, body string
		status                          int
		msg                             string
	}{
		{"not JSON", "POST", "application/json", "{", 400, "malformed AdmissionReview"},
		{"v1beta1", "POST", "application/json", strings.Replace(good, "admission.k8s.io/v1", "admission.k8s.io/v1beta1", 1), 400, "want an admission.k8s.io/v1 AdmissionReview"},
		{"no request", "POST", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400, "no request"},
		{"no uid", "POST", "application/json", strings.Replace(good, `"uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816"`, `"uid": ""`, 1), 400, "no request uid"},
		{"pod not an object", "POST", "application/json", strings.Replace(good, `"spec": {`, `"spec": 3, "x": {`, 1), 400, "decode the request's pod"},
		{"no object", "POST", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE"}}`, 400, "without an object"},
		{"GET", "GET", "", "", 405, "POST"},
		{"form", "POST", "application/x-www-form-urlencoded", "a=b", 415, "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, f.srv.URL+Path, strings.NewReader(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(string(b), tt.msg) {
				t.Errorf("status %d %q, want %d %q", resp.StatusCode, b, tt.status, tt.msg)
			}
		})
	}
	if n := f.count(OutcomeError, "bad-request"); n != 7 {
		t.Errorf("bad-request count %v, want 7 (all but the GET)", n)
	}
	if resp, err := http.Get(f.srv.URL + "/other"); err != nil || resp.StatusCode != 404 {
		t.Errorf("/other: %v %v", resp.StatusCode, err)
	}
}

func TestOwners(t *testing.T) {
	rsNoOwner := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "solo", Namespace: "ns"}}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "nightly-29012345", Namespace: "ns",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "CronJob", Name: "nightly", Controller: new(true)}}}}
	pod := func(kind, apiVersion, name string, labels map[string]string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Labels: labels}}
		if kind != "" {
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: apiVersion, Kind: kind, Name: name, Controller: new(true)}}
		}
		return p
	}
	hash := map[string]string{"pod-template-hash": "7c5ddbdf54"}
	tests := []struct {
		name   string
		client bool
		pod    *corev1.Pod
		want   string
	}{
		{"bare pod", true, pod("", "", "", nil), "Pod/p"},
		{"deployment through its replicaset", true, pod("ReplicaSet", "apps/v1", "web-7c5ddbdf54", nil), "Deployment/web"},
		{"replicaset of its own", true, pod("ReplicaSet", "apps/v1", "solo", nil), "ReplicaSet/solo"},
		{"deployment by name without the API", false, pod("ReplicaSet", "apps/v1", "web-7c5ddbdf54", hash), "Deployment/web"},
		{"replicaset without the API or hash", false, pod("ReplicaSet", "apps/v1", "web-7c5ddbdf54", nil), "ReplicaSet/web-7c5ddbdf54"},
		{"cronjob through its job", true, pod("Job", "batch/v1", "nightly-29012345", nil), "CronJob/nightly"},
		{"job without the API", false, pod("Job", "batch/v1", "nightly-29012345", nil), "Job/nightly-29012345"},
		{"statefulset", true, pod("StatefulSet", "apps/v1", "db", nil), "StatefulSet/db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewOwnerResolver(nil)
			if tt.client {
				webRS := webRS.DeepCopy()
				webRS.Namespace = "ns"
				r = NewOwnerResolver(fake.NewClientset(webRS, rsNoOwner, job))
			}
			w := r.Owner(context.Background(), tt.pod, "ns")
			if got := w.Kind + "/" + w.Name; got != tt.want || w.Namespace != "ns" {
				t.Errorf("owner %+v, want %s", w, tt.want)
			}
		})
	}
}

// TestMatchesMeshctlInject checks what the end-to-end test checks through
// the API server: the webhook's patch, applied to a Deployment's pod,
// gives the pod template meshctl inject writes for that Deployment, but
// for what only the pod has (its name, owner, pod-template-hash) and the
// created-by annotation.
func TestMatchesMeshctlInject(t *testing.T) {
	dep, err := os.ReadFile("testdata/web-deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{meshmeta.ModeEBPF, meshmeta.ModeIPTables} {
		t.Run(mode, func(t *testing.T) {
			f := newFixture(t, []*corev1.Namespace{namespace("shop", enabled)}, webRS)
			f.h.cfg.Injector.Values.InterceptionMode = mode

			s, err := manifest.Read(dep)
			if err != nil {
				t.Fatal(err)
			}
			orig, err := s.Templates()
			if err != nil {
				t.Fatal(err)
			}
			cli := inject.Injector{Values: f.h.cfg.Injector.Values, CreatedBy: "meshctl test"}
			if _, err := manifest.Inject(s, cli, "default"); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := s.Write(&out); err != nil {
				t.Fatal(err)
			}
			s, err = manifest.Read(out.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			ts, err := s.Templates()
			if err != nil {
				t.Fatal(err)
			}
			meshctl := ts[0].Spec

			// The pod the ReplicaSet controller creates from the template.
			body := reviewWith(t, func(_ *admissionv1.AdmissionRequest, p *corev1.Pod) {
				tmpl := orig[0].Spec.DeepCopy()
				meta := p.ObjectMeta
				p.ObjectMeta = tmpl.ObjectMeta
				p.GenerateName, p.Namespace, p.OwnerReferences = meta.GenerateName, meta.Namespace, meta.OwnerReferences
				p.Labels["pod-template-hash"] = "7c5ddbdf54"
				p.Spec = tmpl.Spec
			})
			resp := f.review(t, body)
			pod := patched(t, body, resp)

			delete(pod.Labels, "pod-template-hash")
			for _, m := range []metav1.ObjectMeta{pod.ObjectMeta, meshctl.ObjectMeta} {
				if m.Annotations[meshmeta.AnnotationCreatedBy] == "" {
					t.Errorf("no %s", meshmeta.AnnotationCreatedBy)
				}
				delete(m.Annotations, meshmeta.AnnotationCreatedBy)
			}
			if !reflect.DeepEqual(pod.Labels, meshctl.Labels) || !reflect.DeepEqual(pod.Annotations, meshctl.Annotations) {
				t.Errorf("metadata differs:\nwebhook %v %v\nmeshctl %v %v", pod.Labels, pod.Annotations, meshctl.Labels, meshctl.Annotations)
			}
			if a, b := mustJSON(t, pod.Spec), mustJSON(t, meshctl.Spec); a != b {
				t.Errorf("spec differs:\nwebhook %s\nmeshctl %s", a, b)
			}
		})
	}
}

func TestNewHandlerChecksConfig(t *testing.T) {
	if _, err := NewHandler(Config{Injector: inject.Injector{Values: inject.DefaultValues()}}); err == nil {
		t.Error("no error without Namespaces")
	}
	v := inject.DefaultValues()
	v.InterceptionMode = "nft"
	_, err := NewHandler(Config{Injector: inject.Injector{Values: v}, Namespaces: NewNamespaceGetter(nil, fake.NewClientset())})
	if err == nil || !strings.Contains(err.Error(), "interceptionMode") {
		t.Errorf("invalid values: %v", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
