package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapclient"
)

// TestTap: a tap through the Kubernetes API server (the APIService
// tap.sluice.io) returns live requests seen by both pods of a meshed
// Deployment; a user without RBAC for tap is refused, and the same user
// with the chart's tap-user role may tap.
func TestTap(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.meshedNamespace(t, "tap")
	s.deployEcho(t, c, ns, "web", 2)
	web := s.pods(t, c, ns, map[string]string{"app": "web"})
	want := map[netip.Addr]string{}
	for _, p := range web {
		want[netip.MustParseAddr(p.Status.PodIP)] = p.Name
	}
	s.clientLoop(t, c, ns, "client", "http://web."+ns+".svc.cluster.local/tapped", 100*time.Millisecond)

	req := &tappb.TapByResourceRequest{
		Target: &tappb.Resource{Namespace: ns, Type: "deployment", Name: "web"},
		Path:   "/tapped",
		Limit:  60,
	}
	stream, err := tapclient.Watch(c, s.cluster.REST, req)
	if err != nil {
		t.Fatalf("tap deploy/web as the cluster admin: %v", err)
	}
	defer stream.Close()
	seen := map[string]int{} // pod name -> response_end events
	ends := 0
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("tap stream: %v (after %d responses)", err, ends)
		}
		if ev.GetProxyDirection() != tappb.TapEvent_INBOUND {
			t.Errorf("event from a %v proxy; deploy/web's pods only see inbound requests here", ev.GetProxyDirection())
		}
		if init := ev.GetHttp().GetRequestInit(); init != nil {
			if init.Path != "/tapped" || init.Method != "GET" {
				t.Errorf("tapped a %s %s; the filter keeps GET /tapped", init.Method, init.Path)
			}
		}
		if end := ev.GetHttp().GetResponseEnd(); end != nil {
			ends++
			ip, ok := netip.AddrFromSlice(ev.GetDestination().GetIp())
			pod := want[ip.Unmap()]
			if !ok || pod == "" {
				t.Errorf("response from %v, not a pod of deploy/web (%v)", ev.GetDestination(), want)
				continue
			}
			if got := ev.GetDestinationMeta().GetLabels()["pod"]; got != pod {
				t.Errorf("event for %s labelled pod=%q", pod, got)
			}
			seen[pod]++
		}
	}
	if ends != int(req.Limit) {
		t.Errorf("stream ended after %d responses, want the limit %d", ends, req.Limit)
	}
	if len(seen) != len(web) {
		t.Errorf("events came from %v, want both pods of deploy/web (%v)", seen, want)
	}

	// A user the cluster knows nothing about, then the same user with the
	// chart's role for tap users.
	bob := rest.CopyConfig(s.cluster.REST)
	bob.Impersonate = rest.ImpersonationConfig{UserName: "bob", Groups: []string{"system:authenticated"}}
	_, err = tapclient.Watch(c, bob, req)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `"bob"`) || !strings.Contains(err.Error(), "tap") {
		t.Fatalf("tap as bob without RBAC: %v, want forbidden naming bob and tap", err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bob-taps"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: fmt.Sprintf("sluice-%s-tap-user", cpNamespace)},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "bob"}},
	}
	if _, err := s.cluster.Client.RbacV1().RoleBindings(ns).Create(c, rb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	req.Limit = 3
	waitFor(t, c, "bob's role binding to take effect", func(c2 context.Context) (bool, string, error) {
		st, err := tapclient.Watch(c2, bob, req)
		if apierrors.IsForbidden(err) {
			return false, err.Error(), nil
		}
		if err != nil {
			return false, "", err
		}
		defer st.Close()
		n := 0
		for _, err := range st.All() {
			if err != nil {
				return false, "", err
			}
			n++
		}
		return n > 0, fmt.Sprintf("%d events", n), nil
	})
}
