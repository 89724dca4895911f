package tapapi_test

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
)

func TestParseResource(t *testing.T) {
	for _, tc := range []struct {
		in, ns string
		want   *tappb.Resource
		err    string
	}{
		{"deploy/web", "shop", &tappb.Resource{Namespace: "shop", Type: "deployment", Name: "web"}, ""},
		{"Deployments/web", "shop", &tappb.Resource{Namespace: "shop", Type: "deployment", Name: "web"}, ""},
		{"po/web-1", "shop", &tappb.Resource{Namespace: "shop", Type: "pod", Name: "web-1"}, ""},
		{"svc", "shop", &tappb.Resource{Namespace: "shop", Type: "service"}, ""},
		{"ns/other", "shop", &tappb.Resource{Namespace: "other", Type: "namespace", Name: "other"}, ""},
		{"namespace", "shop", &tappb.Resource{Namespace: "shop", Type: "namespace", Name: "shop"}, ""},
		{"gadget/x", "shop", nil, `unknown type "gadget"`},
		{"deploy/a/b", "shop", nil, "want type/name"},
	} {
		got, err := tapapi.ParseResource(tc.in, tc.ns)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseResource(%q): error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || !proto.Equal(got, tc.want) {
			t.Errorf("ParseResource(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestWatchPath(t *testing.T) {
	for _, tc := range []struct {
		r    *tappb.Resource
		want string
		err  string
	}{
		{&tappb.Resource{Namespace: "shop", Type: "deploy", Name: "web"}, "/apis/tap.sluice.io/v1alpha1/watch/namespaces/shop/deployments/web/tap", ""},
		{&tappb.Resource{Namespace: "shop", Type: "namespace", Name: "shop"}, "/apis/tap.sluice.io/v1alpha1/watch/namespaces/shop/namespaces/shop/tap", ""},
		{&tappb.Resource{Namespace: "shop", Type: "service"}, "/apis/tap.sluice.io/v1alpha1/watch/namespaces/shop/tap", ""},
		{&tappb.Resource{Type: "pod", Name: "x"}, "", "no namespace"},
		{&tappb.Resource{Namespace: "shop", Type: "gadget", Name: "x"}, "", `unknown type "gadget"`},
	} {
		got, err := tapapi.WatchPath(tc.r)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("WatchPath(%v): error %v, want %q", tc.r, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("WatchPath(%v) = %q, %v; want %q", tc.r, got, err, tc.want)
		}
	}
}

func TestString(t *testing.T) {
	for _, tc := range []struct {
		r    *tappb.Resource
		want string
	}{
		{&tappb.Resource{Namespace: "shop", Type: "deployment", Name: "web"}, "deployment/web in namespace shop"},
		{&tappb.Resource{Namespace: "shop", Type: "namespace", Name: "shop"}, "namespace shop"},
		{&tappb.Resource{Namespace: "shop", Type: "service"}, "every service in namespace shop"},
	} {
		if got := tapapi.String(tc.r); got != tc.want {
			t.Errorf("String(%v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
