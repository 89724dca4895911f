// Package injector is the proxy injector: a mutating admission webhook
// that adds the Sluice proxy to pods on creation, with the mutation of
// controlplane/inject that meshctl inject also uses.
//
// The API server POSTs an AdmissionReview (admission.k8s.io/v1) for every
// Pod CREATE to /inject. A pod whose own annotation sluice.io/inject is
// enabled, or whose namespace's is (unless the pod's is disabled), gets the
// proxy: the answer allows it with a JSON patch. Every other pod is allowed
// unchanged, with the reason in the response's audit annotation. The only
// pods refused are those that asked for a proxy with an invalid
// config.sluice.io/* annotation: they would otherwise run unmeshed without
// anyone noticing; the refusal names the annotation. A malformed review gets
// HTTP 400 with a message.
//
// # failurePolicy
//
// The webhook is meant to be registered with failurePolicy Ignore, as
// Linkerd's is (the chart's proxyInjector.failurePolicy). Its configuration
// must match every pod (a namespaceSelector can match labels, not the
// sluice.io/inject annotation), so with Fail an injector that is down or
// unreachable would stop pod creation in the whole cluster, including the
// pods that would bring the injector back and those of kube-system. With
// Ignore such pods start without a proxy instead; they are found by their
// missing sluice.io/control-plane-ns label (meshctl check), and restarting
// them once the injector is back meshes them. A cluster that prefers
// refusing to running unmeshed can set Fail and exclude the control plane's
// and the system namespaces with the webhook's namespaceSelector.
package injector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// Path is where the webhook is served.
const Path = "/inject"

// maxBody bounds an AdmissionReview; objects in etcd are at most 1.5 MiB.
const maxBody = 8 << 20

// Outcomes of an admission, the outcome label of the requests metric.
const (
	OutcomeInjected = "injected"
	OutcomeSkipped  = "skipped"
	OutcomeDenied   = "denied"
	OutcomeError    = "error"
)

// Config of the webhook.
type Config struct {
	// Injector holds the installation's Values and the created-by
	// annotation ("sluice/proxy-injector <version>").
	Injector inject.Injector
	// Namespaces reads a namespace's annotations. Required.
	Namespaces NamespaceGetter
	// Owners finds the workload a pod belongs to, for the owner label
	// (sluice.io/proxy-deployment: web). Nil: NewOwnerResolver(nil), which
	// needs no API.
	Owners OwnerResolver
	// Logger; nil discards.
	Logger *slog.Logger
	// Registerer takes the webhook's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Handler serves the webhook on Path. Build it with NewHandler.
type Handler struct {
	cfg      Config
	log      *slog.Logger
	requests *prometheus.CounterVec
	mux      *http.ServeMux
}

// NewHandler returns the webhook handler for cfg.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Namespaces == nil {
		return nil, errors.New("injector: Config.Namespaces is required")
	}
	if err := cfg.Injector.Values.Validate(); err != nil {
		return nil, fmt.Errorf("injector: %w", err)
	}
	if cfg.Owners == nil {
		cfg.Owners = NewOwnerResolver(nil)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{
		cfg: cfg,
		log: log.With("component", "injector"),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_injector_admissions_total",
			Help: "Pod admissions the proxy injector answered, by outcome (injected, skipped, denied, error) and reason.",
		}, []string{"outcome", "reason"}),
		mux: http.NewServeMux(),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(h.requests); err != nil {
			return nil, fmt.Errorf("injector: register metrics: %w", err)
		}
	}
	h.mux.HandleFunc(Path, h.serveInject)
	return h, nil
}

// ServeHTTP serves Path; other paths get 404.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

func (h *Handler) serveInject(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST an admission.k8s.io/v1 AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		h.badRequest(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		h.badRequest(w, http.StatusBadRequest, fmt.Sprintf("read AdmissionReview: %v", err))
		return
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		h.badRequest(w, http.StatusBadRequest, fmt.Sprintf("malformed AdmissionReview: %v", err))
		return
	}
	if gvk := review.GroupVersionKind(); gvk != admissionv1.SchemeGroupVersion.WithKind("AdmissionReview") {
		h.badRequest(w, http.StatusBadRequest, fmt.Sprintf("want an admission.k8s.io/v1 AdmissionReview, got apiVersion %q kind %q", review.APIVersion, review.Kind))
		return
	}
	if review.Request == nil || review.Request.UID == "" {
		h.badRequest(w, http.StatusBadRequest, "AdmissionReview has no request or no request uid")
		return
	}
	resp, err := h.admit(r.Context(), review.Request)
	if err != nil {
		h.badRequest(w, http.StatusBadRequest, err.Error())
		return
	}
	resp.UID = review.Request.UID
	out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp})
	if err != nil {
		h.log.Error("encode AdmissionReview", "error", err.Error())
		http.Error(w, "encode AdmissionReview: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

func (h *Handler) badRequest(w http.ResponseWriter, code int, msg string) {
	h.requests.WithLabelValues(OutcomeError, "bad-request").Inc()
	h.log.Warn("bad admission request", "error", msg)
	http.Error(w, msg, code)
}

// admit answers one request. An error means the request is malformed.
func (h *Handler) admit(ctx context.Context, req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, error) {
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		h.requests.WithLabelValues(OutcomeSkipped, "not-pod-create").Inc()
		return allowed(fmt.Sprintf("skipped: only pod creations are injected, not %s of %s", req.Operation, req.Kind.Kind)), nil
	}
	if len(req.Object.Raw) == 0 {
		return nil, errors.New("pod CREATE request without an object")
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return nil, fmt.Errorf("decode the request's pod: %w", err)
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	log := h.log.With("namespace", ns, "pod", podName(&pod), "uid", string(req.UID))

	// The pod's own annotation decides without its namespace's.
	var nsAnnotations map[string]string
	if _, ok := pod.Annotations[meshmeta.AnnotationInject]; !ok {
		var err error
		if nsAnnotations, err = h.cfg.Namespaces.NamespaceAnnotations(ctx, ns); err != nil {
			h.requests.WithLabelValues(OutcomeError, "namespace-lookup").Inc()
			log.Error("pod not injected: cannot read its namespace", "error", err.Error())
			resp := allowed("skipped: cannot read namespace " + ns + ": " + err.Error())
			resp.Warnings = []string{fmt.Sprintf("sluice: the pod was created without a proxy: cannot read namespace %s: %v", ns, err)}
			return resp, nil
		}
	}
	d := inject.Decide(inject.OptIn, pod.ObjectMeta, &pod.Spec, nsAnnotations)
	if !d.Inject {
		h.requests.WithLabelValues(OutcomeSkipped, d.Code).Inc()
		log.Debug("pod not injected", "reason", d.Reason)
		resp := allowed("skipped: " + d.Reason)
		if d.Code == inject.CodeHostNetwork {
			resp.Warnings = []string{"sluice: the pod was created without a proxy: " + inject.ErrHostNetwork.Error()}
		}
		return resp, nil
	}
	owner := h.cfg.Owners.Owner(ctx, &pod, ns)
	before := &corev1.PodTemplateSpec{ObjectMeta: pod.ObjectMeta, Spec: pod.Spec}
	after, err := h.cfg.Injector.Inject(before, owner)
	if err != nil {
		var ae *inject.AnnotationError
		reason := "invalid-config"
		if !errors.As(err, &ae) && !errors.Is(err, inject.ErrHostNetwork) {
			reason = "inject"
		}
		h.requests.WithLabelValues(OutcomeDenied, reason).Inc()
		log.Warn("pod refused", "error", err.Error())
		return &admissionv1.AdmissionResponse{
			Allowed: false,
			Result: &metav1.Status{
				Status:  metav1.StatusFailure,
				Code:    http.StatusUnprocessableEntity,
				Reason:  metav1.StatusReasonInvalid,
				Message: "sluice proxy injection: " + err.Error(),
			},
		}, nil
	}
	ops, err := inject.Patch(before, after)
	if err != nil {
		return nil, err
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return nil, fmt.Errorf("encode patch: %w", err)
	}
	h.requests.WithLabelValues(OutcomeInjected, d.Code).Inc()
	log.Info("pod injected", "reason", d.Reason, "owner", owner.Kind+"/"+owner.Name, "mode", after.Annotations[meshmeta.AnnotationMode])
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{
		Allowed:          true,
		PatchType:        &pt,
		Patch:            patch,
		AuditAnnotations: map[string]string{"result": "injected"},
	}, nil
}

// allowed answers without a change; msg is kept in the audit log.
func allowed(msg string) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{
		Allowed:          true,
		Result:           &metav1.Status{Status: metav1.StatusSuccess, Message: msg},
		AuditAnnotations: map[string]string{"result": msg},
	}
}

func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName
}
