package command

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/iptables"
	"github.com/sluice-mesh/sluice/test/netns"
)

// runIPTablesInit runs iptables-init with args and o's runner, returning
// its stdout.
func runIPTablesInit(t *testing.T, o *iptablesInitOptions, args ...string) (string, error) {
	t.Helper()
	cmd := o.command()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestIPTablesInitRegistered(t *testing.T) {
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"iptables-init", "--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sluice-init", "--proxy-uid", "--skip-outbound-ports", "--skip-subnets", "--dry-run", "idempotent"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestIPTablesInitConfig(t *testing.T) {
	tests := []struct {
		args []string
		want api.PodConfig
		err  string
	}{
		{args: nil, want: api.PodConfig{ProxyUID: 2102, OutboundPort: 4140, InboundPort: 4143,
			SkipInboundPorts: []api.PortRange{{Lo: 4190, Hi: 4190}, {Lo: 4191, Hi: 4191}}}},
		{args: []string{"--proxy-uid=3000", "--inbound-port=5143", "--outbound-port=5140", "--skip-inbound-ports=22,9000-9100",
			"--skip-outbound-ports=5432", "--skip-subnets=10.96.0.0/12, fd00::/8"},
			want: api.PodConfig{ProxyUID: 3000, OutboundPort: 5140, InboundPort: 5143,
				SkipInboundPorts:  []api.PortRange{{Lo: 22, Hi: 22}, {Lo: 9000, Hi: 9100}, {Lo: 4190, Hi: 4190}, {Lo: 4191, Hi: 4191}},
				SkipOutboundPorts: []api.PortRange{{Lo: 5432, Hi: 5432}},
				SkipSubnets:       []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/8")}}},
		{args: []string{"--proxy-uid=0"}, err: "--proxy-uid"},
		{args: []string{"--skip-inbound-ports=ssh"}, err: "--skip-inbound-ports"},
		{args: []string{"--skip-outbound-ports=70000"}, err: "--skip-outbound-ports"},
		{args: []string{"--skip-subnets=10.0.0.1"}, err: "--skip-subnets"},
		{args: []string{"--skip-inbound-ports=4143"}, err: "inbound port 4143"},
		{args: []string{"--inbound-port=4140"}, err: "both 4140"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			o := newIPTablesInitOptions()
			if err := o.command().ParseFlags(tt.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.config()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("config %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestIPTablesInitDryRun(t *testing.T) {
	o := newIPTablesInitOptions()
	o.runner = &fakeTables{t: t} // must not be called
	out, err := runIPTablesInit(t, o, "--dry-run", "--skip-outbound-ports=5432", "--skip-subnets=10.96.0.0/12")
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.PodConfig{SkipOutboundPorts: []api.PortRange{{Lo: 5432, Hi: 5432}}, SkipSubnets: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")}}.WithDefaults()
	if want := iptables.RuleSet(cfg, iptables.IPv4) + iptables.RuleSet(cfg, iptables.IPv6); out != want {
		t.Errorf("dry run printed\n%s\nwant the agent's rule sets\n%s", out, want)
	}
}

// fakeTables stands in for iptables-save and iptables-restore of both
// families: it tracks whether Sluice's chains exist.
type fakeTables struct {
	t         *testing.T
	mu        sync.Mutex
	installed map[string]bool // by family: "iptables", "ip6tables"
	calls     []string
	fail      error
}

func (f *fakeTables) Run(_ context.Context, netns string, stdin []byte, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.installed == nil {
		f.installed = map[string]bool{}
	}
	family, verb, _ := strings.Cut(name, "-")
	in := string(stdin)
	call := name
	switch {
	case strings.Contains(in, "-N "+iptables.InboundChain):
		call += " install"
	case strings.Contains(in, "-X "+iptables.InboundChain):
		call += " remove"
	}
	f.calls = append(f.calls, call+" in "+netns)
	if f.fail != nil {
		return nil, f.fail
	}
	switch verb {
	case "save":
		out := "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
		if f.installed[family] {
			out += ":SLUICE_INBOUND - [0:0]\n:SLUICE_OUTPUT - [0:0]\n" +
				"-A PREROUTING -m comment --comment \"sluice: inbound\" -j SLUICE_INBOUND\n" +
				"-A OUTPUT -m comment --comment \"sluice: outbound\" -j SLUICE_OUTPUT\n"
		}
		return []byte(out + "COMMIT\n"), nil
	case "restore":
		switch {
		case strings.Contains(in, "-N "+iptables.InboundChain):
			if f.installed[family] {
				return nil, errors.New("iptables-restore: line 3 failed")
			}
			f.installed[family] = true
		case strings.Contains(in, "-X "+iptables.InboundChain):
			f.installed[family] = false
		}
		return nil, nil
	}
	f.t.Errorf("unexpected command %s %v", name, args)
	return nil, errors.New("unexpected command")
}

func TestIPTablesInitInstallsAndReplaces(t *testing.T) {
	f := &fakeTables{t: t}
	o := newIPTablesInitOptions()
	o.runner = f
	out, err := runIPTablesInit(t, o, "--skip-outbound-ports=5432")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "installed Sluice iptables rules") || !strings.Contains(out, "outbound ports 5432") {
		t.Errorf("output %q", out)
	}
	want := []string{
		"iptables-save in /proc/self/ns/net", "ip6tables-save in /proc/self/ns/net",
		"iptables-restore install in /proc/self/ns/net", "ip6tables-restore install in /proc/self/ns/net",
	}
	if !reflect.DeepEqual(f.calls, want) {
		t.Errorf("calls %q, want %q", f.calls, want)
	}

	// A second run in the same namespace (the init container restarted)
	// replaces the rules.
	f.calls = nil
	out, err = runIPTablesInit(t, o)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "replacing") || !f.installed["iptables"] || !f.installed["ip6tables"] {
		t.Errorf("second run: %q, installed %v", out, f.installed)
	}
	if n := strings.Count(strings.Join(f.calls, "\n"), "remove"); n != 2 {
		t.Errorf("calls %q: want each family's rules removed once", f.calls)
	}

	f.fail = errors.New("exec: \"iptables-save\": executable file not found in $PATH")
	_, err = runIPTablesInit(t, o)
	if err == nil || !strings.Contains(err.Error(), "executable file not found") || !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("error %v", err)
	}
}

// The rest runs the real iptables in a network namespace, as root.

func requireIPTables(t *testing.T) {
	t.Helper()
	netns.RequireRoot(t)
	for _, bin := range []string{"ip", "nsenter", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save"} {
		netns.RequireCommand(t, bin)
	}
}

// newNetns makes a network namespace, removed when the test ends, and
// returns its path.
func newNetns(t *testing.T) string {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	name := "sl-init-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return "/run/netns/" + name
}

// sluiceRules returns the Sluice rules in path's nat table for save
// (iptables-save or ip6tables-save).
func sluiceRules(t *testing.T, path, save string) []string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+path, "--", save, "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", save, err, out)
	}
	var rules []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "SLUICE_") && strings.HasPrefix(l, "-A") {
			rules = append(rules, l)
		}
	}
	return rules
}

func checkInstalled(t *testing.T, path string) {
	t.Helper()
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		rules := strings.Join(sluiceRules(t, path, save), "\n")
		for _, want := range []string{
			"-A PREROUTING -m comment --comment \"sluice: inbound\" -j SLUICE_INBOUND",
			"-A SLUICE_OUTPUT -m owner --uid-owner 2102",
			"--dports 5432",
			"-j REDIRECT --to-ports 4143",
			"-j REDIRECT --to-ports 4140",
		} {
			if strings.Count(rules, want) != 1 {
				t.Errorf("%s: want %q once in\n%s", save, want, rules)
			}
		}
	}
}

func TestIPTablesInitInNetns(t *testing.T) {
	requireIPTables(t)
	path := newNetns(t)
	for range 2 { // idempotent
		if _, err := runIPTablesInit(t, newIPTablesInitOptions(), "--netns="+path, "--skip-outbound-ports=5432"); err != nil {
			t.Fatal(err)
		}
		checkInstalled(t, path)
	}
}

// TestIPTablesInitOwnNetns runs iptables-init as the init container does:
// without --netns, inside the pod's namespace (this test binary re-run
// under nsenter).
func TestIPTablesInitOwnNetns(t *testing.T) {
	if os.Getenv("SLUICE_TEST_IPTABLES_INIT") == "1" {
		out, err := runIPTablesInit(t, newIPTablesInitOptions(), "--skip-outbound-ports=5432")
		if err != nil {
			t.Fatal(err)
		}
		t.Log(out)
		return
	}
	requireIPTables(t)
	path := newNetns(t)
	for range 2 {
		cmd := exec.Command("nsenter", "--net="+path, "--", os.Args[0], "-test.run=^TestIPTablesInitOwnNetns$", "-test.v")
		cmd.Env = append(os.Environ(), "SLUICE_TEST_IPTABLES_INIT=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-init in the namespace: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "installed Sluice iptables rules") {
			t.Errorf("output %s", out)
		}
		checkInstalled(t, path)
	}
}
