package proxybehavior

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/netns"
	"github.com/sluice-mesh/sluice/test/proxytest"
)

// SIGTERM to a server's proxy while a long request is in flight: the proxy
// reports not ready, new connections to the pod are refused, the request
// finishes with its full answer, and the proxy exits with status 0 within
// its grace period.
func TestShutdownDrains(t *testing.T) {
	eachMode(t, ebpfOnly, func(t *testing.T, m *proxytest.Mesh) {
		const grace = 10 * time.Second
		web, proxy := startOwnProxy(t, m, "web", map[string]string{"SLUICE_PROXY_SHUTDOWN_GRACE_PERIOD": grace.String()})
		// The app listens on every address: once the proxy stops
		// accepting, connections to the pod must be refused, not passed
		// to the app around the proxy.
		web.App(t, "--http", fmt.Sprintf(":%d", appPort), "--name", "web")
		if got := hostGet(t, web.URL(appPort, "/echo")); got.Status != 200 || got.App != "web" {
			t.Fatalf("before shutdown: %v, want 200 from web", got)
		}

		long := make(chan result, 1)
		go func() { long <- hostGetResult(web.URL(appPort, "/delay?d=2s"), time.Minute) }()
		// The long request is in flight once the proxy has counted it.
		web.Eventually(t, func(mt proxytest.Metrics) error {
			q := proxytest.Labels{"direction": "inbound"}
			if n := mt.Sum("request_total", q); n < 2 {
				return fmt.Errorf("the long request has not reached the proxy:\n%s", mt.Format("request_total", q))
			}
			return nil
		})

		if err := proxy.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("SIGTERM: %v", err)
		}
		// While it drains, the proxy says it is not ready and takes no new
		// connection.
		waitUntil(t, "/ready answers 503 while draining", 10*time.Second, func() bool {
			code, _ := adminGet(web, "/ready")
			return code == http.StatusServiceUnavailable
		})
		waitUntil(t, "new connections refused", 10*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", web.IPv4(), appPort), 5*time.Second)
			if err == nil {
				c.Close()
				return false
			}
			return errors.Is(err, syscall.ECONNREFUSED)
		})
		select {
		case <-proxy.exited:
			t.Fatalf("the proxy exited (%v) before the in-flight request finished", proxy.err)
		default:
		}

		if r := <-long; r.Status != 200 || r.App != "web" {
			t.Errorf("the request in flight at SIGTERM got %v, want a 200 from web", r)
		}
		select {
		case <-proxy.exited:
			if proxy.err != nil {
				t.Errorf("the proxy exited with %v, want status 0", proxy.err)
			}
		case <-time.After(grace + 5*time.Second):
			t.Fatalf("the proxy still runs %s after SIGTERM, beyond its grace period %s", grace+5*time.Second, grace)
		}
		if log := proxy.log.String(); !strings.Contains(log, "proxy stopped") {
			t.Errorf("the proxy's log does not end with its clean stop:\n%s", log)
		}
	})
}

// ownProxy is a sluice-proxy that the test runs itself, so that it can
// signal it and see its exit status (proxytest keeps its proxies).
type ownProxy struct {
	cmd    *exec.Cmd
	log    *logBuffer
	exited chan struct{}
	err    error // the exit, once exited is closed
}

// startOwnProxy adds pod name to the mesh with a sluice-proxy (environment
// as proxytest gives it, plus env) that the test controls, enrolls it and
// waits until the proxy is ready. The pod is returned as a MeshedPod, so
// the fixture's App, Metrics and URL work on it.
func startOwnProxy(t *testing.T, m *proxytest.Mesh, name string, env map[string]string) (*proxytest.MeshedPod, *ownProxy) {
	t.Helper()
	pod := m.Node.AddPod(t, name, netns.PodOptions{})
	p := &proxytest.MeshedPod{Pod: pod, Mesh: m}
	op := &ownProxy{cmd: pod.Command(proxytest.ProxyUID, m.ProxyBin), log: &logBuffer{}, exited: make(chan struct{})}
	op.cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"SLUICE_PROXY_POD_NAMESPACE=" + proxytest.Namespace,
		"SLUICE_PROXY_LOG_LEVEL=debug",
		"SLUICE_PROXY_LOG_FORMAT=text",
	}
	for k, v := range env {
		op.cmd.Env = append(op.cmd.Env, k+"="+v)
	}
	op.cmd.Stdout, op.cmd.Stderr = op.log, op.log
	if err := op.cmd.Start(); err != nil {
		t.Fatalf("start sluice-proxy: %v", err)
	}
	go func() { op.err = op.cmd.Wait(); close(op.exited) }()
	killAtCleanup(t, op.cmd, op.exited, func() {
		t.Logf("sluice-proxy in %s (%v):\n%s", name, op.err, op.log.String())
	})
	alive := func(path string) func() bool {
		return func() bool {
			select {
			case <-op.exited:
				t.Fatalf("sluice-proxy exited (%v):\n%s", op.err, op.log.String())
			default:
			}
			code, _ := adminGet(p, path)
			return code == http.StatusOK
		}
	}
	waitUntil(t, "sluice-proxy /live", 30*time.Second, alive("/live"))
	p.Enrollment = m.Agent.Enroll(t, pod, api.PodConfig{ProbePort: api.DefaultProbePort})
	waitUntil(t, "sluice-proxy /ready", time.Minute, alive("/ready"))
	return p, op
}

// adminGet requests path on the pod's proxy admin port from the host.
func adminGet(p *proxytest.MeshedPod, path string) (int, error) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http://" + p.AdminAddr().String() + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// hostGet makes one request from the host and fails t if it fails.
func hostGet(t *testing.T, url string) result {
	t.Helper()
	r := hostGetResult(url, 30*time.Second)
	if r.Err != "" {
		t.Fatalf("GET %s: %s", url, r.Err)
	}
	return r
}

// hostGetResult makes one request from the host on a new connection.
func hostGetResult(url string, limit time.Duration) result {
	hc := &http.Client{Timeout: limit, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(url)
	if err != nil {
		return result{Err: err.Error()}
	}
	defer resp.Body.Close()
	r := result{Status: resp.StatusCode, App: resp.Header.Get("X-App-Name")}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		r.Err = "read body: " + err.Error()
	}
	return r
}

// waitUntil polls cond every 20 ms until it holds; limit is a hang guard.
func waitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %s (hang guard)", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
