package meshctl

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

// fakeTap is the tap service's side of a tap: it records the request and
// streams events, then (with hold) waits for the client to go.
type fakeTap struct {
	events []*tappb.TapEvent
	hold   bool

	mu   sync.Mutex
	path string
	req  *tappb.TapByResourceRequest
}

func (f *fakeTap) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	req := &tappb.TapByResourceRequest{}
	if err == nil {
		err = proto.Unmarshal(body, req)
	}
	if err != nil {
		writeStatus(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
		return
	}
	f.mu.Lock()
	f.path, f.req = r.URL.Path, req
	f.mu.Unlock()
	w.Header().Set("Content-Type", tapapi.StreamProtobuf)
	for _, ev := range f.events {
		protodelim.MarshalTo(w, ev)
	}
	w.(http.Flusher).Flush()
	if f.hold {
		<-r.Context().Done()
	}
}

// got is the last tap's path and request.
func (f *fakeTap) got() (string, *tappb.TapByResourceRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.path, f.req
}

// TestTap taps through a fake API server and checks the request sent, for
// both forms of TARGET and with every filter, and the lines printed.
func TestTap(t *testing.T) {
	tap := &fakeTap{events: tapEvents()}
	kubeconfig, _ := fakeCluster{tap: tap.serve}.start(t)
	const watch = "/apis/tap.sluice.io/v1alpha1/watch/namespaces/"
	for _, tc := range []struct {
		args     string
		wantPath string
		wantReq  *tappb.TapByResourceRequest
		output   string
	}{
		{"tap deploy/web", watch + "demo/deployments/web/tap",
			&tappb.TapByResourceRequest{Target: &tappb.Resource{Namespace: "demo", Type: "deployment", Name: "web"}}, outputText},
		{"tap po web-1 -n shop --to svc/api --to-namespace store --method GET --authority api:80 --path /v1 --max-rps 2.5 --limit 9 -o json",
			watch + "shop/pods/web-1/tap",
			&tappb.TapByResourceRequest{
				Target: &tappb.Resource{Namespace: "shop", Type: "pod", Name: "web-1"},
				To:     &tappb.Resource{Namespace: "store", Type: "service", Name: "api"},
				Method: "GET", Authority: "api:80", Path: "/v1", MaxRps: 2.5, Limit: 9,
			}, outputJSON},
		{"tap ns/shop", watch + "shop/namespaces/shop/tap",
			&tappb.TapByResourceRequest{Target: &tappb.Resource{Namespace: "shop", Type: "namespace", Name: "shop"}}, outputText},
		{"tap deploy", watch + "demo/tap",
			&tappb.TapByResourceRequest{Target: &tappb.Resource{Namespace: "demo", Type: "deployment"}}, outputText},
	} {
		t.Run(tc.args, func(t *testing.T) {
			stdout, stderr, err := runIn(t.Context(), kubeconfig, strings.Fields(tc.args)...)
			if err != nil || stderr != "" {
				t.Fatalf("error %v, stderr %q", err, stderr)
			}
			path, req := tap.got()
			if path != tc.wantPath || !proto.Equal(req, tc.wantReq) {
				t.Errorf("tapped %s with %v; want %s with %v", path, req, tc.wantPath, tc.wantReq)
			}
			var want strings.Builder
			for _, ev := range tapEvents() {
				renderTapEvent(&want, ev, tc.output)
			}
			if stdout != want.String() {
				t.Errorf("output:\n%s\nwant:\n%s", stdout, want.String())
			}
		})
	}
}

// TestTapEnds checks that a tap stops at --limit ended requests, and on
// Ctrl-C (the end of ctx) without an error.
func TestTapEnds(t *testing.T) {
	tap := &fakeTap{events: tapEvents(), hold: true}
	kubeconfig, _ := fakeCluster{tap: tap.serve}.start(t)

	stdout, _, err := runIn(t.Context(), kubeconfig, "tap", "deploy/web", "--limit", "2")
	if lines := strings.Split(strings.TrimSpace(stdout), "\n"); err != nil || len(lines) != 6 || !strings.HasPrefix(lines[5], "end id=1:42 ") {
		t.Errorf("tap --limit 2: %v; printed\n%s\nwant the events up to the second end", err, stdout)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	stdout, _, err = runIn(ctx, kubeconfig, "tap", "deploy/web")
	if err != nil || strings.Count(stdout, "\n") != 9 {
		t.Errorf("tap until Ctrl-C: %v; printed\n%s", err, stdout)
	}
}

// TestTapFails checks the one-line errors of refused taps.
func TestTapFails(t *testing.T) {
	refuse := func(code int, reason metav1.StatusReason, msg string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) { writeStatus(w, code, reason, msg) }
	}
	forbidden, _ := fakeCluster{tap: refuse(http.StatusForbidden, metav1.StatusReasonForbidden,
		`user "bob" cannot watch deployments/tap in namespace "demo"`)}.start(t)
	missing, _ := fakeCluster{tap: refuse(http.StatusNotFound, metav1.StatusReasonNotFound, `deployments.apps "nope" not found`)}.start(t)
	down, _ := fakeCluster{tap: refuse(http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable,
		"the server is currently unable to handle the request")}.start(t)
	noTap, _ := fakeCluster{}.start(t)
	noSluice, _ := fakeCluster{noSluice: true}.start(t)
	for _, tc := range []struct {
		kubeconfig string
		args       string
		want       string
	}{
		{forbidden, "tap deploy/web", `tap deployment/web in namespace demo: user "bob" cannot watch deployments/tap in namespace "demo"`},
		{missing, "tap deploy/nope", `tap deployment/nope in namespace demo: deployments.apps "nope" not found`},
		{down, "tap deploy/web", "the tap API (tap.sluice.io/v1alpha1) is unavailable: is the tap service running in namespace sluice?"},
		{noTap, "tap deploy/web", "the tap API (tap.sluice.io/v1alpha1) is not served by this cluster: is Sluice's tap service installed?"},
		{noSluice, "tap deploy/web", "Sluice is not installed"},
	} {
		_, _, err := runIn(t.Context(), tc.kubeconfig, strings.Fields(tc.args)...)
		oneLine(t, "meshctl "+tc.args, err, tc.want)
	}
}

// TestTapInvalid checks that bad arguments and flags are refused with one
// line before any cluster is asked.
func TestTapInvalid(t *testing.T) {
	for _, tc := range []struct {
		args string
		want string
	}{
		{"tap widget/x", `invalid TARGET: parse resource "widget/x": unknown type "widget"`},
		{"tap deploy/web web", "give TYPE/NAME or TYPE NAME, not both"},
		{"tap deploy/web -o yaml", `invalid --output "yaml": use "text" or "json"`},
		{"tap deploy/web --to widget", `invalid --to: parse resource "widget"`},
		{"tap deploy/web --to-namespace x", "invalid --to-namespace: given without --to"},
		{"tap deploy/web --max-rps -1", "invalid --max-rps -1: must not be negative"},
		{"tap deploy/web --limit -1", `invalid argument "-1" for "--limit" flag`},
		{"tap", "accepts between 1 and 2 arg(s), received 0"},
	} {
		_, _, err := runIn(context.Background(), "/nonexistent/kubeconfig", strings.Fields(tc.args)...)
		oneLine(t, "meshctl "+tc.args, err, tc.want)
	}
}
