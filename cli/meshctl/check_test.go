package meshctl

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck/ebpfcheck"
	"github.com/sluice-mesh/sluice/cli/internal/fakeagent"
	"github.com/sluice-mesh/sluice/cli/internal/golden"
	"github.com/sluice-mesh/sluice/internal/nodefacts/nodefactstest"
)

// fixtureHost is a healthy 6.18 node with hybrid cgroups, bpffs and BTF.
func fixtureHost(t *testing.T) ebpfcheck.Host {
	t.Helper()
	h := nodefactstest.Node{Mounts: nodefactstest.HybridMounts, BTF: true}.Host(t)
	h.Uname = func() (string, error) { return "6.18.44-fc-v669", nil }
	return h
}

// writeFile writes content to path, making its directories.
func writeFile(t *testing.T, path, content string) { nodefactstest.WriteFile(t, path, content) }

// fakeAgent serves a healthy agent status whose pins exist, and returns its
// socket.
func fakeAgent(t *testing.T) string {
	t.Helper()
	pinRoot := filepath.Join(t.TempDir(), "sluice")
	st := api.Status{
		Version: "v0.1.0", Mode: api.ModeEBPF, PinRoot: pinRoot, CgroupV2: "/sys/fs/cgroup/unified",
		Kernel: "6.18.44-fc-v669",
		Features: []api.Feature{
			{Name: "cgroup/connect4", MinKernel: "4.17", Required: true, OK: true},
			{Name: "sk_lookup", MinKernel: "5.9", Required: true, OK: true},
			{Name: "sk_msg redirect", MinKernel: "4.17", OK: false, Error: "not supported"},
		},
		Programs: []api.Program{
			{Name: "sluice_connect4", Type: "cgroup_sock_addr", AttachType: "cgroup_inet4_connect", AttachedTo: "/sys/fs/cgroup/unified", Attached: true},
		},
		Pins: []string{"progs/sluice_connect4", "maps/pods"},
		Maps: []api.MapUsage{{Name: "pods", Entries: 3, MaxEntries: 1024}},
	}
	for _, p := range st.Pins {
		writeFile(t, filepath.Join(pinRoot, p), "")
	}
	return fakeagent.Serve(t, st)
}

// execute runs meshctl with args against host and returns its standard
// output and error, with replace's keys replaced by their values.
func execute(t *testing.T, host ebpfcheck.Host, replace map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newCmdRoot(&globalOptions{host: host})
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	stdout, stderr = out.String(), errOut.String()
	for old, repl := range replace {
		stdout = strings.ReplaceAll(stdout, old, repl)
	}
	return stdout, stderr, err
}

func TestCheckEBPF(t *testing.T) {
	for _, tc := range []struct {
		name   string
		output string
		agent  bool
		want   error
	}{
		{"check_ebpf_pass", "table", true, nil},
		{"check_ebpf_pass_json", "json", true, nil},
		{"check_ebpf_no_agent", "table", false, errChecksFailed},
		{"check_ebpf_no_agent_json", "json", false, errChecksFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := filepath.Join(t.TempDir(), "agent.sock")
			if tc.agent {
				socket = fakeAgent(t)
			}
			stdout, stderr, err := execute(t, fixtureHost(t), map[string]string{socket: "AGENT_SOCKET"},
				"check", "--ebpf", "-o", tc.output, "--agent-socket", socket)
			assertCheckRun(t, tc.name, stdout, stderr, err, tc.want)
		})
	}
}

// assertCheckRun checks a run of meshctl check: it ended with want, an
// error marked as reported (the results said it), printed nothing on
// standard error, and its output is testdata/<name>.golden.
func assertCheckRun(t *testing.T, name, stdout, stderr string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("error = %v, want %v", err, want)
	}
	if err != nil && !AlreadyReported(err) {
		t.Errorf("error %v is not marked as already reported", err)
	}
	if stderr != "" {
		t.Errorf("stderr = %q, want nothing", stderr)
	}
	golden.Assert(t, name, []byte(stdout))
}

func TestCheckRejects(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		errHas string
	}{
		{args: []string{"check", "--ebpf", "-o", "yaml"}, errHas: `invalid --output "yaml": use "table" or "json"`},
		{args: []string{"check", "--ebpf", "--wait", "-1s"}, errHas: "invalid --wait -1s"},
		{args: []string{"check", "--ebpf", "--agent-socket", ""}, errHas: "invalid --agent-socket"},
		{args: []string{"check", "--ebpf", "extra"}, errHas: `unknown command "extra"`},
		{args: []string{"check", "--pre", "--proxy"}, errHas: "--pre, --proxy and --ebpf are different checks: pick one"},
		{args: []string{"check", "--ebpf", "--proxy"}, errHas: "pick one"},
		{args: []string{"check", "--local"}, errHas: "--local and --agent-socket go with --ebpf"},
		{args: []string{"check", "--agent-socket", "/run/x.sock"}, errHas: "go with --ebpf"},
		{args: []string{"check", "-n", "shop"}, errHas: "-n/--namespace limits the data-plane checks: it goes with --proxy"},
		{args: []string{"check", "--agent-image", "x"}, errHas: "--agent-image and --probe-namespace go with --pre"},
		{args: []string{"check", "--pre", "--probe-namespace", ""}, errHas: "invalid --probe-namespace"},
	} {
		stdout, _, err := execute(t, fixtureHost(t), nil, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("meshctl %q: error %v, want it to contain %q", tc.args, err, tc.errHas)
		}
		if err != nil && AlreadyReported(err) {
			t.Errorf("meshctl %q: error %v is marked as reported, but nothing printed it", tc.args, err)
		}
		if stdout != "" {
			t.Errorf("meshctl %q printed %q", tc.args, stdout)
		}
	}
}

func TestCheckHelp(t *testing.T) {
	stdout, _, err := execute(t, fixtureHost(t), nil, "check", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"--ebpf", "--local", "--pre", "--proxy", "--namespace", "--agent-image", "--probe-namespace", "--output",
		"--agent-socket", api.DefaultSocket, "--wait", "--kubeconfig", "--context", "--control-plane-namespace",
		"sluice-control-plane", "sluice-data-plane", "pre-kubernetes-setup", "sluice-agent on <node>", "node-facts",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("check --help lacks %q", want)
		}
	}
	if strings.Contains(stdout, "Helm install") {
		t.Error("check --help still says the control-plane checks come with the Helm install")
	}
}

func TestCheckWaitsForAgent(t *testing.T) {
	host := fixtureHost(t)
	socket := fakeAgent(t)
	// The agent "starts" 200ms into the check: its socket appears then.
	link := filepath.Join(t.TempDir(), "agent.sock")
	linked := make(chan error, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		linked <- os.Symlink(socket, link)
	}()
	stdout, _, err := execute(t, host, nil, "check", "--ebpf", "--wait", "10s", "--agent-socket", link)
	if err := <-linked; err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("check --wait: %v\n%s", err, stdout)
	}
	if !strings.Contains(stdout, "✔ agent is reachable") {
		t.Errorf("agent never reachable:\n%s", stdout)
	}
}
