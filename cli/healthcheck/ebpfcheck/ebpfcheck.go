// Package ebpfcheck holds meshctl's checks of the eBPF data plane: on the
// machine meshctl runs on, the local kernel (version, BTF, bpffs, cgroup v2)
// and node agent (reachable over its admin socket; its feature probes,
// programs, pins and maps); across a cluster, the same of every node, read
// through the API server from each node's agent pod (its status) or, before
// install, from a short-lived probe pod (the node's kernel facts). It reads
// the agent through agent/api only and imports nothing eBPF-specific, so
// meshctl builds anywhere.
package ebpfcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/internal/nodefacts"
)

// The categories of the local eBPF checks.
const (
	CategoryKernel healthcheck.CategoryID = "kernel"
	CategoryAgent  healthcheck.CategoryID = "sluice-agent"
)

// IDs of the checks that others require. The checks of a node in a cluster
// have these IDs with "/<node>" appended.
const (
	CheckKernelVersion  healthcheck.CheckID = "kernel-version"
	CheckAgentReachable healthcheck.CheckID = "agent-reachable"
)

// Minimum kernel version Sluice supports.
const (
	MinKernelMajor = nodefacts.MinKernelMajor
	MinKernelMinor = nodefacts.MinKernelMinor
)

// Thresholds of map pressure (entries/max entries).
const (
	mapPressureWarning = 0.8
	mapPressureError   = 0.95
)

// agentAttemptTimeout bounds one attempt to reach the agent.
const agentAttemptTimeout = 5 * time.Second

// StatusSource returns an agent's status.
type StatusSource func(ctx context.Context) (api.Status, error)

// SocketSource reads the status of the agent serving its admin API on
// socket. Its errors wrap api.ErrUnreachable when the agent is not there.
func SocketSource(socket string) StatusSource {
	c := api.NewClient(socket)
	return func(ctx context.Context) (api.Status, error) {
		st, err := c.Status(ctx)
		var dial *net.OpError
		if errors.Is(err, api.ErrUnreachable) && errors.As(err, &dial) {
			// Drop net/http's `Get "http://agent/v1/status":` wrapping.
			return api.Status{}, fmt.Errorf("%w at %s: %w", api.ErrUnreachable, socket, dial)
		}
		if err != nil {
			return api.Status{}, fmt.Errorf("get agent status: %w", err)
		}
		return st, nil
	}
}

// Options configure the local eBPF checks.
type Options struct {
	// Host is the machine whose kernel is checked.
	Host Host
	// AgentSocket is the agent's admin API socket.
	AgentSocket string
	// Wait is how long the agent check keeps retrying while the agent is
	// unreachable (it may be starting). Zero tries once.
	Wait time.Duration
}

// Categories returns the local eBPF checks, in the order they run.
func Categories(o Options) []healthcheck.Category {
	local := func(*healthcheck.State) nodefacts.Facts { return o.Host.Gather() }
	agent := agentTarget{
		source: SocketSource(o.AgentSocket),
		hint: fmt.Sprintf("is sluice-agent running on this node? It serves its admin API on %s: start it with "+
			"`sluice-agent run`, or point meshctl at its socket with --agent-socket", o.AgentSocket),
		wait: o.Wait,
		pins: statPins,
	}
	return []healthcheck.Category{
		{ID: CategoryKernel, Checkers: KernelCheckers("", nil, local)},
		{ID: CategoryAgent, Checkers: agent.checkers()},
	}
}

// nodeID is id for the checks of node ("" is this machine).
func nodeID(id healthcheck.CheckID, node string) healthcheck.CheckID {
	if node == "" {
		return id
	}
	return id + healthcheck.CheckID("/"+node)
}

// Hints of the kernel checks, shared by the local, agent and pre-install
// checks.
var (
	hintKernel = fmt.Sprintf("Sluice needs Linux ≥ %d.%d for sk_lookup inbound steering, cgroup bpf_links and the "+
		"helpers its programs call; upgrade the node's kernel or install the mesh in iptables mode",
		MinKernelMajor, MinKernelMinor)
	hintCgroup2 = "the agent attaches its connect, sockops and getsockopt programs to the cgroup v2 root; boot " +
		"with systemd.unified_cgroup_hierarchy=1 or mount it with " +
		"`mount -t cgroup2 none /sys/fs/cgroup/unified`"
)

// KernelCheckers are the checks of one node's kernel facts, read with facts
// when each check runs: the kernel is new enough, has BTF, has the BPF
// filesystem and cgroup v2 mounted. node names the node for the checks'
// IDs ("" for this machine); each check requires requires.
func KernelCheckers(node string, requires []healthcheck.CheckID, facts func(*healthcheck.State) nodefacts.Facts) []healthcheck.Checker {
	return []healthcheck.Checker{
		kernelVersionChecker(node, requires, facts),
		{
			Description: "kernel BTF is present",
			Hint: "the agent's feature probes need the kernel's type information; use a kernel built with " +
				"CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.10 are)",
			Requires: requires,
			Check:    func(_ context.Context, s *healthcheck.State) error { return facts(s).CheckBTF() },
		},
		{
			Description: "BPF filesystem is mounted",
			Hint: "the agent pins its programs and maps under " + nodefacts.BPFFSPath + "/sluice so they outlive it; " +
				"mount it with `mount -t bpf bpf " + nodefacts.BPFFSPath + "`",
			Requires: requires,
			Check:    func(_ context.Context, s *healthcheck.State) error { return facts(s).CheckBPFFS() },
		},
		cgroup2Checker(requires, facts),
	}
}

func kernelVersionChecker(node string, requires []healthcheck.CheckID, facts func(*healthcheck.State) nodefacts.Facts) healthcheck.Checker {
	return healthcheck.Checker{
		ID:          nodeID(CheckKernelVersion, node),
		Description: fmt.Sprintf("kernel is %d.%d or newer", MinKernelMajor, MinKernelMinor),
		Hint:        hintKernel,
		Requires:    requires,
		Check:       func(_ context.Context, s *healthcheck.State) error { return facts(s).CheckKernel() },
		Detail:      func(s *healthcheck.State) string { return facts(s).Kernel },
	}
}

func cgroup2Checker(requires []healthcheck.CheckID, facts func(*healthcheck.State) nodefacts.Facts) healthcheck.Checker {
	return healthcheck.Checker{
		Description: "cgroup v2 is mounted",
		Hint:        hintCgroup2,
		Requires:    requires,
		Check:       func(_ context.Context, s *healthcheck.State) error { return facts(s).CheckCgroup2() },
		Detail:      func(s *healthcheck.State) string { return "at " + facts(s).Cgroup2Mount },
	}
}

// agentTarget is the agent that agent checks look at.
type agentTarget struct {
	// node is the agent's node, "" for the one meshctl runs on. The agent's
	// status is kept in State.Agents[node].
	node string
	// category, when set, is where the checks are reported (they are then
	// expanded from a checker of another category).
	category healthcheck.CategoryID
	source   StatusSource
	// hint is the reachability check's.
	hint string
	// wait is how long reaching the agent is retried.
	wait time.Duration
	// requires are the reachability check's prerequisites.
	requires []healthcheck.CheckID
	// pins checks the agent's pins.
	pins func(*api.Status) error
	// kernel adds the checks of the kernel facts the status reports (for an
	// agent on another machine, whose kernel meshctl cannot read).
	kernel bool
}

// checkers are the agent checks: it is reachable, runs in eBPF mode with
// the kernel features it needs, and its programs, pins and maps are sane.
func (a agentTarget) checkers() []healthcheck.Checker {
	reachable := nodeID(CheckAgentReachable, a.node)
	requires := []healthcheck.CheckID{reachable}
	status := func(s *healthcheck.State) *api.Status { return s.Agents[a.node] }
	out := []healthcheck.Checker{{
		ID:            reachable,
		Description:   "agent is reachable",
		Hint:          a.hint,
		RetryDeadline: a.wait,
		Requires:      a.requires,
		Check: func(ctx context.Context, s *healthcheck.State) error {
			ctx, cancel := context.WithTimeout(ctx, agentAttemptTimeout)
			defer cancel()
			st, err := a.source(ctx)
			if err != nil {
				return err
			}
			s.SetAgent(a.node, st)
			return nil
		},
		Detail: func(s *healthcheck.State) string {
			st := status(s)
			return strings.TrimSpace(fmt.Sprintf("%s %s mode", st.Version, st.Mode))
		},
	}}
	if a.kernel {
		facts := func(s *healthcheck.State) nodefacts.Facts {
			st := status(s)
			return nodefacts.Facts{Kernel: st.Kernel, Cgroup2Mount: st.CgroupV2}
		}
		kernel, cgroup := kernelVersionChecker(a.node, requires, facts), cgroup2Checker(requires, facts)
		for _, ch := range []*healthcheck.Checker{&kernel, &cgroup} {
			check := ch.Check
			ch.Check = func(ctx context.Context, s *healthcheck.State) error {
				if err := ebpfMode(status(s)); err != nil {
					return err
				}
				return check(ctx, s)
			}
		}
		out = append(out, kernel, cgroup)
	}
	out = append(out,
		healthcheck.Checker{
			Description: "kernel features are supported",
			Requires:    requires,
			Expand:      func(s *healthcheck.State) []healthcheck.Checker { return featureCheckers(status(s)) },
		},
		healthcheck.Checker{
			Description: "programs are attached",
			Hint:        "the agent loads and attaches its programs at start; see its log (journalctl -u sluice-agent or kubectl logs) for why one is not attached",
			Requires:    requires,
			Check:       ifEBPF(status, checkPrograms),
		},
		healthcheck.Checker{
			Description: "pins are present",
			Hint: "the agent pins programs, links and maps under its pin root so that a restarted agent adopts " +
				"them; a missing pin means state was removed behind its back: restart the agent to recreate it",
			Requires: requires,
			Check:    ifEBPF(status, a.pins),
		},
		healthcheck.Checker{
			Description: "maps have room",
			Hint: "a full map stops steering new pods or connections; raise the agent's --max-pods " +
				"(map sizes follow it) or find what is filling the map",
			Requires: requires,
			Check:    ifEBPF(status, checkMaps),
		},
	)
	for i := range out {
		out[i].Category = a.category
	}
	return out
}

// ebpfMode skips the checks of the eBPF data plane when the agent runs in
// iptables mode, which loads no program.
func ebpfMode(st *api.Status) error {
	if st.Mode == api.ModeIPTables {
		return healthcheck.Skip(errors.New("the agent runs in iptables mode, which loads no eBPF programs"))
	}
	return nil
}

// ifEBPF runs check on the status of the agent when it runs in eBPF mode.
func ifEBPF(status func(*healthcheck.State) *api.Status, check func(*api.Status) error) func(context.Context, *healthcheck.State) error {
	return func(_ context.Context, s *healthcheck.State) error {
		st := status(s)
		if err := ebpfMode(st); err != nil {
			return err
		}
		return check(st)
	}
}

// featureCheckers turns the agent's feature probes into one check each:
// required features fail the run when missing, optional ones warn.
func featureCheckers(st *api.Status) []healthcheck.Checker {
	if err := ebpfMode(st); err != nil {
		return []healthcheck.Checker{{
			Description: "kernel features are supported",
			Check:       func(context.Context, *healthcheck.State) error { return err },
		}}
	}
	if len(st.Features) == 0 {
		return []healthcheck.Checker{{
			Description: "kernel features are supported",
			Hint:        "the agent reports its feature probes in its status; an agent older than this meshctl may not",
			Warning:     true,
			Check: func(context.Context, *healthcheck.State) error {
				return errors.New("the agent reported no feature probes")
			},
		}}
	}
	out := make([]healthcheck.Checker, 0, len(st.Features))
	for _, f := range st.Features {
		hint := fmt.Sprintf("Sluice cannot steer traffic in eBPF mode without %s: upgrade the node to Linux %s or newer, or install the mesh in iptables mode", f.Name, f.MinKernel)
		if !f.Required {
			hint = fmt.Sprintf("optional: Sluice works without %s but turns off the acceleration that uses it; Linux %s or newer has it", f.Name, f.MinKernel)
		}
		out = append(out, healthcheck.Checker{
			Description: "kernel supports " + f.Name,
			Hint:        hint,
			Warning:     !f.Required,
			Check: func(context.Context, *healthcheck.State) error {
				if f.OK {
					return nil
				}
				msg := fmt.Sprintf("%s is missing: it needs Linux %s or newer, this is %s", f.Name, f.MinKernel, st.Kernel)
				if f.Error != "" {
					msg += " (probe: " + f.Error + ")"
				}
				return errors.New(msg)
			},
		})
	}
	return out
}

func checkPrograms(st *api.Status) error {
	if len(st.Programs) == 0 {
		return fmt.Errorf("the agent reports no loaded programs (mode %q)", st.Mode)
	}
	var bad []string
	for _, p := range st.Programs {
		if p.Attached {
			continue
		}
		what := p.Type
		if p.AttachType != "" {
			what += "/" + p.AttachType
		}
		if p.AttachedTo != "" {
			what += " on " + p.AttachedTo
		}
		bad = append(bad, fmt.Sprintf("%s (%s)", p.Name, what))
	}
	if len(bad) > 0 {
		return fmt.Errorf("programs not attached (%d of %d):\n  %s", len(bad), len(st.Programs), strings.Join(bad, "\n  "))
	}
	return nil
}

// reportsPins fails when the agent reports no pin root or no pins.
func reportsPins(st *api.Status) error {
	if st.PinRoot == "" {
		return errors.New("the agent reports no pin root")
	}
	if len(st.Pins) == 0 {
		return fmt.Errorf("the agent reports no pins under %s", st.PinRoot)
	}
	return nil
}

// statPins stats every path the agent says it pinned. It runs on the node,
// so the agent's pin root is a path on this machine.
func statPins(st *api.Status) error {
	if err := reportsPins(st); err != nil {
		return err
	}
	var missing, unreadable []string
	for _, p := range st.Pins {
		_, err := os.Stat(filepath.Join(st.PinRoot, p))
		switch {
		case err == nil:
		case errors.Is(err, os.ErrNotExist):
			missing = append(missing, p)
		default:
			unreadable = append(unreadable, err.Error())
		}
	}
	var msgs []string
	if len(missing) > 0 {
		msgs = append(msgs, fmt.Sprintf("pins missing under %s (%d of %d):\n  %s", st.PinRoot, len(missing), len(st.Pins), strings.Join(missing, "\n  ")))
	}
	if len(unreadable) > 0 {
		msgs = append(msgs, fmt.Sprintf("pins not checked (run meshctl as root):\n  %s", strings.Join(unreadable, "\n  ")))
	}
	if len(msgs) > 0 {
		return errors.New(strings.Join(msgs, "\n"))
	}
	return nil
}

// checkMaps fails when a map is at least 95% full and warns from 80%.
func checkMaps(st *api.Status) error {
	var lines []string
	worst := 0.0
	for _, m := range st.Maps {
		p := m.Pressure()
		if p < mapPressureWarning {
			continue
		}
		worst = max(worst, p)
		lines = append(lines, fmt.Sprintf("map %s is %d%% full (%d/%d entries)", m.Name, int(100*p), m.Entries, m.MaxEntries))
	}
	switch {
	case worst >= mapPressureError:
		return errors.New(strings.Join(lines, "\n"))
	case worst >= mapPressureWarning:
		return healthcheck.Warn(errors.New(strings.Join(lines, "\n")))
	}
	return nil
}
