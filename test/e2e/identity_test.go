package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	identitypb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/controlplane/identity"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// tokenVolume is the projected service-account token volume of the test
// pods, with the identity service's audience (what the injector adds).
const tokenVolume = "sluice-identity-token"

// TestIdentity: the identity service, installed by the chart, issues a
// certificate for the projected token of a real pod and refuses a forged
// token, a token with another audience, a token of another service
// account, and a CSR with an extra name.
func TestIdentity(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.namespace(t, "identity", nil)
	web := s.tokenPod(t, c, ns, "web")
	db := s.tokenPod(t, c, ns, "db")
	webToken := s.podToken(t, web, tokenVolume)
	dbToken := s.podToken(t, db, tokenVolume)

	client, anchors := s.identityClient(t, c)
	id := meshmeta.IdentityName("web", ns, meshmeta.DefaultTrustDomain)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(id, key)
	if err != nil {
		t.Fatal(err)
	}

	resp, err := client.Certify(c, &identitypb.CertifyRequest{Identity: id, Token: webToken, CertificateSigningRequest: csr})
	if err != nil {
		t.Fatalf("Certify with web's pod token: %v", err)
	}
	leaf := checkLeaf(t, resp, anchors, id, key.Public())
	// The suite installs the chart with identity.certLifetime = certLifetime.
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < certLifetime || got > certLifetime+time.Minute {
		t.Errorf("certificate lasts %s, want the chart's identity.certLifetime %s (plus the clock-skew allowance)", got, certLifetime)
	}

	// A token with the API server's default audience, for the same pod.
	apiToken, err := s.cluster.Client.CoreV1().ServiceAccounts(ns).CreateToken(c, "web", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: web.Name, UID: web.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	extraSAN, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{id, "api.example.com"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		token    []byte
		csr      []byte
		code     codes.Code
		contains string
	}{
		{"tampered token", tamper(t, webToken), csr, codes.Unauthenticated, ""},
		{"self-signed token", selfSigned(t, webToken), csr, codes.Unauthenticated, ""},
		{"token with the default audience", []byte(apiToken.Status.Token), csr, codes.Unauthenticated, ""},
		{"token of another service account", dbToken, csr, codes.PermissionDenied, "serviceaccount " + ns + "/db"},
		{"CSR with an extra name", webToken, extraSAN, codes.InvalidArgument, "api.example.com"},
		{"garbage CSR", webToken, []byte("not a CSR"), codes.InvalidArgument, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.Certify(c, &identitypb.CertifyRequest{Identity: id, Token: tc.token, CertificateSigningRequest: tc.csr})
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.contains) {
				t.Errorf("Certify = %v (%s), want %v with a message containing %q", st.Code(), st.Message(), tc.code, tc.contains)
			}
		})
	}
	// The refusals broke nothing: web still gets its certificate.
	resp, err = client.Certify(c, &identitypb.CertifyRequest{Identity: id, Token: webToken, CertificateSigningRequest: csr})
	if err != nil {
		t.Fatalf("Certify after the refusals: %v", err)
	}
	checkLeaf(t, resp, anchors, id, key.Public())
}

// checkLeaf checks that resp holds a leaf for id with key pub that
// verifies against the anchors through the returned intermediates, valid
// until valid_until.
func checkLeaf(t *testing.T, resp *identitypb.CertifyResponse, anchors []byte, id string, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	leaf, err := x509.ParseCertificate(resp.LeafCertificate)
	if err != nil {
		t.Fatalf("leaf: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(anchors) {
		t.Fatal("no anchors in the trust roots")
	}
	inter := x509.NewCertPool()
	for _, der := range resp.IntermediateCertificates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatalf("intermediate: %v", err)
		}
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: id, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("leaf does not verify for %s (usage %v): %v", id, usage, err)
		}
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != id {
		t.Errorf("leaf names %v, want only %s", leaf.DNSNames, id)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !k.Equal(pub) {
		t.Error("leaf does not carry the CSR's key")
	}
	if !resp.ValidUntil.AsTime().Equal(leaf.NotAfter) {
		t.Errorf("valid_until %s, leaf's NotAfter %s", resp.ValidUntil.AsTime(), leaf.NotAfter)
	}
	return leaf
}

// identityClient dials the identity service through its Service's cluster
// IP (kube-proxy translates it on this node too) with TLS for its own
// identity, and returns the trust anchors from the chart's ConfigMap.
func (s *suite) identityClient(t *testing.T, c context.Context) (identitypb.IdentityClient, []byte) {
	t.Helper()
	cm, err := s.cluster.Client.CoreV1().ConfigMaps(cpNamespace).Get(c, identity.TrustRootsConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	anchors := []byte(cm.Data[identity.TrustRootsKey])
	svc, err := s.cluster.Client.CoreV1().Services(cpNamespace).Get(c, meshmeta.IdentityService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := pki.ClientTLSConfig(anchors, meshmeta.IdentityName(meshmeta.IdentityService, cpNamespace, meshmeta.DefaultTrustDomain))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(net.JoinHostPort(svc.Spec.ClusterIP, fmt.Sprint(meshmeta.IdentityPort)), grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return identitypb.NewIdentityClient(conn), anchors
}

// tokenPod creates a service account and a pod running as it with a
// projected token for the identity service's audience, and waits until it
// runs.
func (s *suite) tokenPod(t *testing.T, c context.Context, ns, name string) *corev1.Pod {
	t.Helper()
	if _, err := s.cluster.Client.CoreV1().ServiceAccounts(ns).Create(c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		// Not meshed: the pod stands for a proxy itself (and the injector
		// would refuse its sluice-identity-token volume as a conflict).
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{meshmeta.AnnotationInject: meshmeta.InjectDisabled}},
		Spec: corev1.PodSpec{
			ServiceAccountName:            name,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name:         "app",
				Image:        busyboxImage,
				Args:         []string{"sleep", "3600"},
				VolumeMounts: []corev1.VolumeMount{{Name: tokenVolume, MountPath: "/var/run/secrets/tokens", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{
				Name: tokenVolume,
				VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
					ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: meshmeta.IdentityAudience, ExpirationSeconds: ptr.To[int64](3600), Path: "token"},
				}}}},
			}},
		},
	}
	pod, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s.waitPodRunning(t, c, ns, pod.Name)
}

// waitPodRunning waits until the pod runs and returns it.
func (s *suite) waitPodRunning(t *testing.T, c context.Context, ns, name string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, c, "pod "+ns+"/"+name+" to run", func(c context.Context) (bool, string, error) {
		var err error
		pod, err = s.cluster.Client.CoreV1().Pods(ns).Get(c, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
			return false, "", fmt.Errorf("pod ended: %s %s", pod.Status.Phase, pod.Status.Message)
		}
		return pod.Status.Phase == corev1.PodRunning, string(pod.Status.Phase), nil
	})
	return pod
}

// podToken reads the token the kubelet projected into the pod's volume.
func (s *suite) podToken(t *testing.T, pod *corev1.Pod, volume string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kubeletRoot, "pods", string(pod.UID), "volumes", "kubernetes.io~projected", volume, "token"))
	if err != nil {
		t.Fatalf("read the projected token of %s: %v", pod.Name, err)
	}
	return b
}

// kubeletRoot is the kubelet's root directory in test/cluster's cluster.
const kubeletRoot = "/var/lib/sluice-cluster/kubelet"

// tamper changes the subject in a JWT's payload and keeps its signature.
func tamper(t *testing.T, token []byte) []byte {
	t.Helper()
	parts := strings.Split(string(token), ".")
	if len(parts) != 3 {
		t.Fatalf("token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	claims["exp"] = time.Now().Add(100 * 24 * time.Hour).Unix()
	b, _ := json.Marshal(claims)
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return []byte(strings.Join(parts, "."))
}

// selfSigned returns the token's claims signed by a key of our own.
func selfSigned(t *testing.T, token []byte) []byte {
	t.Helper()
	parts := strings.Split(string(token), ".")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	head := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","kid":"forged"}`))
	signed := head + "." + parts[1]
	sum := sha256.Sum256([]byte(signed))
	r, sgn, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(r.FillBytes(make([]byte, 32)), sgn.FillBytes(make([]byte, 32))...)
	return []byte(signed + "." + base64.RawURLEncoding.EncodeToString(sig))
}
