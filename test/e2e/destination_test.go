package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	destpb "github.com/sluice-mesh/sluice/controlplane/api/destination"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// TestDestination: the destination service, installed by the chart,
// streams the endpoints of a meshed Deployment's Service while it scales
// 1→10→0 and rolls, each with the pod's metric labels, its TLS identity
// and the h2 hint; a service that does not exist is answered at once.
func TestDestination(t *testing.T) {
	s := need(t)
	c := ctx(t, 8*time.Minute)
	ns := s.meshedNamespace(t, "dst")
	s.deployEcho(t, c, ns, "web", 1)
	client := s.destinationClient(t, c)

	t.Run("nonexistent", func(t *testing.T) {
		c, cancel := context.WithTimeout(c, 30*time.Second) // hang guard
		defer cancel()
		st, err := client.Get(c, &destpb.GetDestination{Scheme: "k8s", Path: "nope." + ns + ".svc.cluster.local:80", ContextToken: contextToken(ns)})
		if err != nil {
			t.Fatal(err)
		}
		u, err := st.Recv()
		if err != nil {
			t.Fatalf("no first update for a service that does not exist: %v", err)
		}
		if ne := u.GetNoEndpoints(); ne == nil || ne.Exists {
			t.Fatalf("first update %v, want no_endpoints{exists: false}", u)
		}
	})

	w := watchDestination(t, c, client, "web."+ns+".svc.cluster.local:80", ns)
	// wantPods returns the pods the stream must hold, given the ready ones,
	// or false when the Deployment is not there yet.
	expect := func(what string, wantPods func([]corev1.Pod) ([]corev1.Pod, bool)) {
		t.Helper()
		waitFor(t, c, what, func(c context.Context) (bool, string, error) {
			var ready []corev1.Pod
			for _, p := range s.pods(t, c, ns, map[string]string{"app": "web"}) {
				if p.DeletionTimestamp == nil && podReady(&p) {
					ready = append(ready, p)
				}
			}
			want, ok := wantPods(ready)
			if !ok {
				return false, fmt.Sprintf("%d pods ready", len(ready)), nil
			}
			return w.matches(ns, want)
		})
	}
	all := func(ps []corev1.Pod) ([]corev1.Pod, bool) { return ps, true }

	expect("the stream to hold deploy/web's one pod", all)
	for _, n := range []int32{10, 0} {
		s.scale(t, c, ns, "web", n)
		s.waitDeploymentReady(t, c, ns, "web")
		expect(fmt.Sprintf("the stream to hold deploy/web's %d pods", n), func(ps []corev1.Pod) ([]corev1.Pod, bool) {
			return ps, len(ps) == int(n)
		})
	}
	if !w.sawNoEndpoints() {
		t.Error("scaled to 0, the stream said no_endpoints{exists: true} at no point")
	}

	// A rolling update of 3 pods: at the end the stream holds exactly the
	// new pods, whose template hash differs.
	s.scale(t, c, ns, "web", 3)
	s.waitDeploymentReady(t, c, ns, "web")
	old := map[types.UID]bool{}
	for _, p := range s.pods(t, c, ns, map[string]string{"app": "web"}) {
		old[p.UID] = true
	}
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"e2e/rolled":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	if _, err := s.cluster.Client.AppsV1().Deployments(ns).Patch(c, "web", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	s.waitDeploymentReady(t, c, ns, "web")
	expect("the stream to hold the 3 rolled pods only", func(ps []corev1.Pod) ([]corev1.Pod, bool) {
		for _, p := range ps {
			if old[p.UID] {
				return nil, false
			}
		}
		return ps, len(ps) == 3
	})
}

// destinationClient dials the destination service through its Service's
// cluster IP.
func (s *suite) destinationClient(t *testing.T, c context.Context) destpb.DestinationClient {
	t.Helper()
	svc, err := s.cluster.Client.CoreV1().Services(cpNamespace).Get(c, meshmeta.DestinationService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(net.JoinHostPort(svc.Spec.ClusterIP, fmt.Sprint(meshmeta.DestinationPort)), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return destpb.NewDestinationClient(conn)
}

func contextToken(ns string) string {
	b, _ := json.Marshal(map[string]string{"ns": ns})
	return string(b)
}

// scale sets a Deployment's replicas.
func (s *suite) scale(t *testing.T, c context.Context, ns, name string, n int32) {
	t.Helper()
	sc, err := s.cluster.Client.AppsV1().Deployments(ns).GetScale(c, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sc.Spec.Replicas = n
	if _, err := s.cluster.Client.AppsV1().Deployments(ns).UpdateScale(c, name, sc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// destWatch is one Get stream's view: the endpoints it holds now.
type destWatch struct {
	mu       sync.Mutex
	addrs    map[netip.AddrPort]*destpb.WeightedAddr
	setLabel map[string]string
	noEnds   bool // a no_endpoints{exists: true} arrived
	err      error
}

// watchDestination opens a Get stream for path and applies its updates
// until the test ends.
func watchDestination(t *testing.T, c context.Context, client destpb.DestinationClient, path, ns string) *destWatch {
	t.Helper()
	st, err := client.Get(c, &destpb.GetDestination{Scheme: "k8s", Path: path, ContextToken: contextToken(ns)})
	if err != nil {
		t.Fatal(err)
	}
	w := &destWatch{addrs: map[netip.AddrPort]*destpb.WeightedAddr{}}
	go func() {
		for {
			u, err := st.Recv()
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			switch {
			case u.GetAdd() != nil:
				w.setLabel = u.GetAdd().GetMetricLabels()
				for _, a := range u.GetAdd().GetAddrs() {
					w.addrs[addrPort(a.GetAddr().GetIp(), a.GetAddr().GetPort())] = a
				}
			case u.GetRemove() != nil:
				for _, a := range u.GetRemove().GetAddrs() {
					delete(w.addrs, addrPort(a.GetIp(), a.GetPort()))
				}
			case u.GetNoEndpoints() != nil:
				clear(w.addrs)
				w.noEnds = w.noEnds || u.GetNoEndpoints().Exists
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func addrPort(ip []byte, port uint32) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

func (w *destWatch) sawNoEndpoints() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.noEnds
}

// matches reports whether the stream holds exactly the pods' endpoints
// on 8080, each described as discovery must:
// labels, identity and hint.
func (w *destWatch) matches(ns string, want []corev1.Pod) (bool, string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return false, "", fmt.Errorf("destination stream ended: %w", w.err)
	}
	var have []string
	for ap := range w.addrs {
		have = append(have, ap.String())
	}
	sort.Strings(have)
	status := fmt.Sprintf("stream holds %d endpoints %v", len(have), have)
	if len(want) != len(w.addrs) {
		return false, status, nil
	}
	for _, p := range want {
		a, ok := w.addrs[netip.AddrPortFrom(netip.MustParseAddr(p.Status.PodIP), 8080)]
		if !ok {
			return false, status + "; missing " + p.Name, nil
		}
		if problem := describeMismatch(a, &p, ns); problem != "" {
			return false, "", fmt.Errorf("endpoint of %s: %s", p.Name, problem)
		}
	}
	if w.setLabel["namespace"] != ns || w.setLabel["service"] != "web" {
		return false, "", fmt.Errorf("the set's labels are %v, want namespace=%s service=web", w.setLabel, ns)
	}
	return true, status, nil
}

// describeMismatch says what is wrong with a as the endpoint of pod p, or
// "" when nothing is.
func describeMismatch(a *destpb.WeightedAddr, p *corev1.Pod, ns string) string {
	var problems []string
	for k, v := range map[string]string{
		"pod":               p.Name,
		"deployment":        "web",
		"serviceaccount":    "default",
		"pod_template_hash": p.Labels["pod-template-hash"],
	} {
		if got := a.GetMetricLabels()[k]; got != v {
			problems = append(problems, fmt.Sprintf("label %s=%q, want %q", k, got, v))
		}
	}
	if got, want := a.GetTlsIdentity().GetDnsLikeIdentity(), meshmeta.IdentityName("default", ns, meshmeta.DefaultTrustDomain); got != want {
		problems = append(problems, fmt.Sprintf("identity %q, want %q", got, want))
	}
	if a.GetProtocolHint().GetH2() == nil {
		problems = append(problems, "no h2 protocol hint for a meshed pod")
	}
	slices.Sort(problems)
	return strings.Join(problems, "; ")
}
