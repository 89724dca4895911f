// Package ebpfcheck holds meshctl's checks of the eBPF data plane on one
// node: the local kernel (version, BTF, bpffs, cgroup v2) and the node agent
// (reachable over its admin socket; its feature probes, programs, pins and
// maps). It reads the agent through agent/api only and imports nothing
// eBPF-specific, so meshctl builds anywhere.
package ebpfcheck

import (
	"github.com/sluice-mesh/sluice/internal/mountinfo"

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
)

// The categories of the eBPF checks.
const (
	CategoryKernel healthcheck.CategoryID = "kernel"
	CategoryAgent  healthcheck.CategoryID = "sluice-agent"
)

// IDs of the checks that others require.
const (
	CheckKernelVersion  healthcheck.CheckID = "kernel-version"
	CheckAgentReachable healthcheck.CheckID = "agent-reachable"
)

// Minimum kernel version Sluice supports.
const (
	MinKernelMajor = 5
	MinKernelMinor = 10
)

// Where things are expected on the node.
const (
	bpffsPath  = "/sys/fs/bpf"
	btfVmlinux = "kernel/btf/vmlinux" // under SysRoot
)

// Thresholds of map pressure (entries/max entries).
const (
	mapPressureWarning = 0.8
	mapPressureError   = 0.95
)

// agentAttemptTimeout bounds one attempt to reach the agent.
const agentAttemptTimeout = 5 * time.Second

// Options configure the eBPF checks.
type Options struct {
	// Host is the machine whose kernel is checked.
	Host Host
	// AgentSocket is the agent's admin API socket.
	AgentSocket string
	// Wait is how long the agent check keeps retrying while the agent is
	// unreachable (it may be starting). Zero tries once.
	Wait time.Duration
}

// Categories returns the eBPF checks, in the order they run.
func Categories(o Options) []healthcheck.Category {
	return []healthcheck.Category{
		{ID: CategoryKernel, Checkers: kernelCheckers(o.Host)},
		{ID: CategoryAgent, Checkers: agentCheckers(api.NewClient(o.AgentSocket), o)},
	}
}

func kernelCheckers(h Host) []healthcheck.Checker {
	return []healthcheck.Checker{
		{
			ID:          CheckKernelVersion,
			Description: fmt.Sprintf("kernel is %d.%d or newer", MinKernelMajor, MinKernelMinor),
			Hint: fmt.Sprintf("Sluice needs Linux ≥ %d.%d for sk_lookup inbound steering, cgroup bpf_links and the "+
				"helpers its programs call; upgrade the node's kernel or install the mesh in iptables mode",
				MinKernelMajor, MinKernelMinor),
			Check: func(_ context.Context, s *healthcheck.State) error {
				release, err := h.release()
				if err != nil {
					return err
				}
				major, minor, err := parseRelease(release)
				if err != nil {
					return err
				}
				if major < MinKernelMajor || major == MinKernelMajor && minor < MinKernelMinor {
					return fmt.Errorf("kernel %s is older than %d.%d", release, MinKernelMajor, MinKernelMinor)
				}
				s.Kernel = release
				return nil
			},
			Detail: func(s *healthcheck.State) string { return s.Kernel },
		},
		{
			Description: "kernel BTF is present",
			Hint: "the agent's feature probes need the kernel's type information; use a kernel built with " +
				"CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.10 are)",
			Check: func(context.Context, *healthcheck.State) error {
				path := filepath.Join(h.SysRoot, btfVmlinux)
				if _, err := os.Stat(path); err != nil {
					return fmt.Errorf("find kernel BTF: %w", err)
				}
				return nil
			},
		},
		{
			Description: "BPF filesystem is mounted",
			Hint: "the agent pins its programs and maps under " + bpffsPath + "/sluice so they outlive it; " +
				"mount it with `mount -t bpf bpf " + bpffsPath + "`",
			Check: func(context.Context, *healthcheck.State) error {
				ms, err := h.mounts()
				if err != nil {
					return err
				}
				m, ok := mountinfo.At(ms, bpffsPath)
				if !ok {
					return fmt.Errorf("nothing is mounted at %s", bpffsPath)
				}
				if m.FSType != "bpf" {
					return fmt.Errorf("%s is a %s filesystem, not bpf", bpffsPath, m.FSType)
				}
				return nil
			},
		},
		{
			Description: "cgroup v2 is mounted",
			Hint: "the agent attaches its connect, sockops and getsockopt programs to the cgroup v2 root; boot " +
				"with systemd.unified_cgroup_hierarchy=1 or mount it with " +
				"`mount -t cgroup2 none /sys/fs/cgroup/unified`",
			Check: func(_ context.Context, s *healthcheck.State) error {
				ms, err := h.mounts()
				if err != nil {
					return err
				}
				point, err := cgroup2Mount(ms)
				if err != nil {
					return err
				}
				s.CgroupV2 = point
				return nil
			},
			Detail: func(s *healthcheck.State) string { return "at " + s.CgroupV2 },
		},
	}
}

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted: at
// /sys/fs/cgroup on unified layouts, usually /sys/fs/cgroup/unified on
// hybrid ones. A cgroup2 mount hidden by a later mount does not count.
func cgroup2Mount(ms []mount) (string, error) {
	var v1 []string
	for i, m := range ms {
		switch m.FSType {
		case "cgroup2":
			if top, _ := mountinfo.At(ms[i:], m.Point); top.FSType == "cgroup2" {
				return m.Point, nil
			}
		case "cgroup":
			v1 = append(v1, m.Point)
		}
	}
	if len(v1) > 0 {
		return "", fmt.Errorf("no cgroup2 mount; only cgroup v1 hierarchies (%s)", strings.Join(v1, ", "))
	}
	return "", errors.New("no cgroup2 mount")
}

func agentCheckers(c *api.Client, o Options) []healthcheck.Checker {
	requires := []healthcheck.CheckID{CheckAgentReachable}
	return []healthcheck.Checker{
		{
			ID:          CheckAgentReachable,
			Description: "agent is reachable",
			Hint: fmt.Sprintf("is sluice-agent running on this node? It serves its admin API on %s: start it with "+
				"`sluice-agent run`, or point meshctl at its socket with --agent-socket", o.AgentSocket),
			RetryDeadline: o.Wait,
			Check: func(ctx context.Context, s *healthcheck.State) error {
				ctx, cancel := context.WithTimeout(ctx, agentAttemptTimeout)
				defer cancel()
				st, err := c.Status(ctx)
				var dial *net.OpError
				if errors.Is(err, api.ErrUnreachable) && errors.As(err, &dial) {
					// Drop net/http's `Get "http://agent/v1/status":` wrapping.
					return fmt.Errorf("%w at %s: %w", api.ErrUnreachable, o.AgentSocket, dial)
				}
				if err != nil {
					return fmt.Errorf("get agent status: %w", err)
				}
				s.Agent = &st
				return nil
			},
			Detail: func(s *healthcheck.State) string {
				return strings.TrimSpace(fmt.Sprintf("%s %s mode", s.Agent.Version, s.Agent.Mode))
			},
		},
		{
			Description: "kernel features are supported",
			Requires:    requires,
			Expand:      featureCheckers,
		},
		{
			Description: "programs are attached",
			Hint:        "the agent loads and attaches its programs at start; see its log (journalctl -u sluice-agent or kubectl logs) for why one is not attached",
			Requires:    requires,
			Check:       checkPrograms,
		},
		{
			Description: "pins are present",
			Hint: "the agent pins programs, links and maps under its pin root so that a restarted agent adopts " +
				"them; a missing pin means state was removed behind its back: restart the agent to recreate it",
			Requires: requires,
			Check:    checkPins,
		},
		{
			Description: "maps have room",
			Hint: "a full map stops steering new pods or connections; raise the agent's --max-pods " +
				"(map sizes follow it) or find what is filling the map",
			Requires: requires,
			Check:    checkMaps,
		},
	}
}

// featureCheckers turns the agent's feature probes into one check each:
// required features fail the run when missing, optional ones warn.
func featureCheckers(s *healthcheck.State) []healthcheck.Checker {
	st := s.Agent
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

func checkPrograms(_ context.Context, s *healthcheck.State) error {
	st := s.Agent
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

// checkPins stats every path the agent says it pinned. It runs on the node,
// so the agent's pin root is a path on this machine.
func checkPins(_ context.Context, s *healthcheck.State) error {
	st := s.Agent
	if st.PinRoot == "" {
		return errors.New("the agent reports no pin root")
	}
	if len(st.Pins) == 0 {
		return fmt.Errorf("the agent reports no pins under %s", st.PinRoot)
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
func checkMaps(_ context.Context, s *healthcheck.State) error {
	var lines []string
	worst := 0.0
	for _, m := range s.Agent.Maps {
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
