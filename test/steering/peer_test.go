package steering

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/netns"
)

const (
	appUID   = 1000
	proxyUID = api.DefaultProxyUID
)

// event is a JSON line of steerpeer: a proxy's accepted connection, a
// server's accepted connection, or a dial's result.
type event struct {
	Listener   string `json:"listener"`
	Orig       string `json:"orig"`
	Local      string `json:"local"`
	Remote     string `json:"remote"`
	Err        string `json:"err"`
	Sent       int64  `json:"sent"`
	SentSHA256 string `json:"sent_sha256"`
	Response   string `json:"response"`
	Received   int64  `json:"received"`
}

// peer is a running steerpeer whose JSON lines arrive on events.
type peer struct {
	name   string
	cmd    *exec.Cmd
	events chan event
	stderr *strings.Builder
}

// startPeer starts cmd (a steerpeer) and waits for READY.
func startPeer(t *testing.T, name string, cmd *exec.Cmd) *peer {
	t.Helper()
	p := &peer{name: name, cmd: cmd, events: make(chan event, 1024), stderr: &strings.Builder{}}
	cmd.Stderr = p.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan struct{})
	go p.read(out, ready)
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s not ready: %s", name, p.stderr.String())
	}
	return p
}

func (p *peer) read(r io.Reader, ready chan struct{}) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "READY" {
			close(ready)
			continue
		}
		var ev event
		if json.Unmarshal([]byte(line), &ev) == nil {
			p.events <- ev
		}
	}
}

// next returns the peer's next event.
func (p *peer) next(t *testing.T) event {
	t.Helper()
	select {
	case ev := <-p.events:
		return ev
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no event after 30s; stderr: %s", p.name, p.stderr.String())
		return event{}
	}
}

// none asserts that the peer reported nothing new.
func (p *peer) none(t *testing.T) {
	t.Helper()
	select {
	case ev := <-p.events:
		t.Errorf("%s: unexpected connection %+v", p.name, ev)
	case <-time.After(200 * time.Millisecond):
	}
}

// dial runs `steerpeer dial` and returns its result line.
func dial(t *testing.T, cmd *exec.Cmd) event {
	t.Helper()
	ev, err := tryDial(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// tryDial is dial for goroutines other than the test's.
func tryDial(cmd *exec.Cmd) (event, error) {
	out, err := cmd.Output()
	var ev event
	if jerr := json.Unmarshal(out, &ev); jerr != nil {
		return ev, fmt.Errorf("dial: %v: %q", err, out)
	}
	if err != nil || ev.Err != "" {
		return ev, fmt.Errorf("dial failed: %v %s", err, ev.Err)
	}
	return ev, nil
}

func dialArgs(to netip.AddrPort, bytes int64) []string {
	return []string{"dial", "--to", to.String(), "--bytes", fmt.Sprint(bytes), "--timeout", "120s"}
}

// fixture is a node with an agent and the steerpeer binary.
type fixture struct {
	node  *netns.Node
	agent *agenttest.Agent
	peer  string
}

func newFixture(t *testing.T, opts agenttest.Options) *fixture {
	t.Helper()
	netns.RequireRoot(t)
	netns.RequireCommand(t, "nsenter")
	if opts.Mode == api.ModeIPTables {
		netns.RequireCommand(t, "iptables")
		netns.RequireCommand(t, "ip6tables")
	}
	node := netns.NewNode(t)
	return &fixture{node: node, agent: agenttest.Start(t, node, opts), peer: netns.BuildTool(t, "./test/cmd/steerpeer")}
}

// proxy starts a test sidecar in pod as the proxy user.
func (f *fixture) proxy(t *testing.T, pod *netns.Pod, mode string) *peer {
	return startPeer(t, pod.Name()+"/proxy", pod.Command(proxyUID, f.peer, "proxy", "--mode", mode))
}

// server starts an application server in pod.
func (f *fixture) server(t *testing.T, pod *netns.Pod, listen, mode string) *peer {
	return startPeer(t, pod.Name()+"/server "+listen, pod.Command(appUID, f.peer, "serve", "--listen", listen, "--mode", mode))
}

// eachMode runs fn as a subtest per interception mode, each on a fresh node
// with its own agent.
func eachMode(t *testing.T, fn func(t *testing.T, mode api.Mode, f *fixture)) {
	for _, mode := range []api.Mode{api.ModeEBPF, api.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) {
			fn(t, mode, newFixture(t, agenttest.Options{Mode: mode}))
		})
	}
}

// families runs fn for IPv4 and IPv6 as subtests.
func families(t *testing.T, fn func(t *testing.T, ip func(*netns.Pod) netip.Addr)) {
	t.Run("ipv4", func(t *testing.T) { fn(t, (*netns.Pod).IPv4) })
	t.Run("ipv6", func(t *testing.T) { fn(t, (*netns.Pod).IPv6) })
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
