package proxybehavior

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest"
)

// echoPort is where the identity tests' server app echoes TCP.
const echoPort = 7000

// identityEnv is a mesh with an identity service issuing certificates of
// lifetime, a server pod (service account web) with an app, a client pod,
// and discovery naming the server's identity for web:8080 and its echo
// port. Both proxies retry failed certificate requests after 100 ms to 1 s.
type identityEnv struct {
	m              *proxytest.Mesh
	client, server *proxytest.MeshedPod
}

func newIdentityEnv(t *testing.T, mode api.Mode, lifetime time.Duration) *identityEnv {
	t.Helper()
	m := proxytest.Start(t, proxytest.Options{Mode: mode, Identity: &proxytest.IdentityOptions{CertLifetime: lifetime}})
	env := map[string]string{"SLUICE_PROXY_IDENTITY_BACKOFF_MIN": "100ms", "SLUICE_PROXY_IDENTITY_BACKOFF_MAX": "1s"}
	e := &identityEnv{m: m}
	e.server = m.AddPod(t, "server", proxytest.PodOptions{ServiceAccount: "web", Env: env})
	e.server.App(t, "--http", ":"+strconv.Itoa(appPort), "--tcp-echo", ":"+strconv.Itoa(echoPort), "--name", "server")
	e.client = m.AddPod(t, "client", proxytest.PodOptions{Env: env})
	m.Dest.Set(proxytest.ServicePath("web", appPort), e.server.Endpoint(appPort, "web"))
	ep := e.server.Endpoint(echoPort, "web")
	ep.H2, ep.Opaque = false, true
	m.Dest.Set(e.echoAddr(), ep)
	return e
}

func (e *identityEnv) echoAddr() string {
	return net.JoinHostPort(e.server.IPv4().String(), strconv.Itoa(echoPort))
}

// loops starts the two kinds of steady traffic: HTTP requests over the
// proxies' pooled connection (reqloop) and opaque TCP connections, each a
// new mutual-TLS handshake with the certificates of the moment.
func (e *identityEnv) loops(t *testing.T) (*reqLoop, *tcpLoop) {
	t.Helper()
	http := startLoop(t, e.client, "--url", fmt.Sprintf("http://%s:%d/echo", serviceIP, appPort), "--host", fmt.Sprintf("web:%d", appPort), "--interval", "10ms")
	return http, startTCPLoop(t, e.client, e.echoAddr())
}

// metric sums a family's series with labels on pod's proxy.
func metric(t *testing.T, p *proxytest.MeshedPod, name string, l proxytest.Labels) float64 {
	t.Helper()
	return p.Metrics(t).Sum(name, l)
}

// certified is how many certificates the identity service issued to p.
func (e *identityEnv) certified(p *proxytest.MeshedPod) int {
	return e.m.Identity.Certified(p.Identity)
}

// waitCertified waits until the identity service has issued p at least n
// certificates; limit is a hang guard.
func (e *identityEnv) waitCertified(t *testing.T, p *proxytest.MeshedPod, n int, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for e.certified(p) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s's proxy has %d certificates after %s, want %d:\n%s", p.Name(), e.certified(p), limit, n, p.ProxyLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// noFailures checks both loops' results: some traffic flowed and none
// failed.
func noFailures(t *testing.T, rs []result, tcp tcpLoopResult) {
	t.Helper()
	if bad := failures(rs); len(bad) > 0 || len(rs) < 50 {
		t.Errorf("HTTP loop: %d requests, %d failed (first: %v)", len(rs), len(bad), tail(bad, 5))
	}
	if len(tcp.errs) > 0 || tcp.ok < 20 {
		t.Errorf("TCP loop: %d connections echoed, %d failed (first: %v)", tcp.ok, len(tcp.errs), tcp.errs[:min(5, len(tcp.errs))])
	}
}

// Certificates that last 4 s are renewed over and over while HTTP
// requests and new opaque connections flow between the two proxies, and no
// request, connection or handshake fails.
func TestCertificateRenewalUnderTraffic(t *testing.T) {
	netns.RequireRoot(t)
	for _, mode := range bothModes {
		t.Run(string(mode), func(t *testing.T) {
			e := newIdentityEnv(t, mode, 4*time.Second)
			httpLoop, tcp := e.loops(t)
			c0, s0 := e.certified(e.client), e.certified(e.server)
			e.waitCertified(t, e.client, c0+3, time.Minute)
			e.waitCertified(t, e.server, s0+3, time.Minute)
			noFailures(t, httpLoop.stop(t), tcp.finish())
			for _, p := range []*proxytest.MeshedPod{e.client, e.server} {
				if n := metric(t, p, "tls_handshake_errors_total", nil); n != 0 {
					t.Errorf("%s's proxy counted %v failed handshakes", p.Name(), n)
				}
				if n := metric(t, p, "identity_cert_refresh_total", proxytest.Labels{"result": "success"}); n < 4 {
					t.Errorf("%s's proxy: identity_cert_refresh_total{result=success} = %v, want >= 4", p.Name(), n)
				}
			}
		})
	}
}

// The identity service stops for longer than a renewal period (70 % of a
// 20 s life): the proxies' renewals fail, they keep their certificates,
// which stay valid, and traffic keeps flowing, new handshakes included.
// When the service is back, both renew, and nothing failed throughout.
// Identity does not depend on the interception mode: eBPF only, to save
// half a minute.
func TestIdentityOutage(t *testing.T) {
	netns.RequireRoot(t)
	const lifetime = 20 * time.Second
	for _, mode := range ebpfOnly {
		t.Run(string(mode), func(t *testing.T) {
			e := newIdentityEnv(t, mode, lifetime)
			httpLoop, tcp := e.loops(t)
			// Stop right after both proxies renewed, so that the outage
			// outlasts the next renewal of each and ends before either
			// certificate expires.
			c0, s0 := e.certified(e.client), e.certified(e.server)
			e.waitCertified(t, e.client, c0+1, time.Minute)
			e.waitCertified(t, e.server, s0+1, time.Minute)
			e.m.Identity.Stop()
			down := time.Now()
			tcpBefore := tcp.ok()
			deadline := down.Add(lifetime)
			for _, p := range []*proxytest.MeshedPod{e.client, e.server} {
				for metric(t, p, "identity_cert_refresh_total", proxytest.Labels{"result": "failure"}) < 1 {
					if time.Now().After(deadline) {
						t.Fatalf("%s's proxy made no failed renewal in the %s the identity service was down:\n%s", p.Name(), lifetime, p.ProxyLog())
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			// Both renewals came due and failed; keep the service down a
			// little longer than a whole renewal period.
			if rest := lifetime*7/10 + time.Second - time.Since(down); rest > 0 {
				time.Sleep(rest)
			}
			outage := time.Since(down)
			during := httpLoop.Len()
			tcpDuring := tcp.ok() - tcpBefore
			if tcpDuring < 10 {
				t.Errorf("only %d new opaque connections (new handshakes) succeeded during the outage", tcpDuring)
			}
			// The certificates are still valid (new handshakes used them).
			before := map[string]float64{}
			for _, p := range []*proxytest.MeshedPod{e.client, e.server} {
				exp := metric(t, p, "identity_cert_expiration_timestamp_seconds", nil)
				if left := time.Until(time.Unix(int64(exp), 0)); left < 500*time.Millisecond {
					t.Fatalf("%s's certificate has %v left after %v of outage: the proxies renewed too far apart for this test", p.Name(), left, outage)
				}
				before[p.Name()] = exp
			}
			if err := e.m.Identity.Restart(); err != nil {
				t.Fatal(err)
			}
			e.waitCertified(t, e.client, c0+2, 30*time.Second)
			e.waitCertified(t, e.server, s0+2, 30*time.Second)
			for _, p := range []*proxytest.MeshedPod{e.client, e.server} {
				p.Eventually(t, func(m proxytest.Metrics) error {
					if exp := m.Sum("identity_cert_expiration_timestamp_seconds", nil); exp <= before[p.Name()] {
						return fmt.Errorf("identity_cert_expiration_timestamp_seconds %v did not advance from %v", exp, before[p.Name()])
					}
					return nil
				})
				if n := metric(t, p, "tls_handshake_errors_total", nil); n != 0 {
					t.Errorf("%s's proxy counted %v failed handshakes", p.Name(), n)
				}
			}
			rs := httpLoop.stop(t)
			if len(rs) <= during {
				t.Errorf("no HTTP request finished after the outage (%d in all)", len(rs))
			}
			noFailures(t, rs, tcp.finish())
			t.Logf("outage %v; %d HTTP requests, %d opaque connections during the outage", outage, len(rs), tcpDuring)
		})
	}
}

// tcpLoop opens opaque connections one after another (`testapp tcp`), each
// sending and reading back 1000 bytes.
type tcpLoop struct {
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	res   tcpLoopResult
}

// tcpLoopResult counts a tcpLoop's connections.
type tcpLoopResult struct {
	ok   int
	errs []string
}

func startTCPLoop(t *testing.T, pod *proxytest.MeshedPod, addr string) *tcpLoop {
	t.Helper()
	l := &tcpLoop{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stopc:
				return
			default:
			}
			out, err := pod.Output(time.Minute, pod.Mesh.AppBin, "tcp", "--addr", addr, "--bytes", "1000", "--timeout", "20s")
			var r struct {
				Received int64  `json:"received"`
				EOF      bool   `json:"eof"`
				Err      string `json:"err"`
			}
			if err == nil {
				err = json.Unmarshal(out, &r)
			}
			l.mu.Lock()
			switch {
			case err != nil:
				l.res.errs = append(l.res.errs, err.Error())
			case r.Err != "" || r.Received != 1000 || !r.EOF:
				l.res.errs = append(l.res.errs, fmt.Sprintf("%+v", r))
			default:
				l.res.ok++
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { l.finish() })
	return l
}

// ok returns how many connections succeeded so far.
func (l *tcpLoop) ok() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res.ok
}

// finish stops the loop and returns its counts.
func (l *tcpLoop) finish() tcpLoopResult {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res
}
