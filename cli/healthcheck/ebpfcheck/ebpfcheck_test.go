package ebpfcheck

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/internal/checktest"
	"github.com/sluice-mesh/sluice/cli/internal/fakeagent"
	"github.com/sluice-mesh/sluice/internal/nodefacts/nodefactstest"
)

// Mount tables seen on real machines.
const (
	hybridMounts  = nodefactstest.HybridMounts
	unifiedMounts = nodefactstest.UnifiedMounts
	v1Mounts      = nodefactstest.V1Mounts
)

// fixtureHost returns a Host whose /proc and /sys are fixture directories
// holding mountinfo, and BTF when btf is set, and whose uname says release.
func fixtureHost(t *testing.T, release, mountinfo string, btf bool) Host {
	t.Helper()
	h := nodefactstest.Node{Mounts: mountinfo, BTF: btf}.Host(t)
	h.Uname = func() (string, error) { return release, nil }
	return h
}

var writeFile = nodefactstest.WriteFile

// runCategory runs one category of checks and returns its results by
// description, and whether the run passed.
func runCategory(t *testing.T, o Options, id healthcheck.CategoryID) (map[string]healthcheck.Result, bool) {
	t.Helper()
	cats := Categories(o)
	if err := healthcheck.Validate(cats); err != nil {
		t.Fatal(err)
	}
	var only []healthcheck.Category
	for _, c := range cats {
		if c.ID == id {
			only = append(only, c)
		}
	}
	got := map[string]healthcheck.Result{}
	success := healthcheck.Run(context.Background(), only, &healthcheck.State{}, func(r healthcheck.Result) {
		if !r.Retrying {
			got[r.Description] = r
		}
	})
	return got, success
}

// expect is the wanted outcome of one check and a fragment of its error.
type expect struct {
	outcome healthcheck.Outcome
	errHas  string
}

func compare(t *testing.T, got map[string]healthcheck.Result, want map[string]expect) {
	t.Helper()
	w := map[string]checktest.Expect{}
	for desc, e := range want {
		x := checktest.Expect{Outcome: e.outcome}
		if e.errHas != "" {
			x.ErrHas = []string{e.errHas}
		}
		w[desc] = x
	}
	checktest.Compare(t, got, w)
}

func TestKernelChecks(t *testing.T) {
	for _, tc := range []struct {
		name    string
		release string
		mounts  string
		btf     bool
		wantOK  bool
		want    map[string]expect
	}{
		{
			name: "hybrid", release: "6.18.44-fc-v669", mounts: hybridMounts, btf: true, wantOK: true,
			want: map[string]expect{
				"kernel is 5.10 or newer":   {outcome: healthcheck.OutcomeSuccess},
				"kernel BTF is present":     {outcome: healthcheck.OutcomeSuccess},
				"BPF filesystem is mounted": {outcome: healthcheck.OutcomeSuccess},
				"cgroup v2 is mounted":      {outcome: healthcheck.OutcomeSuccess},
			},
		},
		{
			name: "unified, no bpffs", release: "5.10.0-28-amd64", mounts: unifiedMounts, btf: true,
			want: map[string]expect{
				"kernel is 5.10 or newer":   {outcome: healthcheck.OutcomeSuccess},
				"kernel BTF is present":     {outcome: healthcheck.OutcomeSuccess},
				"BPF filesystem is mounted": {healthcheck.OutcomeError, "nothing is mounted at /sys/fs/bpf"},
				"cgroup v2 is mounted":      {outcome: healthcheck.OutcomeSuccess},
			},
		},
		{
			name: "old v1 kernel", release: "4.19.0-17-amd64", mounts: v1Mounts,
			want: map[string]expect{
				"kernel is 5.10 or newer":   {healthcheck.OutcomeError, "kernel 4.19.0-17-amd64 is older than 5.10"},
				"kernel BTF is present":     {healthcheck.OutcomeError, "find kernel BTF"},
				"BPF filesystem is mounted": {healthcheck.OutcomeError, "/sys/fs/bpf is a tmpfs filesystem, not bpf"},
				"cgroup v2 is mounted":      {healthcheck.OutcomeError, "only cgroup v1 hierarchies (/sys/fs/cgroup/cpu)"},
			},
		},
		{
			name: "5.9", release: "5.9.16", mounts: unifiedMounts, btf: true,
			want: map[string]expect{
				"kernel is 5.10 or newer":   {healthcheck.OutcomeError, "older than 5.10"},
				"kernel BTF is present":     {outcome: healthcheck.OutcomeSuccess},
				"BPF filesystem is mounted": {outcome: healthcheck.OutcomeError},
				"cgroup v2 is mounted":      {outcome: healthcheck.OutcomeSuccess},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Host: fixtureHost(t, tc.release, tc.mounts, tc.btf)}
			got, ok := runCategory(t, o, CategoryKernel)
			if ok != tc.wantOK {
				t.Errorf("run passed = %v, want %v", ok, tc.wantOK)
			}
			compare(t, got, tc.want)
		})
	}
}

func TestKernelCheckDetails(t *testing.T) {
	o := Options{Host: fixtureHost(t, "6.18.44-fc-v669", hybridMounts, true)}
	got, _ := runCategory(t, o, CategoryKernel)
	if d := got["kernel is 5.10 or newer"].Detail; d != "6.18.44-fc-v669" {
		t.Errorf("kernel detail = %q", d)
	}
	if d := got["cgroup v2 is mounted"].Detail; d != "at /sys/fs/cgroup/unified" {
		t.Errorf("cgroup detail = %q", d)
	}
}

func TestKernelReleaseFromProc(t *testing.T) {
	h := fixtureHost(t, "", hybridMounts, true)
	h.Uname = nil
	writeFile(t, filepath.Join(h.ProcRoot, "sys/kernel/osrelease"), "6.1.0-18-amd64\n")
	got, _ := runCategory(t, Options{Host: h}, CategoryKernel)
	if r := got["kernel is 5.10 or newer"]; r.Outcome != healthcheck.OutcomeSuccess || r.Detail != "6.1.0-18-amd64" {
		t.Errorf("kernel check reading osrelease = %s %v (%q)", r.Outcome, r.Err, r.Detail)
	}
	h.Uname = func() (string, error) { return "", errors.New("boom") }
	got, _ = runCategory(t, Options{Host: h}, CategoryKernel)
	if r := got["kernel is 5.10 or newer"]; r.Outcome != healthcheck.OutcomeError || r.Err.Error() != "boom" {
		t.Errorf("kernel check with failing uname = %s %v", r.Outcome, r.Err)
	}
}

// healthyStatus is what a working agent reports; its pins exist under a new
// directory.
func healthyStatus(t *testing.T) api.Status {
	t.Helper()
	root := filepath.Join(t.TempDir(), "sluice")
	st := api.Status{
		Version: "v0.1.0", Mode: api.ModeEBPF, PinRoot: root, CgroupV2: "/sys/fs/cgroup/unified",
		Kernel: "6.18.44-fc-v669", RedirectEnabled: true, Enrollments: 2,
		Features: []api.Feature{
			{Name: "cgroup/connect4", MinKernel: "4.17", Required: true, OK: true},
			{Name: "sk_lookup", MinKernel: "5.9", Required: true, OK: true},
			{Name: "sk_msg redirect", MinKernel: "4.17", OK: true},
		},
		Programs: []api.Program{
			{Name: "sluice_connect4", Type: "cgroup_sock_addr", AttachType: "cgroup_inet4_connect", AttachedTo: "/sys/fs/cgroup/unified", Attached: true, ID: 10},
			{Name: "sluice_sk_msg", Type: "sk_msg", AttachType: "sk_msg_verdict", AttachedTo: "sock_pairs", Attached: true, ID: 11},
		},
		Pins: []string{"progs/sluice_connect4", "links/connect4", "maps/pods"},
		Maps: []api.MapUsage{
			{Name: "pods", Entries: 2, MaxEntries: 1024},
			{Name: "sk_orig", Entries: -1, MaxEntries: 0},
		},
	}
	for _, p := range st.Pins {
		writeFile(t, filepath.Join(root, p), "")
	}
	return st
}

func TestAgentChecks(t *testing.T) {
	pass := expect{outcome: healthcheck.OutcomeSuccess}
	healthy := func() map[string]expect {
		return map[string]expect{
			"agent is reachable":              pass,
			"kernel supports cgroup/connect4": pass,
			"kernel supports sk_lookup":       pass,
			"kernel supports sk_msg redirect": pass,
			"programs are attached":           pass,
			"pins are present":                pass,
			"maps have room":                  pass,
		}
	}
	for _, tc := range []struct {
		name   string
		break_ func(t *testing.T, st *api.Status)
		wantOK bool
		want   func(map[string]expect)
	}{
		{name: "healthy", wantOK: true, want: func(map[string]expect) {}},
		{
			name: "required feature missing",
			break_: func(_ *testing.T, st *api.Status) {
				st.Features[1].OK, st.Features[1].Error = false, "not supported"
			},
			want: func(w map[string]expect) {
				w["kernel supports sk_lookup"] = expect{healthcheck.OutcomeError, "sk_lookup is missing: it needs Linux 5.9 or newer, this is 6.18.44-fc-v669 (probe: not supported)"}
			},
		},
		{
			name:   "optional feature missing",
			break_: func(_ *testing.T, st *api.Status) { st.Features[2].OK = false },
			wantOK: true,
			want: func(w map[string]expect) {
				w["kernel supports sk_msg redirect"] = expect{healthcheck.OutcomeWarning, "needs Linux 4.17"}
			},
		},
		{
			name:   "no feature probes",
			break_: func(_ *testing.T, st *api.Status) { st.Features = nil },
			wantOK: true,
			want: func(w map[string]expect) {
				delete(w, "kernel supports cgroup/connect4")
				delete(w, "kernel supports sk_lookup")
				delete(w, "kernel supports sk_msg redirect")
				w["kernel features are supported"] = expect{healthcheck.OutcomeWarning, "no feature probes"}
			},
		},
		{
			name:   "program detached",
			break_: func(_ *testing.T, st *api.Status) { st.Programs[1].Attached = false },
			want: func(w map[string]expect) {
				w["programs are attached"] = expect{healthcheck.OutcomeError, "programs not attached (1 of 2):\n  sluice_sk_msg (sk_msg/sk_msg_verdict on sock_pairs)"}
			},
		},
		{
			name:   "no programs",
			break_: func(_ *testing.T, st *api.Status) { st.Programs = nil },
			want: func(w map[string]expect) {
				w["programs are attached"] = expect{healthcheck.OutcomeError, "no loaded programs"}
			},
		},
		{
			name: "pin missing",
			break_: func(t *testing.T, st *api.Status) {
				if err := os.Remove(filepath.Join(st.PinRoot, "links/connect4")); err != nil {
					t.Fatal(err)
				}
			},
			want: func(w map[string]expect) {
				w["pins are present"] = expect{healthcheck.OutcomeError, "(1 of 3):\n  links/connect4"}
			},
		},
		{
			name:   "no pins",
			break_: func(_ *testing.T, st *api.Status) { st.Pins = nil },
			want: func(w map[string]expect) {
				w["pins are present"] = expect{healthcheck.OutcomeError, "no pins under"}
			},
		},
		{
			name: "iptables mode",
			break_: func(_ *testing.T, st *api.Status) {
				*st = api.Status{Version: "v0.1.0", Mode: api.ModeIPTables, Kernel: "4.19.0", Enrollments: 2}
			},
			wantOK: true,
			want: func(w map[string]expect) {
				skip := expect{healthcheck.OutcomeSkipped, "not run: the agent runs in iptables mode, which loads no eBPF programs"}
				delete(w, "kernel supports cgroup/connect4")
				delete(w, "kernel supports sk_lookup")
				delete(w, "kernel supports sk_msg redirect")
				w["kernel features are supported"] = skip
				w["programs are attached"] = skip
				w["pins are present"] = skip
				w["maps have room"] = skip
			},
		},
		{
			name:   "map filling",
			break_: func(_ *testing.T, st *api.Status) { st.Maps[0].Entries = 870 },
			wantOK: true,
			want: func(w map[string]expect) {
				w["maps have room"] = expect{healthcheck.OutcomeWarning, "map pods is 84% full (870/1024 entries)"}
			},
		},
		{
			name: "map full",
			break_: func(_ *testing.T, st *api.Status) {
				st.Maps[0].Entries = 1000
				st.Maps = append(st.Maps, api.MapUsage{Name: "pod_ips", Entries: 850, MaxEntries: 1000})
			},
			want: func(w map[string]expect) {
				w["maps have room"] = expect{healthcheck.OutcomeError, "map pods is 97% full (1000/1024 entries)\nmap pod_ips is 85% full (850/1000 entries)"}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := healthyStatus(t)
			if tc.break_ != nil {
				tc.break_(t, &st)
			}
			want := healthy()
			tc.want(want)
			got, ok := runCategory(t, Options{AgentSocket: fakeagent.Serve(t, st)}, CategoryAgent)
			if ok != tc.wantOK {
				t.Errorf("run passed = %v, want %v", ok, tc.wantOK)
			}
			compare(t, got, want)
		})
	}
}

func TestAgentUnreachable(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "missing.sock")
	got, ok := runCategory(t, Options{AgentSocket: socket}, CategoryAgent)
	if ok {
		t.Error("run passed without an agent")
	}
	skipped := expect{healthcheck.OutcomeSkipped, `not run: requires "agent is reachable", which failed`}
	compare(t, got, map[string]expect{
		"agent is reachable":            {healthcheck.OutcomeError, "agent unreachable at " + socket},
		"kernel features are supported": skipped,
		"programs are attached":         skipped,
		"pins are present":              skipped,
		"maps have room":                skipped,
	})
	if r := got["agent is reachable"]; !errors.Is(r.Err, api.ErrUnreachable) || !strings.Contains(r.Hint, socket) || !strings.Contains(r.Hint, "sluice-agent run") {
		t.Errorf("agent check: err %v, hint %q", r.Err, r.Hint)
	}
}
