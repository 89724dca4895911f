package tap_test

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes/scheme"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
	"github.com/sluice-mesh/sluice/controlplane/tap/taptest"
)

// TestDiscovery reads the discovery documents as the aggregator does
// (decoded with client-go's scheme, with or without a client certificate)
// and through client-go's discovery client behind the aggregator stand-in.
func TestDiscovery(t *testing.T) {
	env := newEnv(t, nil, taptest.Options{})
	for _, noCert := range []bool{false, true} {
		for _, tc := range []struct {
			path string
			into runtime.Object
		}{
			{"/apis", &metav1.APIGroupList{}},
			{"/apis/tap.sluice.io", &metav1.APIGroup{}},
			{base, &metav1.APIResourceList{}},
		} {
			t.Run(fmt.Sprintf("%s/noCert=%v", tc.path, noCert), func(t *testing.T) {
				resp := do(t, t.Context(), env, call{method: http.MethodGet, path: tc.path, noCert: noCert})
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d, body %s", resp.StatusCode, b)
				}
				if err := runtime.DecodeInto(scheme.Codecs.UniversalDecoder(), b, tc.into); err != nil {
					t.Fatalf("decode %s: %v", b, err)
				}
				switch d := tc.into.(type) {
				case *metav1.APIGroupList:
					if len(d.Groups) != 1 || d.Groups[0].Name != tapapi.Group || d.Groups[0].PreferredVersion.GroupVersion != tapapi.GroupVersion {
						t.Errorf("APIGroupList %+v, want the one group %s preferring %s", d, tapapi.Group, tapapi.GroupVersion)
					}
				case *metav1.APIGroup:
					if d.Name != tapapi.Group || len(d.Versions) != 1 || d.Versions[0].Version != tapapi.Version {
						t.Errorf("APIGroup %+v, want %s with version %s", d, tapapi.Group, tapapi.Version)
					}
				case *metav1.APIResourceList:
					checkResources(t, d)
				}
			})
		}
	}
	t.Run("discovery client through the aggregator", func(t *testing.T) {
		dc, err := discovery.NewDiscoveryClientForConfig(env.RESTConfig("alice"))
		if err != nil {
			t.Fatalf("discovery client: %v", err)
		}
		rl, err := dc.ServerResourcesForGroupVersion(tapapi.GroupVersion)
		if err != nil {
			t.Fatalf("server resources: %v", err)
		}
		checkResources(t, rl)
		groups, err := dc.ServerGroups()
		if err != nil {
			t.Fatalf("server groups: %v", err)
		}
		if len(groups.Groups) != 1 || groups.Groups[0].Name != tapapi.Group {
			t.Errorf("groups %+v, want %s", groups.Groups, tapapi.Group)
		}
	})
}

// checkResources checks that l lists each tap subresource with the verb
// watch, and nothing listable.
func checkResources(t *testing.T, l *metav1.APIResourceList) {
	t.Helper()
	if l.GroupVersion != tapapi.GroupVersion {
		t.Errorf("groupVersion %q, want %q", l.GroupVersion, tapapi.GroupVersion)
	}
	got := map[string]metav1.APIResource{}
	for _, r := range l.APIResources {
		got[r.Name] = r
		if !slices.Equal(r.Verbs, []string{"watch"}) {
			t.Errorf("resource %s has verbs %v, want [watch]", r.Name, r.Verbs)
		}
	}
	for _, want := range []struct {
		name       string
		namespaced bool
	}{
		{"deployments/tap", true}, {"pods/tap", true}, {"namespaces/tap", false}, {"services/tap", true},
		{"statefulsets/tap", true}, {"daemonsets/tap", true}, {"replicasets/tap", true}, {"jobs/tap", true}, {"cronjobs/tap", true},
	} {
		r, ok := got[want.name]
		if !ok {
			t.Errorf("no resource %s in %v", want.name, l.APIResources)
			continue
		}
		if r.Namespaced != want.namespaced {
			t.Errorf("resource %s namespaced %v, want %v", want.name, r.Namespaced, want.namespaced)
		}
	}
	if len(got) != 9 {
		t.Errorf("%d resources, want the 9 tap subresources: %v", len(got), l.APIResources)
	}
}

// TestAuthentication checks the front proxy's certificate and the user it
// names.
func TestAuthentication(t *testing.T) {
	px := proxies(t)
	env := newEnv(t, px, taptest.Options{})
	otherCA := taptest.NewCA(t, "other-ca")
	strangerCert := otherCA.ClientCert(t, taptest.FrontProxyName)
	wrongCN := env.CA.ClientCert(t, "kubelet")
	for _, tc := range []struct {
		name    string
		c       call
		code    int
		message string
	}{
		{"front proxy certificate and user", call{user: "alice"}, http.StatusOK, ""},
		{"no client certificate", call{user: "alice", noCert: true}, http.StatusUnauthorized, "no client certificate"},
		{"certificate of another CA", call{user: "alice", cert: &strangerCert}, http.StatusUnauthorized, "not signed by the request-header CA"},
		{"name not allowed", call{user: "alice", cert: &wrongCN}, http.StatusUnauthorized, `"kubelet" is not one of the allowed request-header names`},
		{"no user", call{}, http.StatusUnauthorized, "no user in X-Remote-User"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			tc.c.path = base + "/watch/namespaces/shop/pods/web-1/tap"
			resp := do(t, ctx, env, tc.c)
			if tc.code == http.StatusOK {
				newEventReader(t, resp)
				px[ipWeb1].NextStream(t)
				return
			}
			st := status(t, resp, tc.code)
			if st.Reason != metav1.StatusReasonUnauthorized || !strings.Contains(st.Message, tc.message) {
				t.Errorf("Status reason %q message %q, want Unauthorized with %q", st.Reason, st.Message, tc.message)
			}
		})
	}
	if got := env.Metric(t, "tap_requests_total", map[string]string{"outcome": "unauthenticated"}); got != 4 {
		t.Errorf("tap_requests_total{outcome=unauthenticated} = %v, want 4", got)
	}

	t.Run("any name when none is listed", func(t *testing.T) {
		px := proxies(t)
		env := newEnv(t, px, taptest.Options{Adjust: func(c *tap.Config) { c.RequestHeader.AllowedNames = nil }})
		cert := env.CA.ClientCert(t, "anyone")
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		newEventReader(t, do(t, ctx, env, call{path: base + "/watch/namespaces/shop/pods/web-1/tap", user: "alice", cert: &cert}))
		px[ipWeb1].NextStream(t)
	})
}

// TestAuthorization checks the SubjectAccessReview the service makes and
// the 403 of a denial.
func TestAuthorization(t *testing.T) {
	px := proxies(t)
	env := newEnv(t, px, taptest.Options{Allow: func(s authorizationv1.SubjectAccessReviewSpec) (bool, string) {
		return s.User == "alice", "no RBAC rule allows it"
	}})
	for _, tc := range []struct {
		name  string
		path  string
		user  string
		attrs authorizationv1.ResourceAttributes
		// message of the 403; empty: allowed
		message string
		proxy   netip.Addr
	}{
		{
			name: "deployment allowed", path: "/watch/namespaces/shop/deployments/web/tap", user: "alice", proxy: ipWeb1,
			attrs: authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "watch", Group: "tap.sluice.io", Version: "v1alpha1", Resource: "deployments", Subresource: "tap", Name: "web"},
		},
		{
			name: "namespace allowed", path: "/watch/namespaces/shop/tap", user: "alice", proxy: ipDB1,
			attrs: authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "watch", Group: "tap.sluice.io", Version: "v1alpha1", Resource: "namespaces", Subresource: "tap", Name: "shop"},
		},
		{
			name: "deployment denied", path: "/watch/namespaces/shop/deployments/web/tap", user: "bob",
			attrs:   authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "watch", Group: "tap.sluice.io", Version: "v1alpha1", Resource: "deployments", Subresource: "tap", Name: "web"},
			message: `user "bob" cannot watch deployments/tap in namespace "shop": no RBAC rule allows it`,
		},
		{
			name: "namespace denied", path: "/watch/namespaces/shop/tap", user: "bob",
			attrs:   authorizationv1.ResourceAttributes{Namespace: "shop", Verb: "watch", Group: "tap.sluice.io", Version: "v1alpha1", Resource: "namespaces", Subresource: "tap", Name: "shop"},
			message: `user "bob" cannot watch namespaces/tap in namespace "shop": no RBAC rule allows it`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(env.Reviews())
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			resp := do(t, ctx, env, call{
				path: base + tc.path, user: tc.user, groups: []string{"system:authenticated", "devs"},
				header: http.Header{"X-Remote-Extra-Scopes": {"a", "b"}, "X-Remote-Extra-Acme.com%2fproject": {"x"}},
			})
			if tc.message == "" {
				newEventReader(t, resp)
				px[tc.proxy].NextStream(t)
			} else {
				st := status(t, resp, http.StatusForbidden)
				if st.Message != tc.message || st.Reason != metav1.StatusReasonForbidden {
					t.Errorf("Status reason %q message %q, want Forbidden, %q", st.Reason, st.Message, tc.message)
				}
			}
			reviews := env.Reviews()[before:]
			if len(reviews) != 1 {
				t.Fatalf("%d SubjectAccessReviews, want 1", len(reviews))
			}
			r := reviews[0]
			if r.User != tc.user || !slices.Equal(r.Groups, []string{"system:authenticated", "devs"}) {
				t.Errorf("review of user %q groups %v, want %q [system:authenticated devs]", r.User, r.Groups, tc.user)
			}
			if !slices.Equal(r.Extra["scopes"], authorizationv1.ExtraValue{"a", "b"}) || !slices.Equal(r.Extra["acme.com/project"], authorizationv1.ExtraValue{"x"}) {
				t.Errorf("review extra %v, want scopes=[a b] and acme.com/project=[x]", r.Extra)
			}
			if r.ResourceAttributes == nil || *r.ResourceAttributes != tc.attrs {
				t.Errorf("review of %+v, want %+v", r.ResourceAttributes, tc.attrs)
			}
		})
	}
}

// TestFanOut taps deployment web with every filter, in each body and
// response format: both meshed pods' proxies get the Match, the events of
// both arrive merged and enriched, and closing the response cancels both
// proxies' streams.
func TestFanOut(t *testing.T) {
	req := &tappb.TapByResourceRequest{
		Method:    "GET",
		Authority: "db.shop.svc.cluster.local:5432",
		Path:      "/api/",
		To:        &tappb.Resource{Type: "deploy", Name: "db"},
		MaxRps:    10,
		Extract:   &tappb.Extract{Extract: &tappb.Extract_Http_{Http: &tappb.Extract_Http{Extract: &tappb.Extract_Http_Headers_{Headers: &tappb.Extract_Http_Headers{}}}}},
	}
	label := func(k, v string) *tappb.Match {
		return &tappb.Match{Match: &tappb.Match_DestinationLabel{DestinationLabel: &tappb.Match_Label{Key: k, Value: v}}}
	}
	httpMatch := func(h *tappb.Match_Http) *tappb.Match { return &tappb.Match{Match: &tappb.Match_Http_{Http: h}} }
	wantMatch := &tappb.Match{Match: &tappb.Match_All{All: &tappb.Match_Seq{Matches: []*tappb.Match{
		httpMatch(&tappb.Match_Http{Match: &tappb.Match_Http_Method{Method: &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Exact{Exact: "GET"}}}}),
		httpMatch(&tappb.Match_Http{Match: &tappb.Match_Http_Authority{Authority: &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Exact{Exact: "db.shop.svc.cluster.local:5432"}}}}),
		httpMatch(&tappb.Match_Http{Match: &tappb.Match_Http_Path{Path: &tappb.Match_Http_StringMatch{Match: &tappb.Match_Http_StringMatch_Prefix{Prefix: "/api/"}}}}),
		{Match: &tappb.Match_Any{Any: &tappb.Match_Seq{Matches: []*tappb.Match{
			{Match: &tappb.Match_All{All: &tappb.Match_Seq{Matches: []*tappb.Match{label("namespace", "shop"), label("deployment", "db")}}}},
			{Match: &tappb.Match_Destination{Destination: &tappb.Match_Tcp{Match: &tappb.Match_Tcp_Netmask_{Netmask: &tappb.Match_Tcp_Netmask{Ip: ipDB1.AsSlice(), Mask: 32}}}}},
		}}}},
	}}}}

	for _, tc := range []struct {
		contentType, accept string
	}{
		{tapapi.ContentTypeProtobuf, ""},
		{tapapi.ContentTypeXProtobuf, tapapi.ContentTypeProtobuf},
		{tapapi.ContentTypeJSON, "application/json"},
		{tapapi.ContentTypeProtobuf, "application/json, */*"},
		{"application/json; charset=utf-8", tapapi.ContentTypeProtobuf},
	} {
		t.Run(fmt.Sprintf("body %s, accept %q", tc.contentType, tc.accept), func(t *testing.T) {
			px := proxies(t)
			env := newEnv(t, px, taptest.Options{})
			body := protoBody(t, req)
			if strings.HasPrefix(tc.contentType, "application/json") {
				body = jsonBody(t, req)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			resp := do(t, ctx, env, call{path: base + "/watch/namespaces/shop/deployments/web/tap", body: body, contentType: tc.contentType, accept: tc.accept, user: "alice"})
			er := newEventReader(t, resp)
			if wantJSON := strings.HasPrefix(tc.accept, "application/json"); er.json != wantJSON {
				t.Errorf("JSON response %v, want %v", er.json, wantJSON)
			}
			s1, s2 := px[ipWeb1].NextStream(t), px[ipWeb2].NextStream(t)
			for _, s := range []*taptest.Stream{s1, s2} {
				if !proto.Equal(s.Request.GetMatch(), wantMatch) {
					t.Errorf("proxy got match %v\nwant %v", s.Request.GetMatch(), wantMatch)
				}
				if s.Request.GetMaxRps() != 5 || s.Request.GetLimit() != 0 || s.Request.GetExtract().GetHttp().GetHeaders() == nil {
					t.Errorf("proxy got max_rps %v, limit %d, extract %v; want 5 (10 over 2 pods), 0, headers", s.Request.GetMaxRps(), s.Request.GetLimit(), s.Request.GetExtract())
				}
			}
			for _, ip := range []netip.Addr{ipWeb3, ipDB1, ipSolo} {
				if px[ip] != nil && px[ip].Dials() != 0 {
					t.Errorf("the proxy of %s, not a running meshed pod of deployment web, was tapped", ip)
				}
			}
			if got := env.Metric(t, "tap_streams_open", nil); got != 1 {
				t.Errorf("tap_streams_open = %v, want 1", got)
			}

			// An outbound request of web-1 to db-1: the source is web-1;
			// the destination's pod is found by its IP.
			out := taptest.RequestInit(7, 1, tappb.TapEvent_OUTBOUND, addr(ipWeb1, 40000), addr(ipDB1, 5432), "GET", "db.shop.svc.cluster.local:5432", "/api/x")
			out.DestinationMeta = &tappb.TapEvent_EndpointMeta{Labels: map[string]string{"tls": "true"}}
			if err := s1.Send(out); err != nil {
				t.Fatal(err)
			}
			ev := er.next()
			if ev.GetHttp().GetRequestInit().GetPath() != "/api/x" {
				t.Fatalf("got %v, want web-1's request init", ev)
			}
			wantSrc := map[string]string{"namespace": "shop", "pod": "web-1", "deployment": "web", "serviceaccount": "web"}
			wantDst := map[string]string{"tls": "true", "namespace": "shop", "pod": "db-1", "deployment": "db", "serviceaccount": "db"}
			if got := labelsOf(ev.GetSourceMeta()); !equalMaps(got, wantSrc) {
				t.Errorf("outbound source labels %v, want %v", got, wantSrc)
			}
			if got := labelsOf(ev.GetDestinationMeta()); !equalMaps(got, wantDst) {
				t.Errorf("outbound destination labels %v, want %v", got, wantDst)
			}

			// An inbound request to web-2 from client-1, which the service
			// finds through the API.
			in := taptest.RequestInit(9, 1, tappb.TapEvent_INBOUND, addr(ipClient, 50000), addr(ipWeb2, 8080), "GET", "web", "/api/y")
			in.DestinationMeta = &tappb.TapEvent_EndpointMeta{Labels: map[string]string{"tls": "disabled"}}
			if err := s2.Send(in); err != nil {
				t.Fatal(err)
			}
			ev = er.next()
			if ev.GetHttp().GetRequestInit().GetPath() != "/api/y" {
				t.Fatalf("got %v, want web-2's request init", ev)
			}
			wantSrc = map[string]string{"namespace": "shop", "pod": "client-1", "serviceaccount": "client"}
			wantDst = map[string]string{"tls": "disabled", "namespace": "shop", "pod": "web-2", "deployment": "web", "serviceaccount": "web"}
			if got := labelsOf(ev.GetSourceMeta()); !equalMaps(got, wantSrc) {
				t.Errorf("inbound source labels %v, want %v", got, wantSrc)
			}
			if got := labelsOf(ev.GetDestinationMeta()); !equalMaps(got, wantDst) {
				t.Errorf("inbound destination labels %v, want %v", got, wantDst)
			}

			resp.Body.Close()
			cancel()
			s1.WaitDone(t)
			s2.WaitDone(t)
			waitMetric(t, env, "tap_streams_open", 0) // the handler returned
			if got := env.Metric(t, "tap_events_forwarded_total", nil); got != 2 {
				t.Errorf("tap_events_forwarded_total = %v, want 2", got)
			}
			if got := env.Metric(t, "tap_requests_total", map[string]string{"outcome": "ok"}); got != 1 {
				t.Errorf("tap_requests_total{outcome=ok} = %v, want 1", got)
			}
		})
	}
}

// waitMetric waits for a gauge to reach want, as the handler ends a
// moment after its proxies' streams; it fails after the hang guard.
func waitMetric(t *testing.T, env *taptest.Env, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for env.Metric(t, name, nil) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v, want %v", name, env.Metric(t, name, nil), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestLimit checks that the limit counts requests over all pods, forwards
// the admitted requests' later events only, and ends the stream (and the
// proxies' streams) once they ended.
func TestLimit(t *testing.T) {
	px := proxies(t)
	env := newEnv(t, px, taptest.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resp := do(t, ctx, env, call{
		path: base + "/watch/namespaces/shop/deployments/web/tap", user: "alice",
		body: jsonBody(t, &tappb.TapByResourceRequest{Limit: 2}), contentType: "application/json",
	})
	er := newEventReader(t, resp)
	a, b := px[ipWeb1].NextStream(t), px[ipWeb2].NextStream(t)
	if a.Request.GetLimit() != 2 || b.Request.GetLimit() != 2 {
		t.Errorf("proxies got limits %d and %d, want 2 each", a.Request.GetLimit(), b.Request.GetLimit())
	}
	in := tappb.TapEvent_INBOUND
	src := addr(ipClient, 1000)
	type step struct {
		s    *taptest.Stream
		ev   *tappb.TapEvent
		want bool // forwarded
	}
	steps := []step{
		{a, taptest.RequestInit(1, 1, in, src, addr(ipWeb1, 80), "GET", "web", "/a1"), true},
		{b, taptest.RequestInit(2, 1, in, src, addr(ipWeb2, 80), "GET", "web", "/b1"), true},
		{a, taptest.RequestInit(1, 2, in, src, addr(ipWeb1, 80), "GET", "web", "/a2"), false}, // third request: over the limit
		{a, taptest.ResponseEnd(1, 2, in, src, addr(ipWeb1, 80)), false},
		{a, taptest.ResponseEnd(1, 1, in, src, addr(ipWeb1, 80)), true},
		{b, taptest.ResponseEnd(2, 1, in, src, addr(ipWeb2, 80)), true},
	}
	for i, st := range steps {
		if err := st.s.Send(st.ev); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if !st.want {
			continue
		}
		got := er.next()
		if !proto.Equal(got.GetHttp(), st.ev.GetHttp()) {
			t.Fatalf("step %d: got %v, want %v", i, got.GetHttp(), st.ev.GetHttp())
		}
	}
	if ev := er.next(); ev != nil {
		t.Fatalf("got %v after the limit, want the end of the stream", ev)
	}
	a.WaitDone(t)
	b.WaitDone(t)
}

// TestProxyStreamsEnd checks that the tap ends once every proxy's stream
// ended, and goes on while one is open.
func TestProxyStreamsEnd(t *testing.T) {
	px := proxies(t)
	env := newEnv(t, px, taptest.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resp := do(t, ctx, env, call{path: base + "/watch/namespaces/shop/deployments/web/tap", user: "alice"})
	er := newEventReader(t, resp)
	a, b := px[ipWeb1].NextStream(t), px[ipWeb2].NextStream(t)
	a.End(nil)
	ev := taptest.RequestInit(2, 1, tappb.TapEvent_INBOUND, addr(ipClient, 1), addr(ipWeb2, 80), "GET", "web", "/b")
	if err := b.Send(ev); err != nil {
		t.Fatal(err)
	}
	if got := er.next(); got.GetHttp().GetRequestInit().GetPath() != "/b" {
		t.Fatalf("got %v, want web-2's event after web-1's stream ended", got)
	}
	b.End(nil)
	if got := er.next(); got != nil {
		t.Fatalf("got %v, want the end of the stream", got)
	}
}

// TestTargets checks which pods each kind of target reaches.
func TestTargets(t *testing.T) {
	for _, tc := range []struct {
		name string
		path string
		body *tappb.TapByResourceRequest
		want []netip.Addr
	}{
		{"deployment", "/watch/namespaces/shop/deployments/web/tap", nil, []netip.Addr{ipWeb1, ipWeb2}},
		{"deployment by short name", "/watch/namespaces/shop/deploy/web/tap", nil, []netip.Addr{ipWeb1, ipWeb2}},
		{"service", "/watch/namespaces/shop/services/web-svc/tap", nil, []netip.Addr{ipWeb1, ipWeb2}},
		{"pod", "/watch/namespaces/shop/pods/db-1/tap", nil, []netip.Addr{ipDB1}},
		{"job", "/watch/namespaces/shop/jobs/nightly-1/tap", nil, []netip.Addr{ipCron}},
		{"cronjob", "/watch/namespaces/shop/cronjobs/nightly/tap", nil, []netip.Addr{ipCron}},
		{"namespace", "/watch/namespaces/shop/tap", nil, []netip.Addr{ipWeb1, ipWeb2, ipDB1, ipSolo, ipCron}},
		{"namespace by the long path", "/watch/namespaces/shop/namespaces/shop/tap", nil, []netip.Addr{ipWeb1, ipWeb2, ipDB1, ipSolo, ipCron}},
		{"every deployment", "/watch/namespaces/shop/tap", &tappb.TapByResourceRequest{Target: &tappb.Resource{Type: "deployments"}}, []netip.Addr{ipWeb1, ipWeb2, ipDB1}},
		{"every service", "/watch/namespaces/shop/tap", &tappb.TapByResourceRequest{Target: &tappb.Resource{Namespace: "shop", Type: "svc"}}, []netip.Addr{ipWeb1, ipWeb2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			px := proxies(t)
			env := newEnv(t, px, taptest.Options{})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var body []byte
			if tc.body != nil {
				body = protoBody(t, tc.body)
			}
			resp := do(t, ctx, env, call{path: base + tc.path, user: "alice", body: body, contentType: tapapi.ContentTypeProtobuf})
			newEventReader(t, resp)
			for ip, p := range px {
				if !slices.Contains(tc.want, ip) {
					if p.Dials() != 0 {
						t.Errorf("the proxy of %s was tapped; want only those of %v", ip, tc.want)
					}
					continue
				}
				s := p.NextStream(t)
				if want := 100 / float64(len(tc.want)); math.Abs(s.Request.GetMaxRps()-want) > 1e-9 {
					t.Errorf("proxy of %s got max_rps %v, want %v (the default 100 over %d pods)", ip, s.Request.GetMaxRps(), want, len(tc.want))
				}
			}
		})
	}
}

// TestRefusals checks the answers to requests the service refuses.
func TestRefusals(t *testing.T) {
	big := jsonBody(t, &tappb.TapByResourceRequest{Path: strings.Repeat("x", tap.DefaultMaxBodyBytes)})
	for _, tc := range []struct {
		name    string
		c       call
		adjust  func(*tap.Config)
		code    int
		reason  metav1.StatusReason
		message string
		outcome string
	}{
		{
			name: "unknown type", c: call{path: base + "/watch/namespaces/shop/foos/x/tap"},
			code: 404, reason: metav1.StatusReasonNotFound, message: `has no type "foos"`, outcome: "not_found",
		},
		{
			name: "unknown path", c: call{path: base + "/namespaces/shop/deployments/web"},
			code: 404, reason: metav1.StatusReasonNotFound, message: "could not find the requested resource", outcome: "",
		},
		{
			name: "missing deployment", c: call{path: base + "/watch/namespaces/shop/deployments/nope/tap"},
			code: 404, reason: metav1.StatusReasonNotFound, message: `deployments.apps "nope" not found`, outcome: "not_found",
		},
		{
			name: "missing namespace", c: call{path: base + "/watch/namespaces/gone/tap"},
			code: 404, reason: metav1.StatusReasonNotFound, message: `namespaces "gone" not found`, outcome: "not_found",
		},
		{
			name: "no meshed pods", c: call{path: base + "/watch/namespaces/shop/deployments/legacy/tap"},
			code: 404, reason: metav1.StatusReasonNotFound, message: "deployment/legacy in namespace shop has no running meshed pods", outcome: "no_meshed_pods",
		},
		{
			name: "missing to", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: []byte(`{"to":{"type":"deployment","name":"nope"}}`)},
			code: 404, reason: metav1.StatusReasonNotFound, message: `to: deployments.apps "nope" not found`, outcome: "not_found",
		},
		{
			name: "garbage protobuf", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: tapapi.ContentTypeProtobuf, body: []byte{0xff, 0xff, 0xff}},
			code: 400, reason: metav1.StatusReasonBadRequest, message: "decode TapByResourceRequest", outcome: "bad_request",
		},
		{
			name: "unknown JSON field", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: []byte(`{"tagret":{}}`)},
			code: 400, reason: metav1.StatusReasonBadRequest, message: "decode TapByResourceRequest", outcome: "bad_request",
		},
		{
			name: "unknown media type", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "text/plain", body: []byte("tap it")},
			code: 415, reason: metav1.StatusReasonUnsupportedMediaType, message: `Content-Type "text/plain"`, outcome: "bad_request",
		},
		{
			name: "huge body", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: big},
			code: 413, reason: metav1.StatusReasonRequestEntityTooLarge, message: "larger than 65536 bytes", outcome: "bad_request",
		},
		{
			name: "negative max_rps", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: []byte(`{"maxRps":-1}`)},
			code: 400, reason: metav1.StatusReasonBadRequest, message: "max_rps -1", outcome: "bad_request",
		},
		{
			name: "NaN max_rps", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: []byte(`{"maxRps":"NaN"}`)},
			code: 400, reason: metav1.StatusReasonBadRequest, message: "max_rps NaN", outcome: "bad_request",
		},
		{
			name: "target of another type", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: []byte(`{"target":{"type":"pod"}}`)},
			code: 400, reason: metav1.StatusReasonBadRequest, message: `target type "pod" is not the type "deployment"`, outcome: "bad_request",
		},
		{
			name: "target in another namespace", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: []byte(`{"target":{"namespace":"other"}}`)},
			code: 400, reason: metav1.StatusReasonBadRequest, message: `target namespace "other" is not the namespace "shop"`, outcome: "bad_request",
		},
		{
			name: "named target on the namespace path", c: call{path: base + "/watch/namespaces/shop/tap", contentType: "application/json", body: []byte(`{"target":{"type":"deployment","name":"web"}}`)},
			code: 400, reason: metav1.StatusReasonBadRequest, message: "a named target goes in the path", outcome: "bad_request",
		},
		{
			name: "unknown to type", c: call{path: base + "/watch/namespaces/shop/deployments/web/tap", contentType: "application/json", body: []byte(`{"to":{"type":"gadget","name":"x"}}`)},
			code: 400, reason: metav1.StatusReasonBadRequest, message: `to: unknown type "gadget"`, outcome: "bad_request",
		},
		{
			name: "GET", c: call{method: http.MethodGet, path: base + "/watch/namespaces/shop/deployments/web/tap"},
			code: 405, reason: metav1.StatusReasonMethodNotAllowed, message: "GET is not allowed", outcome: "bad_request",
		},
		{
			name: "too many pods", c: call{path: base + "/watch/namespaces/shop/tap"}, adjust: func(c *tap.Config) { c.MaxPods = 4 },
			code: 400, reason: metav1.StatusReasonBadRequest, message: "namespace shop has 5 running meshed pods, more than the 4 one tap may watch", outcome: "bad_request",
		},
		{
			name: "unreachable proxies", c: call{path: base + "/watch/namespaces/other/deployments/ghost/tap"},
			code: 503, reason: metav1.StatusReasonServiceUnavailable, message: "cannot reach the proxies of deployment/ghost in namespace other: pod ghost-1 (10.0.9.9:4190)", outcome: "unavailable",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			px := proxies(t)
			env := newEnv(t, px, taptest.Options{Adjust: tc.adjust})
			tc.c.user = "alice"
			st := status(t, do(t, t.Context(), env, tc.c), tc.code)
			if st.Reason != tc.reason || !strings.Contains(st.Message, tc.message) {
				t.Errorf("Status reason %q message %q, want %q with %q", st.Reason, st.Message, tc.reason, tc.message)
			}
			if tc.outcome != "" {
				if got := env.Metric(t, "tap_requests_total", map[string]string{"outcome": tc.outcome}); got != 1 {
					t.Errorf("tap_requests_total{outcome=%q} = %v, want 1", tc.outcome, got)
				}
			}
			for ip, p := range px {
				if n := p.Dials(); n != 0 {
					t.Errorf("the proxy of %s was dialled %d times for a refused request", ip, n)
				}
			}
		})
	}
}
