package steering

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/podns"
	"github.com/sluice-mesh/sluice/test/agenttest"
	"github.com/sluice-mesh/sluice/test/netns"
)

// `sluice-agent uninstall` leaves the pin root gone and no Sluice program
// attached: not at the node's cgroup, not in an enrolled pod's netns.
func TestUninstall(t *testing.T) {
	f := newFixture(t, agenttest.Options{})
	a := f.node.AddPod(t, "a", netns.PodOptions{})
	f.agent.Enroll(t, a, api.PodConfig{})
	st, err := f.agent.Client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, p := range st.Programs {
		if p.ID == 0 {
			t.Fatalf("program %s has no id", p.Name)
		}
		ids = append(ids, ebpf.ProgramID(p.ID))
	}
	if !contains(st.Pins, "links/netns/") {
		t.Fatalf("no netns link pinned: %v", st.Pins)
	}

	// Refused while the agent runs.
	out, err := exec.Command(f.agent.Bin, "uninstall", "--pin-root", f.agent.PinRoot, "--state-dir", f.agent.StateDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "locked") {
		t.Fatalf("uninstall with the agent running: %v %s, want a refusal naming the lock", err, out)
	}

	f.agent.Kill()
	out, err = exec.Command(f.agent.Bin, "uninstall", "--pin-root", f.agent.PinRoot, "--state-dir", f.agent.StateDir).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(f.agent.PinRoot); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists: %v", f.agent.PinRoot, err)
	}
	for _, id := range ids {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			info, _ := p.Info()
			p.Close()
			t.Errorf("program %d (%s) still loaded after uninstall", id, info.Name)
		}
	}
	cg, err := os.Open(f.node.CgroupPath())
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupSockOps,
		ebpf.AttachCGroupGetsockopt, ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(cg.Fd()), Attach: at})
		if err != nil {
			t.Fatalf("query %s: %v", at, err)
		}
		if len(res.Programs) != 0 {
			t.Errorf("%s: %d programs still attached to the node cgroup", at, len(res.Programs))
		}
	}
	ns, err := os.Open(a.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(ns.Fd()), Attach: ebpf.AttachSkLookup})
	if err != nil {
		t.Fatalf("query sk_lookup: %v", err)
	}
	if len(res.Programs) != 0 {
		t.Errorf("%d sk_lookup programs still attached to the pod's netns", len(res.Programs))
	}
	if _, err := os.Stat(filepath.Join(f.agent.StateDir, "enrollments.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("enrollment record left behind: %v", err)
	}
}

// iptables mode: uninstall removes the rules of every enrolled pod.
func TestUninstallIPTables(t *testing.T) {
	f := newFixture(t, agenttest.Options{Mode: api.ModeIPTables})
	a := f.node.AddPod(t, "a", netns.PodOptions{})
	f.agent.Enroll(t, a, api.PodConfig{})
	f.agent.Kill9()
	out, err := exec.Command(f.agent.Bin, "uninstall", "--pin-root", f.agent.PinRoot, "--state-dir", f.agent.StateDir).CombinedOutput()
	if err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "removed iptables rules of 1 pods") {
		t.Errorf("uninstall output: %s", out)
	}
	assertNoRules(t, a)
}

// Bad input gets a clear error and changes nothing else.
func TestBadInput(t *testing.T) {
	f := newFixture(t, agenttest.Options{MaxPods: 2})
	a := f.node.AddPod(t, "a", netns.PodOptions{})
	b := f.node.AddPod(t, "b", netns.PodOptions{})
	c := f.node.AddPod(t, "c", netns.PodOptions{})
	d := f.node.AddPod(t, "d", netns.PodOptions{})
	f.agent.Enroll(t, a, api.PodConfig{})
	proxy := f.proxy(t, a, "echo")
	f.server(t, d, ":9000", "sha256")
	ctx := context.Background()
	before, err := f.agent.Client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	counters := f.agent.Counters(t)

	post := func(body string) (int, string) {
		t.Helper()
		hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", f.agent.Socket)
		}}}
		resp, err := hc.Post("http://agent/v1/enrollments", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e api.Error
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(resp.Body)
		_ = json.Unmarshal(buf.Bytes(), &e)
		return resp.StatusCode, e.Error
	}
	cases := []struct {
		name, body string
		code       int
		errHas     string
	}{
		{"missing netns", `{"netns":"/run/netns/does-not-exist"}`, 400, "does not exist"},
		{"not a netns", `{"netns":"/etc/hostname"}`, 400, "not a namespace"},
		{"host netns", `{"netns":"/proc/self/ns/net"}`, 400, "host network namespace"},
		{"duplicate pod", `{"netns":"` + a.NetNSPath() + `"}`, 409, "already enrolled"},
		{"out-of-range port", `{"netns":"` + b.NetNSPath() + `","config":{"skipOutboundPorts":["70000"]}}`, 400, "out of range"},
		{"out-of-range proxy port", `{"netns":"` + b.NetNSPath() + `","config":{"inboundPort":70000}}`, 400, "decode"},
		{"reversed range", `{"netns":"` + b.NetNSPath() + `","config":{"skipInboundPorts":["90-80"]}}`, 400, "above"},
		{"netns and pid", `{"netns":"` + b.NetNSPath() + `","pid":1}`, 400, "not both"},
		{"unknown field", `{"netns":"` + b.NetNSPath() + `","bogus":1}`, 400, "unknown field"},
		{"malformed JSON", `{"netns":`, 400, "decode"},
		{"too many subnets", `{"netns":"` + b.NetNSPath() + `","config":{"skipSubnets":["10.0.0.0/8","10.1.0.0/16","10.2.0.0/16","10.3.0.0/16","10.4.0.0/16","10.5.0.0/16","10.6.0.0/16","10.7.0.0/16","10.8.0.0/16"]}}`, 400, "at most 8"},
		{"address of another pod", `{"netns":"` + b.NetNSPath() + `","addresses":["` + a.IPv4().String() + `"]}`, 409, "belongs to"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			code, msg := post(tc.body)
			if code != tc.code || !strings.Contains(msg, tc.errHas) {
				t.Errorf("got %d %q, want %d with %q", code, msg, tc.code, tc.errHas)
			}
		})
	}

	// A full map: max-pods 2, a and b fit, c does not.
	f.agent.Enroll(t, b, api.PodConfig{})
	if _, err := f.agent.Client.Enroll(ctx, api.EnrollRequest{NetNS: c.NetNSPath()}); err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("enrolling into a full map: %v, want an error saying it is full", err)
	} else if se := (*api.StatusError)(nil); !errors.As(err, &se) || se.Code != http.StatusInsufficientStorage {
		t.Errorf("full map answered %v, want 507", err)
	}

	// Nothing else changed: a is enrolled as before and still steered.
	after, err := f.agent.Client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before)+1 || after[0].NetNSCookie != before[0].NetNSCookie && after[1].NetNSCookie != before[0].NetNSCookie {
		t.Errorf("enrollments changed: before %+v after %+v", before, after)
	}
	res := dial(t, a.Command(appUID, f.peer, dialArgs(ap(d.IPv4(), 9000), 100)...))
	if ev := proxy.next(t); ev.Listener != "outbound" {
		t.Errorf("pod a no longer steered after bad input: %+v %+v", ev, res)
	}
	if got := f.agent.Counters(t)["steered_outbound_ipv4"]; got <= counters["steered_outbound_ipv4"] {
		t.Errorf("steering counter did not move after bad input")
	}
}

// meshctl check --ebpf passes with the agent running and fails with a named
// check when it is stopped.
func TestMeshctlCheckEBPF(t *testing.T) {
	f := newFixture(t, agenttest.Options{})
	meshctl := netns.BuildTool(t, "./cli/cmd/meshctl")
	out, err := exec.Command(meshctl, "check", "--ebpf", "--agent-socket", f.agent.Socket).CombinedOutput()
	if err != nil {
		t.Fatalf("check with the agent running: %v\n%s", err, out)
	}
	for _, want := range []string{"✔ agent is reachable", "✔ programs are attached", "✔ pins are present", "Status check results are ✔"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	jout, err := exec.Command(meshctl, "check", "--ebpf", "-o", "json", "--agent-socket", f.agent.Socket).Output()
	if err != nil {
		t.Fatalf("check -o json: %v", err)
	}
	var res struct {
		Success bool `json:"success"`
	}
	if err := json.Unmarshal(jout, &res); err != nil || !res.Success {
		t.Errorf("json: %v %s", err, jout)
	}

	f.agent.Kill()
	out, err = exec.Command(meshctl, "check", "--ebpf", "--agent-socket", f.agent.Socket).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("check with the agent stopped exited %v, want non-zero\n%s", err, out)
	}
	if !strings.Contains(string(out), "× agent is reachable") || !strings.Contains(string(out), "hint:") {
		t.Errorf("output does not name the failed check with a hint:\n%s", out)
	}
}

func contains(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// Enrolling by pid through the agent's CLI steers the pod whose process it
// is; enrolling the same pod by path is then a conflict; unenroll by netns.
func TestEnrollByPIDWithCLI(t *testing.T) {
	f := newFixture(t, agenttest.Options{})
	a := f.node.AddPod(t, "a", netns.PodOptions{})
	b := f.node.AddPod(t, "b", netns.PodOptions{})
	proxy := f.proxy(t, a, "echo")
	f.server(t, b, ":9000", "sha256")
	pid := proxy.cmd.Process.Pid
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(f.agent.Bin, append(args, "--socket", f.agent.Socket)...).CombinedOutput()
		return string(out), err
	}
	out, err := cli("enroll", "--pid", fmt.Sprint(pid), "--pod", "test/a", "--skip-outbound-ports", "9001", "-o", "json")
	if err != nil {
		t.Fatalf("enroll --pid: %v\n%s", err, out)
	}
	var ens []api.Enrollment
	if err := json.Unmarshal([]byte(out), &ens); err != nil || len(ens) != 1 {
		t.Fatalf("enroll output: %v %s", err, out)
	}
	if ens[0].NetNS != fmt.Sprintf("/proc/%d/ns/net", pid) || ens[0].Pod.Name != "a" || len(ens[0].Addresses) != 2 {
		t.Errorf("enrollment: %+v", ens[0])
	}
	if out, err := cli("enroll", "--netns", a.NetNSPath()); err == nil || !strings.Contains(out, "already enrolled") {
		t.Errorf("enrolling the same pod by path: %v %s", err, out)
	}
	if out, err := cli("enroll", "--netns", a.NetNSPath(), "--skip-outbound-ports", "99999"); err == nil || !strings.Contains(out, "out of range") {
		t.Errorf("bad flag value: %v %s", err, out)
	}
	dial(t, a.Command(appUID, f.peer, dialArgs(ap(b.IPv4(), 9000), 100)...))
	if ev := proxy.next(t); ev.Listener != "outbound" {
		t.Fatalf("not steered after enroll --pid: %+v", ev)
	}
	out, err = cli("list")
	if err != nil || !strings.Contains(out, "test/a") {
		t.Errorf("list: %v\n%s", err, out)
	}
	if out, err := cli("unenroll", "--netns", ens[0].NetNS); err != nil {
		t.Fatalf("unenroll --netns: %v %s", err, out)
	}
	if out, _ := cli("list", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("list after unenroll: %s", out)
	}
}

// A pod whose network namespace disappears without an unenroll (a crashed
// node component, a missed delete) is unenrolled by the agent: no map entry,
// slot or pin is left behind.
func TestGoneNetnsIsUnenrolled(t *testing.T) {
	eachMode(t, func(t *testing.T, mode api.Mode, f *fixture) {
		a := f.node.AddPod(t, "a", netns.PodOptions{})
		b := f.node.AddPod(t, "b", netns.PodOptions{})
		enA := f.agent.Enroll(t, a, api.PodConfig{})
		f.agent.Enroll(t, b, api.PodConfig{})
		// Nothing runs in pod a: removing its name destroys the namespace.
		if out, err := exec.Command("ip", "netns", "del", a.NetNSName()).CombinedOutput(); err != nil {
			t.Fatalf("ip netns del: %v %s", err, out)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			ens, err := f.agent.Client.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(ens) == 1 && ens[0].NetNSCookie != enA.NetNSCookie {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("gone pod still enrolled after 20s: %+v", ens)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if mode != api.ModeEBPF {
			return
		}
		st, err := f.agent.Client.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if contains(st.Pins, fmt.Sprintf("links/netns/%d", enA.NetNSCookie)) {
			t.Errorf("link pin of the gone pod left: %v", st.Pins)
		}
		for _, m := range st.Maps {
			if (m.Name == "pods" || m.Name == "pod_ips") && m.Entries != map[string]int{"pods": 1, "pod_ips": 2}[m.Name] {
				t.Errorf("map %s has %d entries, want only pod b's", m.Name, m.Entries)
			}
		}
	})
}

// AgentCaps are the capabilities the agent needs, and all it gets in the
// DaemonSet: CAP_BPF to load programs and create maps, CAP_NET_ADMIN to
// attach the cgroup, sockops, sk_msg and sk_lookup programs and to program
// iptables, CAP_SYS_ADMIN to enter pods' network namespaces (setns) and
// mount the BPF filesystem, CAP_SYS_PTRACE to take the proxy's inbound
// listener with pidfd_getfd.
var AgentCaps = []string{"bpf", "net_admin", "sys_admin", "sys_ptrace"}

// The agent does its whole job with AgentCaps and no other capability.
func TestAgentLeastPrivilege(t *testing.T) {
	netns.RequireCommand(t, "setpriv")
	for _, mode := range []api.Mode{api.ModeEBPF, api.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t, agenttest.Options{Mode: mode, Caps: AgentCaps})
			a := f.node.AddPod(t, "a", netns.PodOptions{})
			b := f.node.AddPod(t, "b", netns.PodOptions{})
			f.agent.Enroll(t, a, api.PodConfig{})
			enB := f.agent.Enroll(t, b, api.PodConfig{})
			proxyA := f.proxy(t, a, "forward")
			proxyB := f.proxy(t, b, "forward")
			f.server(t, b, ":9000", "sha256")
			if mode == api.ModeEBPF {
				f.agent.WaitListener(t, enB.NetNSCookie)
			}
			res := dial(t, a.Command(appUID, f.peer, dialArgs(ap(b.IPv4(), 9000), 1<<20)...))
			if strings.TrimSpace(res.Response) != res.SentSHA256 {
				t.Fatalf("hash mismatch")
			}
			if ev := proxyA.next(t); ev.Listener != "outbound" {
				t.Errorf("outbound not steered: %+v", ev)
			}
			if ev := proxyB.next(t); ev.Listener != "inbound" {
				t.Errorf("inbound not steered: %+v", ev)
			}
			if err := f.agent.Client.Unenroll(context.Background(), enB.NetNSCookie); err != nil {
				t.Errorf("unenroll: %v", err)
			}
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", f.agent.PID()))
			if err != nil {
				t.Fatal(err)
			}
			// CAP_BPF 39, CAP_SYS_ADMIN 21, CAP_SYS_PTRACE 19, CAP_NET_ADMIN 12.
			const want = 1<<39 | 1<<21 | 1<<19 | 1<<12
			if !strings.Contains(string(st), fmt.Sprintf("CapEff:\t%016x\n", want)) {
				t.Errorf("agent ran with other capabilities than %v:\n%s", AgentCaps, st)
			}
		})
	}
}

// On kernels without SO_NETNS_COOKIE (before 5.14) the agent learns a pod's
// netns cookie through cgroup/connect4. Forced here on a newer kernel: the
// cookie it learns is the kernel's, and steering works with it.
func TestNetnsCookieThroughConnect4(t *testing.T) {
	f := newFixture(t, agenttest.Options{InNodeCgroup: true, Args: []string{"--netns-cookie", "bpf"}})
	a := f.node.AddPod(t, "a", netns.PodOptions{})
	b := f.node.AddPod(t, "b", netns.PodOptions{})
	en := f.agent.Enroll(t, a, api.PodConfig{})
	ns, err := podns.Open(a.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	ns.Close()
	if en.NetNSCookie != ns.Cookie {
		t.Fatalf("cookie learned through connect4 is %d, SO_NETNS_COOKIE says %d", en.NetNSCookie, ns.Cookie)
	}
	if !strings.Contains(f.agent.Log(), "learning netns cookies through cgroup/connect4") {
		t.Errorf("agent did not use the connect4 probe:\n%s", f.agent.Log())
	}
	proxy := f.proxy(t, a, "echo")
	f.server(t, b, ":9000", "sha256")
	dial(t, a.Command(appUID, f.peer, dialArgs(ap(b.IPv4(), 9000), 100)...))
	if ev := proxy.next(t); ev.Listener != "outbound" {
		t.Fatalf("not steered: %+v", ev)
	}
}

// With the redirect turned off the agent is healthy: meshctl check passes
// and status says the redirect is off.
func TestCheckWithoutRedirect(t *testing.T) {
	f := newFixture(t, agenttest.Options{NoRedirect: true})
	meshctl := netns.BuildTool(t, "./cli/cmd/meshctl")
	out, err := exec.Command(meshctl, "check", "--ebpf", "--agent-socket", f.agent.Socket).CombinedOutput()
	if err != nil {
		t.Fatalf("check with --no-redirect: %v\n%s", err, out)
	}
	st, err := f.agent.Client.Status(context.Background())
	if err != nil || st.RedirectEnabled {
		t.Errorf("status: %v redirectEnabled=%v", err, st.RedirectEnabled)
	}
}
