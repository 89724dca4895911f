package tap_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapclient"
	"github.com/sluice-mesh/sluice/controlplane/tap/taptest"
)

// TestClientDisconnect checks that a client going away, over HTTP/2 and
// HTTP/1.1, cancels every proxy's stream and closes the tap.
func TestClientDisconnect(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(map[bool]string{true: "HTTP/2", false: "HTTP/1.1"}[h2], func(t *testing.T) {
			px := proxies(t)
			env := newEnv(t, px, taptest.Options{})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, env.Server.URL+base+"/watch/namespaces/shop/deployments/web/tap", nil)
			req.Header.Set("X-Remote-User", "alice")
			hc := env.HTTPClient(t, &env.FrontProxyCert)
			if !h2 {
				tr := hc.Transport.(*http.Transport)
				tr.ForceAttemptHTTP2 = false
				tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if wantMajor := map[bool]int{true: 2, false: 1}[h2]; resp.ProtoMajor != wantMajor {
				t.Fatalf("response over %s, want HTTP/%d", resp.Proto, wantMajor)
			}
			er := newEventReader(t, resp)
			a, b := px[ipWeb1].NextStream(t), px[ipWeb2].NextStream(t)
			ev := taptest.RequestInit(1, 1, tappb.TapEvent_INBOUND, addr(ipClient, 1), addr(ipWeb1, 80), "GET", "web", "/")
			if err := a.Send(ev); err != nil {
				t.Fatal(err)
			}
			er.next()
			cancel()
			a.WaitDone(t)
			b.WaitDone(t)
			waitMetric(t, env, "tap_streams_open", 0)
		})
	}
}

// TestWatch taps through the aggregator stand-in with tapclient, as
// meshctl does: events arrive while the tap is open, and the limit ends it.
func TestWatch(t *testing.T) {
	px := proxies(t)
	env := newEnv(t, px, taptest.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	st, err := tapclient.Watch(ctx, env.RESTConfig("alice", "devs"), &tappb.TapByResourceRequest{
		Target: &tappb.Resource{Namespace: "shop", Type: "deploy", Name: "web"},
		Path:   "/api",
		Limit:  1,
	})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer st.Close()
	a, b := px[ipWeb1].NextStream(t), px[ipWeb2].NextStream(t)
	if a.Request.GetMatch().GetHttp().GetPath().GetPrefix() != "/api" {
		t.Errorf("proxy got match %v, want path prefix /api", a.Request.GetMatch())
	}
	reviews := env.Reviews()
	if len(reviews) != 1 || reviews[0].User != "alice" || !slices.Equal(reviews[0].Groups, []string{"devs"}) ||
		reviews[0].ResourceAttributes.Resource != "deployments" || reviews[0].ResourceAttributes.Name != "web" {
		t.Errorf("reviews %+v, want one of alice in devs for deployments/web", reviews)
	}

	in := tappb.TapEvent_INBOUND
	init := taptest.RequestInit(4, 1, in, addr(ipClient, 1), addr(ipWeb2, 80), "GET", "web", "/api/items")
	if err := b.Send(init); err != nil {
		t.Fatal(err)
	}
	ev, err := st.Recv()
	if err != nil || ev.GetHttp().GetRequestInit().GetPath() != "/api/items" {
		t.Fatalf("recv: %v, %v; want web-2's request init while the tap is open", ev, err)
	}
	if err := b.Send(taptest.ResponseEnd(4, 1, in, addr(ipClient, 1), addr(ipWeb2, 80))); err != nil {
		t.Fatal(err)
	}
	var got []*tappb.TapEvent
	for ev, err := range st.All() {
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		got = append(got, ev)
	}
	if len(got) != 1 || got[0].GetHttp().GetResponseEnd() == nil {
		t.Fatalf("got %v after the request init, want its response end and the end of the tap", got)
	}
	if _, err := st.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("recv after the end: %v, want io.EOF", err)
	}
	a.WaitDone(t)
	b.WaitDone(t)
}

// TestWatchErrors checks that refusals come back as errors that carry the
// Status: its message and its reason for apierrors' predicates.
func TestWatchErrors(t *testing.T) {
	px := proxies(t)
	env := newEnv(t, px, taptest.Options{Allow: func(s authorizationv1.SubjectAccessReviewSpec) (bool, string) {
		return s.User != "bob", ""
	}})
	for _, tc := range []struct {
		name    string
		user    string
		target  *tappb.Resource
		is      func(error) bool
		message string
	}{
		{
			name: "forbidden", user: "bob", target: &tappb.Resource{Namespace: "shop", Type: "deployment", Name: "web"},
			is: apierrors.IsForbidden, message: `tap deployment/web in namespace shop: user "bob" cannot watch deployments/tap in namespace "shop"`,
		},
		{
			name: "not found", user: "alice", target: &tappb.Resource{Namespace: "shop", Type: "deployment", Name: "nope"},
			is: apierrors.IsNotFound, message: `deployments.apps "nope" not found`,
		},
		{
			name: "no meshed pods", user: "alice", target: &tappb.Resource{Namespace: "shop", Type: "deployment", Name: "legacy"},
			is: apierrors.IsNotFound, message: "deployment/legacy in namespace shop has no running meshed pods",
		},
		{
			name: "not authenticated", user: "", target: &tappb.Resource{Namespace: "shop", Type: "deployment", Name: "web"},
			is: apierrors.IsUnauthorized, message: "no user in X-Remote-User",
		},
		{
			name: "unreachable", user: "alice", target: &tappb.Resource{Namespace: "other", Type: "deployment", Name: "ghost"},
			is: apierrors.IsServiceUnavailable, message: "cannot reach the proxies of deployment/ghost",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := tapclient.Watch(t.Context(), env.RESTConfig(tc.user), &tappb.TapByResourceRequest{Target: tc.target})
			if err == nil {
				st.Close()
				t.Fatal("watch succeeded, want an error")
			}
			if !tc.is(err) || !strings.Contains(err.Error(), tc.message) {
				t.Errorf("error %q (reason %q), want one with %q", err, apierrors.ReasonForError(err), tc.message)
			}
		})
	}
	t.Run("no target", func(t *testing.T) {
		if _, err := tapclient.Watch(t.Context(), env.RESTConfig("alice"), &tappb.TapByResourceRequest{}); err == nil || !strings.Contains(err.Error(), "no target") {
			t.Errorf("error %v, want one about the missing target", err)
		}
	})
}

// TestWatchNamespace taps a namespace with tapclient: the API server sees
// the path of namespaces/tap named after it, the same access the service
// reviews, and every running meshed pod of it is tapped.
func TestWatchNamespace(t *testing.T) {
	for _, target := range []*tappb.Resource{
		{Type: "ns", Name: "shop"},
		{Type: "namespace", Namespace: "shop"},
	} {
		t.Run(target.String(), func(t *testing.T) {
			px := proxies(t)
			env := newEnv(t, px, taptest.Options{})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			st, err := tapclient.Watch(ctx, env.RESTConfig("alice"), &tappb.TapByResourceRequest{Target: target})
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			defer st.Close()
			for _, ip := range []netip.Addr{ipWeb1, ipWeb2, ipDB1, ipSolo, ipCron} {
				px[ip].NextStream(t)
			}
			reviews := env.Reviews()
			want := authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "watch", Group: "tap.sluice.io", Version: "v1alpha1", Resource: "namespaces", Subresource: "tap", Name: "shop"}
			if len(reviews) != 1 || *reviews[0].ResourceAttributes != want {
				t.Errorf("reviews %+v, want one of %+v", reviews, want)
			}
		})
	}
}
