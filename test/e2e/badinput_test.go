package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	destpb "github.com/sluice-mesh/sluice/controlplane/api/destination"
	identitypb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapclient"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// TestBadInput: malformed authorities, unknown ports, huge and malformed
// tap requests, garbage CSRs and dead tokens get a clear error from the
// installed services, and each service keeps answering good requests.
func TestBadInput(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.meshedNamespace(t, "bad")
	s.deployEcho(t, c, ns, "web", 1)

	t.Run("destination", func(t *testing.T) {
		client := s.destinationClient(t, c)
		for _, tc := range []struct {
			path string
			code codes.Code
		}{
			{"", codes.InvalidArgument},
			{"web." + ns + ".svc.cluster.local:http", codes.InvalidArgument},
			{"web." + ns + ".svc.cluster.local:99999", codes.InvalidArgument},
			{"web.." + ns + ".svc.cluster.local:80", codes.InvalidArgument},
			{strings.Repeat("a", 300) + "." + ns + ".svc.cluster.local:80", codes.InvalidArgument},
		} {
			first, err := firstUpdate(c, client, tc.path, ns)
			if st := status.Convert(err); st.Code() != tc.code || st.Message() == "" {
				t.Errorf("Get(%.40q) = %v, %v; want %v with a message", tc.path, first, err, tc.code)
			}
		}
		// A port the service does not have: not served, so the proxy
		// passes the connection through.
		first, err := firstUpdate(c, client, "web."+ns+".svc.cluster.local:81", ns)
		if err != nil || first.GetNoEndpoints() == nil || first.GetNoEndpoints().Exists {
			t.Errorf("Get of an unknown port = %v, %v; want no_endpoints{exists: false}", first, err)
		}
		first, err = firstUpdate(c, client, "web."+ns+".svc.cluster.local:80", ns)
		if err != nil || len(first.GetAdd().GetAddrs()) != 1 {
			t.Errorf("Get after the bad requests = %v, %v; want web's one endpoint", first, err)
		}
	})

	t.Run("tap", func(t *testing.T) {
		huge := &tappb.TapByResourceRequest{Target: &tappb.Resource{Namespace: ns, Type: "deployment", Name: "web"}, Path: "/" + strings.Repeat("x", 200<<10), Limit: 1}
		_, err := tapclient.Watch(c, s.cluster.REST, huge)
		if !apierrors.IsRequestEntityTooLargeError(err) {
			t.Errorf("a 200 KiB tap request: %v, want 413", err)
		}
		rc := s.cluster.Client.Discovery().RESTClient()
		res := rc.Post().AbsPath("/apis/tap.sluice.io/v1alpha1/watch/namespaces", ns, "deployments", "web", "tap").
			SetHeader("Content-Type", "application/json").Body([]byte(`{"target": {"namespace": 7}`)).Do(c)
		var code int
		res.StatusCode(&code)
		if err := res.Error(); code != http.StatusBadRequest || err == nil {
			t.Errorf("a malformed tap request: HTTP %d, %v; want 400 with a message", code, err)
		}
		res = rc.Post().AbsPath("/apis/tap.sluice.io/v1alpha1/watch/namespaces", ns, "gadgets", "web", "tap").
			SetHeader("Content-Type", "application/json").Body([]byte(`{"target": {"namespace": "` + ns + `", "type": "gadget", "name": "web"}}`)).Do(c)
		if err := res.Error(); !apierrors.IsNotFound(err) {
			t.Errorf("tap of an unknown resource type: %v, want 404", err)
		}
		// Still tapping: one request through deploy/web.
		st, err := tapclient.Watch(c, s.cluster.REST, &tappb.TapByResourceRequest{Target: &tappb.Resource{Namespace: ns, Type: "deployment", Name: "web"}, Limit: 1})
		if err != nil {
			t.Fatalf("tap after the bad requests: %v", err)
		}
		defer st.Close()
		s.clientLoop(t, c, ns, "client", "http://web."+ns+".svc.cluster.local/", 200*time.Millisecond)
		n := 0
		for _, err := range st.All() {
			if err != nil {
				t.Fatalf("tap stream: %v", err)
			}
			n++
		}
		if n == 0 {
			t.Error("the tap after the bad requests saw nothing")
		}
	})

	t.Run("identity", func(t *testing.T) {
		client, _ := s.identityClient(t, c)
		pod := s.tokenPod(t, c, ns, "worker")
		id := meshmeta.IdentityName("worker", ns, meshmeta.DefaultTrustDomain)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := pki.NewCSR(id, key)
		if err != nil {
			t.Fatal(err)
		}
		// A token bound to a pod that is then deleted is dead: the closest
		// real thing to an expired token (the API server issues none that
		// expire in under 10 minutes).
		short := s.tokenPod(t, c, ns, "short-lived")
		tr, err := s.cluster.Client.CoreV1().ServiceAccounts(ns).CreateToken(c, "short-lived", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
			Audiences:         []string{meshmeta.IdentityAudience},
			ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: short.Name, UID: short.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		shortID := meshmeta.IdentityName("short-lived", ns, meshmeta.DefaultTrustDomain)
		shortCSR, err := pki.NewCSR(shortID, key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Certify(c, &identitypb.CertifyRequest{Identity: shortID, Token: []byte(tr.Status.Token), CertificateSigningRequest: shortCSR}); err != nil {
			t.Fatalf("Certify with the bound token while its pod lives: %v", err)
		}
		if err := s.cluster.Client.CoreV1().Pods(ns).Delete(c, short.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, c, "the token's pod to be gone", func(c context.Context) (bool, string, error) {
			_, err := s.cluster.Client.CoreV1().Pods(ns).Get(c, short.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), "still there", nil
		})
		// The API server checks a bound token's pod against its own cache,
		// which may lag the deletion by a moment.
		waitFor(t, c, "a token whose pod is gone to be refused", func(c context.Context) (bool, string, error) {
			_, err := client.Certify(c, &identitypb.CertifyRequest{Identity: shortID, Token: []byte(tr.Status.Token), CertificateSigningRequest: shortCSR})
			if err == nil {
				return false, "certified", nil
			}
			if st := status.Convert(err); st.Code() != codes.Unauthenticated {
				return false, "", fmt.Errorf("Certify with a token whose pod is gone: %v, want Unauthenticated", err)
			}
			return true, "", nil
		})
		for _, tc := range []struct {
			name string
			csr  []byte
		}{
			{"empty CSR", nil},
			{"garbage CSR", []byte{0x30, 0x82, 0xff, 0xff, 0x01}},
			{"huge CSR", make([]byte, 1<<20)},
		} {
			_, err := client.Certify(c, &identitypb.CertifyRequest{Identity: id, Token: s.podToken(t, pod, tokenVolume), CertificateSigningRequest: tc.csr})
			if st := status.Convert(err); st.Code() != codes.InvalidArgument && st.Code() != codes.ResourceExhausted {
				t.Errorf("%s: %v, want InvalidArgument (or ResourceExhausted for the size)", tc.name, err)
			}
		}
		if _, err := client.Certify(c, &identitypb.CertifyRequest{Identity: "not an identity", Token: s.podToken(t, pod, tokenVolume), CertificateSigningRequest: csr}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("a malformed identity: %v, want InvalidArgument", err)
		}
		if _, err := client.Certify(c, &identitypb.CertifyRequest{Identity: id, Token: s.podToken(t, pod, tokenVolume), CertificateSigningRequest: csr}); err != nil {
			t.Errorf("Certify after the bad requests: %v", err)
		}
	})
}

// firstUpdate opens a Get stream and returns its first message.
func firstUpdate(c context.Context, client destpb.DestinationClient, path, ns string) (*destpb.Update, error) {
	c, cancel := context.WithTimeout(c, 30*time.Second) // hang guard
	defer cancel()
	st, err := client.Get(c, &destpb.GetDestination{Scheme: "k8s", Path: path, ContextToken: contextToken(ns)})
	if err != nil {
		return nil, err
	}
	u, err := st.Recv()
	if errors.Is(c.Err(), context.DeadlineExceeded) {
		return nil, errors.New("no first update within 30 s")
	}
	return u, err
}
