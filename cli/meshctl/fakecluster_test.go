package meshctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// contextNamespace is the namespace of the fake kubeconfig's context.
const contextNamespace = "demo"

// fakeCluster says what a fake Kubernetes API server serves.
type fakeCluster struct {
	// noSluice leaves out the control plane's namespace.
	noSluice bool
	// dashboard serves the Service sluice-web.
	dashboard bool
	// metrics serves the metrics API behind the service proxy; nil
	// answers as the API server does when the Service has no endpoints.
	metrics http.Handler
	// tap serves the tap API's POSTs; nil: the tap API is not served.
	tap http.HandlerFunc
}

// controlPlanePath is the path of the control plane's namespace.
var controlPlanePath = "/api/v1/namespaces/" + meshmeta.DefaultNamespace

// start serves f and returns a kubeconfig for it whose context's
// namespace is contextNamespace.
func (f fakeCluster) start(t *testing.T) (kubeconfig, server string) {
	t.Helper()
	metricsPrefix := fmt.Sprintf("%s/services/http:%s:%d/proxy", controlPlanePath, meshmeta.MetricsAPIService, meshmeta.MetricsAPIPort)
	tapPrefix := "/apis/" + tapapi.GroupVersion
	mux := http.NewServeMux()
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		writeKube(w, http.StatusOK, map[string]string{"major": "1", "minor": "34", "gitVersion": "v1.34.0"})
	})
	mux.HandleFunc("GET "+controlPlanePath, func(w http.ResponseWriter, _ *http.Request) {
		f.object(w, !f.noSluice, "namespaces", meshmeta.DefaultNamespace, "Namespace")
	})
	mux.HandleFunc("GET "+controlPlanePath+"/services/"+meshmeta.WebService, func(w http.ResponseWriter, _ *http.Request) {
		f.object(w, f.dashboard, "services", meshmeta.WebService, "Service")
	})
	mux.HandleFunc(metricsPrefix+"/", func(w http.ResponseWriter, r *http.Request) {
		if f.metrics == nil {
			writeStatus(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
				fmt.Sprintf("no endpoints available for service %q", meshmeta.MetricsAPIService))
			return
		}
		http.StripPrefix(metricsPrefix, f.metrics).ServeHTTP(w, r)
	})
	mux.HandleFunc("GET "+tapPrefix, func(w http.ResponseWriter, _ *http.Request) {
		if f.tap == nil {
			writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource")
			return
		}
		writeKube(w, http.StatusOK, metav1.APIResourceList{
			TypeMeta:     metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"},
			GroupVersion: tapapi.GroupVersion,
		})
	})
	mux.HandleFunc("POST "+tapPrefix+"/watch/", func(w http.ResponseWriter, r *http.Request) {
		if f.tap == nil {
			writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource")
			return
		}
		f.tap(w, r)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("fake API server: unexpected %s %s", r.Method, r.URL)
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, "the server could not find the requested resource")
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: %s
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: %s
current-context: fake
users:
- name: fake
  user:
    token: fake-token
`, srv.URL, contextNamespace), 0o600); err != nil {
		t.Fatal(err)
	}
	return kubeconfig, srv.URL
}

// object answers a Get of a core object: a minimal one if it exists,
// else a NotFound Status.
func (fakeCluster) object(w http.ResponseWriter, exists bool, plural, name, kind string) {
	if !exists {
		writeStatus(w, http.StatusNotFound, metav1.StatusReasonNotFound, fmt.Sprintf("%s %q not found", plural, name))
		return
	}
	writeKube(w, http.StatusOK, map[string]any{"apiVersion": "v1", "kind": kind, "metadata": map[string]string{"name": name}})
}

// writeStatus answers a Kubernetes Status.
func writeStatus(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	writeKube(w, code, metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg,
	})
}

func writeKube(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// runIn runs meshctl with args against kubeconfig (added as --kubeconfig)
// until ctx ends, returning stdout, stderr and the error.
func runIn(ctx context.Context, kubeconfig string, args ...string) (stdout, stderr string, err error) {
	cmd := newCmdRoot(newGlobalOptions())
	var out, errOut syncBuffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append(args, "--kubeconfig", kubeconfig))
	err = cmd.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// oneLine fails t unless err is a single line containing want.
func oneLine(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: no error, want one with %q", what, want)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%s: error %q, want it to contain %q", what, err, want)
	case strings.Contains(err.Error(), "\n"):
		t.Errorf("%s: error is not one line: %q", what, err)
	}
}
