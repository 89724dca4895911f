// Package proxy tests sluice-proxy end to end: real clients (Go's net/http,
// curl, h2load, grpc-go, gorilla/websocket, raw TCP and an unknown binary
// protocol) in one netns pod talk to a real application in another, each
// pod with its own sluice-proxy steered by the real node agent, in eBPF mode
// and in iptables mode. Every test checks the bytes that arrive and the
// metrics both proxies export.
package proxy

import (
	"fmt"
	"maps"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/proxytest"
)

// Ports of the server app.
const (
	httpPort   = 8080
	grpcPort   = 9090
	echoPort   = 7000
	opaquePort = 7100
)

// env is a mesh with a client pod and a server pod running the app, with
// discovery mapping web:8080 and web:9090 (and, for opaque TCP, the server
// pod's address on the echo and opaque ports) to the server pod.
type env struct {
	mode           api.Mode
	mesh           *proxytest.Mesh
	client, server *proxytest.MeshedPod
	app            *proxytest.App
}

// eachMode runs fn as subtests "ebpf" and "iptables", each on its own mesh
// whose pods get po.
func eachMode(t *testing.T, po proxytest.PodOptions, fn func(t *testing.T, e *env)) {
	for _, mode := range []api.Mode{api.ModeEBPF, api.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) {
			fn(t, newEnv(t, mode, po))
		})
	}
}

func newEnv(t *testing.T, mode api.Mode, po proxytest.PodOptions) *env {
	t.Helper()
	return newEnvWith(t, proxytest.Options{Mode: mode}, po, po)
}

// newEnvWith is newEnv on a mesh made with o, whose server and client pods
// get their own options.
func newEnvWith(t *testing.T, o proxytest.Options, serverPO, clientPO proxytest.PodOptions) *env {
	t.Helper()
	m := proxytest.Start(t, o)
	e := &env{mode: m.Mode, mesh: m}
	e.server = m.AddPod(t, "server", serverPO)
	e.client = m.AddPod(t, "client", clientPO)
	e.app = e.server.App(t, "--http", ":"+strconv.Itoa(httpPort), "--grpc", ":"+strconv.Itoa(grpcPort),
		"--tcp-echo", ":"+strconv.Itoa(echoPort), "--opaque", ":"+strconv.Itoa(opaquePort), "--name", "web-1")
	m.Dest.Set(proxytest.ServicePath("web", httpPort), e.server.Endpoint(httpPort, "web"))
	m.Dest.Set(proxytest.ServicePath("web", grpcPort), e.server.Endpoint(grpcPort, "web"))
	for _, port := range []int{echoPort, opaquePort} {
		ep := e.server.Endpoint(uint16(port), "web")
		ep.H2, ep.Opaque = false, true
		m.Dest.Set(e.serverAddr(port), ep)
	}
	return e
}

// serverAddr is the server pod's IPv4 address and port.
func (e *env) serverAddr(port int) string {
	return net.JoinHostPort(e.server.IPv4().String(), strconv.Itoa(port))
}

// authority is the service's name with a port, as the clients send it.
func authority(port int) string { return "web:" + strconv.Itoa(port) }

// dstLabels are the dst_* labels the outbound proxy takes from discovery
// for the server pod.
func (e *env) dstLabels() proxytest.Labels {
	return proxytest.Labels{"dst_namespace": proxytest.Namespace, "dst_service": "web", "dst_pod": "server",
		"dst_deployment": "web", "dst_serviceaccount": "web"}
}

// outHTTP are the labels of the client proxy's series for requests to the
// web service on port.
func (e *env) outHTTP(port int) proxytest.Labels {
	l := e.dstLabels()
	l["direction"], l["authority"], l["target_addr"] = "outbound", authority(port), e.serverAddr(port)
	l["target_ip"], l["target_port"] = e.server.IPv4().String(), strconv.Itoa(port)
	return l
}

// inHTTP are the labels of the server proxy's series for requests to port
// with authority.
func (e *env) inHTTP(port int, authority string) proxytest.Labels {
	return proxytest.Labels{"direction": "inbound", "authority": authority, "target_addr": e.serverAddr(port),
		"target_ip": e.server.IPv4().String(), "target_port": strconv.Itoa(port)}
}

// tcpLabels are the labels of TCP series of direction and peer whose
// target is the server pod's port.
func (e *env) tcpLabels(direction, peer string, port int) proxytest.Labels {
	return proxytest.Labels{"direction": direction, "peer": peer, "target_addr": e.serverAddr(port)}
}

// with returns a copy of l with more labels.
func with(l proxytest.Labels, kv ...string) proxytest.Labels {
	more := proxytest.Labels{}
	for i := 0; i+1 < len(kv); i += 2 {
		more[kv[i]] = kv[i+1]
	}
	return merge(l, more)
}

// merge returns the labels of a and b (b wins).
func merge(a, b proxytest.Labels) proxytest.Labels {
	out := proxytest.Labels{}
	maps.Copy(out, a)
	maps.Copy(out, b)
	return out
}

// expectation is a change of a metric between two scrapes of one proxy.
type expectation struct {
	name   string
	labels proxytest.Labels
	op     string // "==", ">=" or "<="
	delta  float64
}

func eq(name string, l proxytest.Labels, d float64) expectation { return expectation{name, l, "==", d} }
func ge(name string, l proxytest.Labels, d float64) expectation { return expectation{name, l, ">=", d} }
func le(name string, l proxytest.Labels, d float64) expectation { return expectation{name, l, "<=", d} }

// snapshot is a scrape of both proxies before an exchange.
type snapshot struct {
	e              *env
	client, server proxytest.Metrics
}

func (e *env) snapshot(t *testing.T) snapshot {
	t.Helper()
	return snapshot{e: e, client: e.client.Metrics(t), server: e.server.Metrics(t)}
}

// expect waits until every expectation holds on pod's metrics, compared
// with the snapshot, and fails t naming the ones that never do.
func (s snapshot) expect(t *testing.T, pod *proxytest.MeshedPod, exps ...expectation) proxytest.Metrics {
	t.Helper()
	before := s.client
	if pod == s.e.server {
		before = s.server
	}
	return pod.Eventually(t, func(m proxytest.Metrics) error {
		var bad []string
		for _, x := range exps {
			d := m.Sum(x.name, x.labels) - before.Sum(x.name, x.labels)
			ok := false
			switch x.op {
			case "==":
				ok = d == x.delta
			case ">=":
				ok = d >= x.delta
			case "<=":
				ok = d <= x.delta
			}
			if !ok {
				bad = append(bad, fmt.Sprintf("%s%s moved by %g, want %s %g; now:\n%s", x.name, x.labels, d, x.op, x.delta,
					indent(m.Format(x.name, near(x.labels)))))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("%d of %d expectations unmet:\n%s", len(bad), len(exps), strings.Join(bad, "\n"))
		}
		return nil
	})
}

// near narrows a failed query to what helps to see: its direction, peer
// and bucket.
func near(l proxytest.Labels) proxytest.Labels {
	n := proxytest.Labels{}
	for _, k := range []string{"direction", "peer", "le"} {
		if v, ok := l[k]; ok {
			n[k] = v
		}
	}
	return n
}

func indent(s string) string {
	if len(s) > 6000 {
		s = s[:6000] + "...\n"
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// httpOK are the expectations of n successful HTTP requests of status
// code through both proxies: the client's outbound series with dst_*
// labels and the server's inbound series.
func (e *env) httpOK(t *testing.T, s snapshot, port int, code string, n float64) {
	t.Helper()
	out, in := e.outHTTP(port), e.inHTTP(port, authority(port))
	s.expect(t, e.client,
		eq("request_total", out, n),
		eq("response_total", with(out, "status_code", code, "classification", "success"), n),
		eq("response_total", with(out, "classification", "failure"), 0),
		eq("response_latency_ms_bucket", with(out, "status_code", code, "le", "+Inf"), n),
		eq("response_latency_ms_count", with(out, "status_code", code), n),
	)
	s.expect(t, e.server,
		eq("request_total", in, n),
		eq("response_total", with(in, "status_code", code, "classification", "success"), n),
		eq("response_total", with(in, "classification", "failure"), 0),
		eq("response_latency_ms_bucket", with(in, "status_code", code, "le", "+Inf"), n),
	)
}
