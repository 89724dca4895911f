package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/sluice-mesh/sluice/controlplane/identity"
	"github.com/sluice-mesh/sluice/controlplane/metricsapi"
	mapi "github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
	"github.com/sluice-mesh/sluice/test/capture"
	"github.com/sluice-mesh/sluice/test/prometheustest"
	"github.com/sluice-mesh/sluice/test/proxytest"
)

// The bridge the cluster's pods are on (test/cluster's node 0).
const podBridge = "sluice0"

// secretBody is a request body that must never cross the wire in the clear.
const secretBody = "sluice-e2e: the plaintext of a known request body"

// TestMTLS: two meshed Deployments talk HTTP/1, gRPC and opaque TCP over
// mutual TLS with the identities of their service accounts. A capture on
// the node's bridge holds only TLS records between the two pods, and the
// known body nowhere; both proxies' metrics say tls="true" with the
// other's identity, and metrics-api's edges (over Debian's Prometheus
// scraping them) show the pair secured with both identities. An unmeshed client still reaches the meshed server in
// plaintext, labelled so; and a meshed client refuses a server whose
// certificate is for another identity than discovery says.
func TestMTLS(t *testing.T) {
	s := need(t)
	c := ctx(t, 5*time.Minute)
	ns := s.meshedNamespace(t, "mtls")
	for _, sa := range []string{"web", "client", "rogue"} {
		if _, err := s.cluster.Client.CoreV1().ServiceAccounts(ns).Create(c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	webID := meshmeta.IdentityName("web", ns, meshmeta.DefaultTrustDomain)
	clientID := meshmeta.IdentityName("client", ns, meshmeta.DefaultTrustDomain)

	// The server: HTTP and gRPC, and an opaque protocol on 7100.
	web := echoDeployment("web", 1)
	web.Spec.Template.Spec.ServiceAccountName = "web"
	web.Spec.Template.Annotations = map[string]string{meshmeta.AnnotationOpaquePorts: "7100"}
	web.Spec.Template.Spec.Containers[0] = corev1.Container{
		Name:  "app",
		Image: testappImage + ":1",
		Args:  []string{"serve", "--http", ":8080", "--grpc", ":9090", "--opaque", ":7100", "--name", "web"},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 1,
		},
	}
	svc := service("web")
	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "grpc", Port: 9090}, corev1.ServicePort{Name: "opaque", Port: 7100})
	if _, err := s.cluster.Client.CoreV1().Services(ns).Create(c, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.cluster.Client.AppsV1().Deployments(ns).Create(c, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitDeploymentReady(t, c, ns, "web")
	server := s.onlyPod(t, c, ns, "web")
	serverIP := netip.MustParseAddr(server.Status.PodIP)

	// Everything between the server pod and the other pods, from here on.
	capt, err := capture.Start(podBridge, "tcp and host "+serverIP.String(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			capt.Stop()
		}
	}()
	host := "web." + ns + ".svc.cluster.local"
	client := s.scriptPod(t, c, ns, "client", "client", true,
		fmt.Sprintf("%s http --url http://%s/echo --body %q --keepalive-requests 3", s.testapp, host, secretBody),
		fmt.Sprintf("%s grpc --addr %s:9090 --call unary --count 3", s.testapp, host),
		fmt.Sprintf("%s grpc --addr %s:9090 --call bidi --count 3", s.testapp, host),
		fmt.Sprintf("%s opaque --addr %s:7100 --frames 5", s.testapp, host),
	)
	lines := s.scriptOutput(t, c, ns, client.Name)
	ps, err := capt.Stop()
	stopped = true
	if err != nil {
		t.Fatal(err)
	}
	checkResults(t, lines, 3+3+1+1) // HTTP requests, unary calls, the bidi call, the opaque exchange
	clientIP := netip.MustParseAddr(client.Status.PodIP)

	t.Run("wire", func(t *testing.T) {
		flows, records, bytesSeen := 0, 0, 0
		opened := capture.Opened(ps)
		for f, stream := range capture.Streams(ps) {
			if bytes.Contains(stream, []byte(secretBody)) {
				t.Errorf("%s carries the request body in the clear", f)
			}
			if f.Src.Addr() != clientIP && f.Dst.Addr() != clientIP {
				continue // the kubelet's probes and the agent's steering probe
			}
			flows++
			if n, err := capture.TLSRecords(stream, opened[f]); err != nil {
				t.Errorf("%s (%d bytes) is not TLS: %v", f, len(stream), err)
			} else if n == 0 && f.Src.Addr() == clientIP {
				t.Errorf("%s: TLS without application data", f)
			} else {
				records += n
				bytesSeen += len(stream)
			}
		}
		t.Logf("%d packets captured on %s; %d flows between the client and the server pods, %d bytes, all TLS (%d application-data records); the body's plaintext in none",
			len(ps), podBridge, flows, bytesSeen, records)
		// HTTP and gRPC share a connection; opaque has its own: at least
		// two connections, both ways.
		if flows < 4 {
			t.Errorf("captured %d flows between the client and the server pods, want both directions of at least 2 connections (%d packets)", flows, len(ps))
		}
	})

	t.Run("metrics", func(t *testing.T) {
		cm := s.proxyMetrics(t, c, client)
		for _, name := range []string{"request_total", "tcp_open_total"} {
			if n := cm.Sum(name, proxytest.Labels{"direction": "outbound", "tls": "true", "server_id": webID}); n == 0 {
				t.Errorf("client proxy: no %s{direction=outbound,tls=true,server_id=%s}:\n%s", name, webID, cm.Format(name, nil))
			}
		}
		if n := cm.Sum("tcp_open_total", proxytest.Labels{"direction": "outbound", "tls": "true", "server_id": webID, "target_port": "7100"}); n == 0 {
			t.Errorf("client proxy: the opaque connection to 7100 was not TLS:\n%s", cm.Format("tcp_open_total", nil))
		}
		sm := s.proxyMetrics(t, c, server)
		if n := sm.Sum("request_total", proxytest.Labels{"direction": "inbound", "tls": "true", "client_id": clientID}); n < 7 {
			t.Errorf("server proxy: %v requests {direction=inbound,tls=true,client_id=%s}, want ≥ 7:\n%s", n, clientID, sm.Format("request_total", nil))
		}
		if n := sm.Sum("tcp_open_total", proxytest.Labels{"direction": "inbound", "tls": "true", "client_id": clientID, "target_port": "7100"}); n == 0 {
			t.Errorf("server proxy: the opaque connection came without TLS:\n%s", sm.Format("tcp_open_total", nil))
		}
	})

	t.Run("edges", func(t *testing.T) {
		// Debian's Prometheus scrapes both proxies with the labels the
		// chart's relabelling gives; metrics-api, on the cluster's API,
		// answers what `meshctl edges` shows.
		target := func(p *corev1.Pod) prometheustest.Target {
			return prometheustest.Target{Addr: netip.AddrPortFrom(netip.MustParseAddr(p.Status.PodIP), 4191).String(),
				Labels: map[string]string{"namespace": ns, "pod": p.Name}}
		}
		prom := prometheustest.Start(t, prometheustest.Options{Targets: []prometheustest.Target{target(client), target(server)}})
		ms, err := metricsapi.New(metricsapi.Config{PrometheusURL: prom.URL, Client: s.cluster.Client})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(ms.Handler())
		defer srv.Close()
		mc, err := mapi.NewClient(srv.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := mapi.Edge{Src: mapi.Resource{Namespace: ns, Kind: mapi.Pod, Name: client.Name}, Dst: mapi.Resource{Namespace: ns, Kind: mapi.Pod, Name: server.Name},
			ClientID: clientID, ServerID: webID, Secured: true}
		var got *mapi.EdgesResponse
		waitFor(t, c, "metrics-api's edges", func(c context.Context) (bool, string, error) {
			got, err = mc.Edges(c, mapi.EdgesRequest{Resource: mapi.Pod, Namespace: ns})
			if err != nil {
				return false, err.Error(), nil
			}
			return len(got.Edges) == 1 && got.Edges[0] == want, fmt.Sprintf("%+v", got.Edges), nil
		})
	})

	t.Run("unmeshed client", func(t *testing.T) {
		before := s.proxyMetrics(t, c, server).Sum("request_total", proxytest.Labels{"direction": "inbound", "tls": "no_identity"})
		p := s.scriptPod(t, c, ns, "plain", "default", false,
			fmt.Sprintf("%s http --url http://%s/echo --keepalive-requests 2", s.testapp, host))
		checkResults(t, s.scriptOutput(t, c, ns, p.Name), 2)
		sm := s.proxyMetrics(t, c, server)
		if after := sm.Sum("request_total", proxytest.Labels{"direction": "inbound", "tls": "no_identity", "client_id": proxytest.Absent}); after-before < 2 {
			t.Errorf("server proxy: %v plaintext requests labelled tls=no_identity, want 2 more:\n%s", after-before, sm.Format("request_total", nil))
		}
	})

	t.Run("wrong identity", func(t *testing.T) {
		s.rogueServer(t, c, ns, webID)
		p := s.scriptPod(t, c, ns, "victim", "client", true,
			fmt.Sprintf("%s http --url http://rogue.%s.svc.cluster.local/ --timeout 20s", s.testapp, ns))
		res := s.scriptOutput(t, c, ns, p.Name)
		var r struct {
			Status  int                 `json:"status"`
			Headers map[string][]string `json:"headers"`
			Err     string              `json:"err"`
		}
		if len(res) != 1 || json.Unmarshal([]byte(res[0]), &r) != nil {
			t.Fatalf("the client printed %q", res)
		}
		perr := strings.Join(r.Headers[http.CanonicalHeaderKey("sluice-proxy-error")], " ")
		if r.Status != http.StatusBadGateway || !strings.Contains(perr, "identity") || !strings.Contains(perr, webID) {
			t.Errorf("a request to a server with another identity's certificate got %d %q (%s), want 502 with a sluice-proxy-error naming the identity it presented (%s)", r.Status, perr, r.Err, webID)
		}
		m := s.proxyMetrics(t, c, p)
		if n := m.Sum("tls_handshake_errors_total", proxytest.Labels{"direction": "outbound", "reason": "identity_mismatch"}); n == 0 {
			t.Errorf("victim's proxy counted no identity_mismatch:\n%s", m.Format("tls_handshake_errors_total", nil))
		}
	})
}

// scriptPod runs the commands one after the other in a busybox pod (with
// the service account, meshed or not), then prints "done" and stays up so
// that its proxy can be asked for metrics. It returns the pod once it runs.
func (s *suite) scriptPod(t *testing.T, c context.Context, ns, name, sa string, meshed bool, cmds ...string) *corev1.Pod {
	t.Helper()
	script := strings.Join(cmds, "\n") + "\necho done\nexec sleep 3600\n"
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			ServiceAccountName:            sa,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers:                    []corev1.Container{{Name: "script", Image: busyboxImage, Args: []string{"sh", "-c", script}}},
		},
	}
	if !meshed {
		p.Annotations = map[string]string{meshmeta.AnnotationInject: meshmeta.InjectDisabled}
	}
	if _, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return s.waitPodRunning(t, c, ns, name)
}

// scriptOutput waits for a scriptPod's "done" and returns the lines it
// printed before.
func (s *suite) scriptOutput(t *testing.T, c context.Context, ns, name string) []string {
	t.Helper()
	var lines []string
	waitFor(t, c, name+"'s commands to finish", func(c context.Context) (bool, string, error) {
		out, err := s.cluster.Kubectl(c, "logs", "-n", ns, name, "-c", "script")
		if err != nil {
			return false, err.Error(), nil
		}
		lines = nil
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if sc.Text() == "done" {
				return true, "", nil
			}
			lines = append(lines, sc.Text())
		}
		return false, fmt.Sprintf("%d lines so far", len(lines)), nil
	})
	return lines
}

// checkResults checks that the testapp clients printed n results, none
// with an error or a failed status.
func checkResults(t *testing.T, lines []string, n int) {
	t.Helper()
	got := 0
	for _, l := range lines {
		var r struct {
			Status int    `json:"status"`
			Code   string `json:"code"` // gRPC: "OK" or the failure's code
			Err    string `json:"err"`
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Errorf("client printed a line that is not JSON: %q", l)
			continue
		}
		got++
		if r.Err != "" || (r.Status != 0 && r.Status != http.StatusOK) || (r.Code != "" && r.Code != "OK") {
			t.Errorf("client result failed: %s", l)
		}
	}
	if got != n {
		t.Errorf("clients printed %d results, want %d:\n%s", got, n, strings.Join(lines, "\n"))
	}
}

// proxyMetrics scrapes a meshed pod's proxy (its admin port is not steered).
func (s *suite) proxyMetrics(t *testing.T, c context.Context, p *corev1.Pod) proxytest.Metrics {
	t.Helper()
	req, _ := http.NewRequestWithContext(c, http.MethodGet, "http://"+netip.AddrPortFrom(netip.MustParseAddr(p.Status.PodIP), 4191).String()+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s's proxy: %v", p.Name, err)
	}
	defer resp.Body.Close()
	m, err := proxytest.ParseMetrics(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rogueServer runs, as service account rogue and marked meshed (so that
// discovery gives its endpoint rogue's identity), a TLS server that
// presents a valid mesh certificate for another identity (presents) — what
// a compromised or misconfigured pod would do — behind the Service rogue.
func (s *suite) rogueServer(t *testing.T, c context.Context, ns, presents string) {
	t.Helper()
	sec, err := s.cluster.Client.CoreV1().Secrets(cpNamespace).Get(c, identity.IssuerSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := s.cluster.Client.CoreV1().ConfigMaps(cpNamespace).Get(c, identity.TrustRootsConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := pki.LoadIssuer(sec.Data[identity.IssuerCertKey], sec.Data[identity.IssuerKeyKey], []byte(roots.Data[identity.TrustRootsKey]), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := iss.Sign(key.Public(), presents, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// The issuer's chain goes in a file of its own: s_server sends only
	// -cert's first certificate, and -cert_chain's certificates after it.
	var chain bytes.Buffer
	for _, ca := range iss.Chain() {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: ca})
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "rogue-tls"},
		Data: map[string][]byte{
			"tls.crt":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}),
			"chain.crt": chain.Bytes(),
			"tls.key":   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		},
	}
	if _, err := s.cluster.Client.CoreV1().Secrets(ns).Create(c, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        "rogue",
			Labels:      map[string]string{"app": "rogue", meshmeta.LabelControlPlaneNS: cpNamespace},
			Annotations: map[string]string{meshmeta.AnnotationInject: meshmeta.InjectDisabled},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName:            "rogue",
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name:         "tls",
				Image:        opensslImage,
				Args:         []string{"s_server", "-accept", "8080", "-cert", "/tls/tls.crt", "-cert_chain", "/tls/chain.crt", "-key", "/tls/tls.key", "-tls1_3", "-www", "-quiet"},
				Ports:        []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				VolumeMounts: []corev1.VolumeMount{{Name: "tls", MountPath: "/tls", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "tls", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "rogue-tls"}}}},
		},
	}
	if _, err := s.cluster.Client.CoreV1().Pods(ns).Create(c, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rogue := s.waitPodRunning(t, c, ns, "rogue")
	if _, err := s.cluster.Client.CoreV1().Services(ns).Create(c, service("rogue"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The server answers TLS before any client is pointed at it.
	waitFor(t, c, "the rogue TLS server", func(c context.Context) (bool, string, error) {
		conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(netip.MustParseAddr(rogue.Status.PodIP), 8080).String(), time.Second)
		if err != nil {
			return false, err.Error(), nil
		}
		conn.Close()
		return true, "", nil
	})
}
