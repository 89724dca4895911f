package tap_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	tappb "github.com/sluice-mesh/sluice/controlplane/api/tap"
	"github.com/sluice-mesh/sluice/controlplane/tap/tapapi"
	"github.com/sluice-mesh/sluice/controlplane/tap/taptest"
)

// hangGuard bounds every wait of these tests; reaching it is a failure.
const hangGuard = 10 * time.Second

const base = "/apis/tap.sluice.io/v1alpha1"

// The pods of the fixture, by IP.
var (
	ipWeb1   = netip.MustParseAddr("10.0.0.1")
	ipWeb2   = netip.MustParseAddr("10.0.0.2")
	ipWeb3   = netip.MustParseAddr("10.0.0.3") // web, not meshed
	ipDB1    = netip.MustParseAddr("10.0.1.1")
	ipClient = netip.MustParseAddr("10.0.2.1") // not meshed, no owner
	ipSolo   = netip.MustParseAddr("10.0.3.1") // meshed, no owner
	ipCron   = netip.MustParseAddr("10.0.4.1") // meshed, of job nightly-1 of cronjob nightly
	ipGhost  = netip.MustParseAddr("10.0.9.9") // meshed, no proxy answers
)

func deployment(ns, name string, sel map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: sel}},
	}
}

// fixture returns the objects of namespace shop: deployments web (two
// meshed pods, one unmeshed, one pending), db (one meshed pod) and legacy
// (unmeshed pods only); a meshed bare pod solo; an unmeshed client pod;
// the service web-svc selecting web's pods; the cronjob nightly with its
// job's meshed pod; in namespace other, the deployment ghost whose meshed
// pod's proxy does not answer.
func fixture() []runtime.Object {
	pending := taptest.Pod("shop", "web-4", "", true, map[string]string{"app": "web"})
	pending.Status.Phase = corev1.PodPending
	cronPod := taptest.Pod("shop", "nightly-1-x", ipCron.String(), true, map[string]string{"job-name": "nightly-1"})
	isController := true
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "nightly-1", OwnerReferences: []metav1.OwnerReference{
			{APIVersion: "batch/v1", Kind: "CronJob", Name: "nightly", UID: "cj-uid", Controller: &isController},
		}},
		Spec: batchv1.JobSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"job-name": "nightly-1"}}},
	}
	return []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
		deployment("shop", "web", map[string]string{"app": "web"}),
		deployment("shop", "db", map[string]string{"app": "db"}),
		deployment("shop", "legacy", map[string]string{"app": "legacy"}),
		deployment("other", "ghost", map[string]string{"app": "ghost"}),
		taptest.Pod("shop", "web-1", ipWeb1.String(), true, map[string]string{"app": "web"}),
		taptest.Pod("shop", "web-2", ipWeb2.String(), true, map[string]string{"app": "web"}),
		taptest.Pod("shop", "web-3", ipWeb3.String(), false, map[string]string{"app": "web"}),
		pending,
		taptest.Pod("shop", "db-1", ipDB1.String(), true, map[string]string{"app": "db"}),
		taptest.Pod("shop", "legacy-1", "10.0.5.1", false, map[string]string{"app": "legacy"}),
		taptest.Pod("shop", "client-1", ipClient.String(), false, map[string]string{"app": "client"}),
		taptest.Pod("shop", "solo", ipSolo.String(), true, nil),
		cronPod,
		job,
		&batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "nightly", UID: "cj-uid"}},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-svc"},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}},
		},
		taptest.Pod("other", "ghost-1", ipGhost.String(), true, map[string]string{"app": "ghost"}),
	}
}

// proxies returns a fake proxy for each meshed running pod of the fixture
// but ghost.
func proxies(t *testing.T) map[netip.Addr]*taptest.Proxy {
	m := map[netip.Addr]*taptest.Proxy{}
	for _, ip := range []netip.Addr{ipWeb1, ipWeb2, ipDB1, ipSolo, ipCron} {
		m[ip] = taptest.NewProxy(t)
	}
	return m
}

// newEnv returns an Env over the fixture with proxies.
func newEnv(t *testing.T, px map[netip.Addr]*taptest.Proxy, o taptest.Options) *taptest.Env {
	o.Objects = fixture()
	o.Proxies = px
	return taptest.NewEnv(t, o)
}

// call is a request straight to the tap service, as the aggregator makes
// it.
type call struct {
	method      string
	path        string
	body        []byte
	contentType string
	accept      string
	user        string
	groups      []string
	header      http.Header
	cert        *tls.Certificate // nil: the env's front-proxy certificate
	noCert      bool
}

// do makes c against env's server; the response's body is closed at the
// end of the test.
func do(t *testing.T, ctx context.Context, env *taptest.Env, c call) *http.Response {
	t.Helper()
	if c.method == "" {
		c.method = http.MethodPost
	}
	req, err := http.NewRequestWithContext(ctx, c.method, env.Server.URL+c.path, bytes.NewReader(c.body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for k, vs := range c.header {
		req.Header[k] = vs
	}
	if c.contentType != "" {
		req.Header.Set("Content-Type", c.contentType)
	}
	if c.accept != "" {
		req.Header.Set("Accept", c.accept)
	}
	if c.user != "" {
		req.Header.Set("X-Remote-User", c.user)
	}
	for _, g := range c.groups {
		req.Header.Add("X-Remote-Group", g)
	}
	cert := c.cert
	if cert == nil && !c.noCert {
		cert = &env.FrontProxyCert
	}
	resp, err := env.HTTPClient(t, cert).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// protoBody encodes req as protobuf.
func protoBody(t *testing.T, req *tappb.TapByResourceRequest) []byte {
	t.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

// jsonBody encodes req as protojson.
func jsonBody(t *testing.T, req *tappb.TapByResourceRequest) []byte {
	t.Helper()
	b, err := protojson.Marshal(req)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return b
}

// status decodes a Status answer and checks its code.
func status(t *testing.T, resp *http.Response, code int) metav1.Status {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != code {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, code, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var st metav1.Status
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("decode Status %s: %v", b, err)
	}
	if st.Kind != "Status" || st.APIVersion != "v1" || st.Status != metav1.StatusFailure || st.Code != int32(code) {
		t.Errorf("Status %+v, want kind Status, v1, Failure, code %d", st, code)
	}
	return st
}

// eventReader reads a tap response's events in either format.
type eventReader struct {
	t    *testing.T
	r    *bufio.Reader
	json bool
}

func newEventReader(t *testing.T, resp *http.Response) *eventReader {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d, want 200; body %s", resp.StatusCode, b)
	}
	ct := resp.Header.Get("Content-Type")
	switch ct {
	case tapapi.StreamJSON, tapapi.StreamProtobuf:
	default:
		t.Fatalf("Content-Type %q, want %s or %s", ct, tapapi.StreamJSON, tapapi.StreamProtobuf)
	}
	return &eventReader{t: t, r: bufio.NewReader(resp.Body), json: ct == tapapi.StreamJSON}
}

// read reads the next event; io.EOF at the end of the stream.
func (er *eventReader) read() (*tappb.TapEvent, error) {
	ev := &tappb.TapEvent{}
	if !er.json {
		return ev, protodelim.UnmarshalFrom(er.r, ev)
	}
	line, err := er.r.ReadBytes('\n')
	if errors.Is(err, io.EOF) && len(line) == 0 {
		return nil, io.EOF
	}
	if err != nil {
		return nil, err
	}
	return ev, protojson.Unmarshal(line, ev)
}

// next returns the next event, or nil at the end of the stream; it fails
// the test on a broken stream or when nothing comes within the hang guard.
func (er *eventReader) next() *tappb.TapEvent {
	er.t.Helper()
	type res struct {
		ev  *tappb.TapEvent
		err error
	}
	ch := make(chan res, 1)
	go func() {
		ev, err := er.read()
		ch <- res{ev, err}
	}()
	select {
	case r := <-ch:
		if errors.Is(r.err, io.EOF) {
			return nil
		}
		if r.err != nil {
			er.t.Fatalf("read event: %v", r.err)
		}
		return r.ev
	case <-time.After(hangGuard):
		er.t.Fatal("no event within the hang guard")
		return nil
	}
}

// addr returns ip:port.
func addr(ip netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(ip, port) }

// labelsOf returns an endpoint's labels without nil.
func labelsOf(m *tappb.TapEvent_EndpointMeta) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m.GetLabels()
}
