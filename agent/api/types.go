// Package api defines the node agent's local admin API: the JSON types
// exchanged over its unix socket and a client for it. It imports nothing
// eBPF-specific, so the CLI and the Kubernetes pod watcher can use it.
//
// Endpoints (HTTP/1.1 over the unix socket, JSON bodies):
//
//	GET    /v1/enrollments            list enrollments
//	POST   /v1/enrollments            enroll a pod (EnrollRequest → Enrollment)
//	DELETE /v1/enrollments/{cookie}   unenroll a pod by netns cookie
//	GET    /v1/status                 programs, pins, maps and features (Status)
//
// Errors come back as a non-2xx status with an Error body.
package api

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Defaults of PodConfig, as in Linkerd: the proxy's ports and user.
const (
	DefaultProxyUID     = 2102
	DefaultOutboundPort = 4140
	DefaultInboundPort  = 4143
	DefaultTapPort      = 4190
	DefaultAdminPort    = 4191
	// DefaultProbePort is the port the proxy answers the steering probe on
	// (sluice-proxy's SLUICE_PROXY_STEERING_PROBE_PORT).
	DefaultProbePort = 4144
)

// The steering probe: after enrolling a pod whose config has a ProbePort,
// the agent connects to the pod's address on that port and sends
// ProbeRequest. The connection is steered like any other into the proxy's
// inbound listener, which answers ProbeReply and from then on reports
// ready. The proxy defines the same lines (proxy/server).
const (
	ProbeRequest = "SLUICE-PROBE\n"
	ProbeReply   = "SLUICE-STEERED\n"
)

// Limits of one pod's configuration, fixed by the eBPF map layout.
const (
	MaxPortRanges = 16
	MaxSubnets    = 8
)

// Mode says how a pod's traffic reaches its proxy.
type Mode string

// The interception modes.
const (
	ModeEBPF     Mode = "ebpf"
	ModeIPTables Mode = "iptables"
)

// PortRange is an inclusive range of TCP ports. In JSON and on the command
// line it is written "8080" or "9000-9100".
type PortRange struct {
	Lo uint16
	Hi uint16
}

// String returns "lo" or "lo-hi".
func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// Contains reports whether port lies in r.
func (r PortRange) Contains(port uint16) bool { return port >= r.Lo && port <= r.Hi }

// MarshalText implements encoding.TextMarshaler.
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *PortRange) UnmarshalText(b []byte) error {
	p, err := ParsePortRange(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

// ParsePortRange parses "8080" or "9000-9100". Ports must lie in 1..65535
// and lo must not exceed hi.
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s), "-")
	l, err := parsePort(lo)
	if err != nil {
		return PortRange{}, fmt.Errorf("parse port range %q: %w", s, err)
	}
	h := l
	if isRange {
		if h, err = parsePort(hi); err != nil {
			return PortRange{}, fmt.Errorf("parse port range %q: %w", s, err)
		}
	}
	if l > h {
		return PortRange{}, fmt.Errorf("parse port range %q: %d is above %d", s, l, h)
	}
	return PortRange{Lo: l, Hi: h}, nil
}

// ParsePortRanges parses a comma-separated list such as "22,9000-9100", as
// found in the config.sluice.io/skip-*-ports annotations. Empty is no ranges.
func ParsePortRanges(s string) ([]PortRange, error) {
	var out []PortRange
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		r, err := ParsePortRange(f)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// ParsePrefixes parses a comma-separated list of CIDRs such as
// "10.96.0.0/12, fd00::/8", as found in the config.sluice.io/skip-subnets
// annotation. Empty is none.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("parse subnet: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d is out of range 1-65535", n)
	}
	return uint16(n), nil
}

// PodConfig is the per-pod steering configuration. Zero fields take the
// defaults above (see WithDefaults).
type PodConfig struct {
	// ProxyUID is the user the proxy runs as; its sockets are never steered.
	ProxyUID uint32 `json:"proxyUID,omitempty"`
	// OutboundPort is the proxy's outbound listener on loopback.
	OutboundPort uint16 `json:"outboundPort,omitempty"`
	// InboundPort is the proxy's inbound listener on 0.0.0.0.
	InboundPort uint16 `json:"inboundPort,omitempty"`
	// SkipInboundPorts are destination ports on the pod that bypass the proxy.
	// The proxy's tap and admin ports (4190, 4191) are always skipped.
	SkipInboundPorts []PortRange `json:"skipInboundPorts,omitempty"`
	// SkipOutboundPorts are destination ports the pod connects to directly.
	SkipOutboundPorts []PortRange `json:"skipOutboundPorts,omitempty"`
	// SkipSubnets are destination networks the pod connects to directly.
	SkipSubnets []netip.Prefix `json:"skipSubnets,omitempty"`
	// DisableRedirect turns off the sk_msg acceleration for this pod (eBPF
	// mode); connections are still steered.
	DisableRedirect bool `json:"disableRedirect,omitempty"`
	// ProbePort, when set, is where the agent sends the steering probe after
	// enrolling (see ProbeRequest); 0 sends none. Sluice proxies answer on
	// DefaultProbePort.
	ProbePort uint16 `json:"probePort,omitempty"`
}

// WithDefaults returns c with zero fields set to their defaults and the
// proxy's own ports added to the inbound skip list.
func (c PodConfig) WithDefaults() PodConfig {
	if c.ProxyUID == 0 {
		c.ProxyUID = DefaultProxyUID
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = DefaultOutboundPort
	}
	if c.InboundPort == 0 {
		c.InboundPort = DefaultInboundPort
	}
	in := append([]PortRange(nil), c.SkipInboundPorts...)
	for _, p := range []uint16{DefaultTapPort, DefaultAdminPort} {
		if !containsPort(in, p) {
			in = append(in, PortRange{Lo: p, Hi: p})
		}
	}
	c.SkipInboundPorts = in
	return c
}

func containsPort(rs []PortRange, p uint16) bool {
	for _, r := range rs {
		if r.Contains(p) {
			return true
		}
	}
	return false
}

// Validate reports the first problem with c, which must already have its
// defaults applied.
func (c PodConfig) Validate() error {
	if c.OutboundPort == 0 || c.InboundPort == 0 {
		return fmt.Errorf("proxy ports must be in 1-65535")
	}
	if c.OutboundPort == c.InboundPort {
		return fmt.Errorf("outbound and inbound proxy ports are both %d", c.InboundPort)
	}
	for name, rs := range map[string][]PortRange{"skip-inbound-ports": c.SkipInboundPorts, "skip-outbound-ports": c.SkipOutboundPorts} {
		if len(rs) > MaxPortRanges {
			return fmt.Errorf("%s: %d ranges, at most %d", name, len(rs), MaxPortRanges)
		}
		for _, r := range rs {
			if r.Lo == 0 || r.Lo > r.Hi {
				return fmt.Errorf("%s: invalid range %s", name, r)
			}
		}
	}
	if c.ProbePort != 0 && containsPort(c.SkipInboundPorts, c.ProbePort) {
		return fmt.Errorf("skip-inbound-ports contains the steering probe port %d, which must reach the proxy", c.ProbePort)
	}
	if containsPort(c.SkipInboundPorts, c.InboundPort) {
		return fmt.Errorf("skip-inbound-ports contains the proxy's inbound port %d", c.InboundPort)
	}
	if len(c.SkipSubnets) > MaxSubnets {
		return fmt.Errorf("skip-subnets: %d subnets, at most %d", len(c.SkipSubnets), MaxSubnets)
	}
	for _, p := range c.SkipSubnets {
		if !p.IsValid() {
			return fmt.Errorf("skip-subnets: invalid prefix %v", p)
		}
	}
	return nil
}

// PodRef names the Kubernetes pod behind an enrollment, when there is one.
type PodRef struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	UID       string `json:"uid,omitempty"`
}

// EnrollRequest asks the agent to steer one pod's traffic. Exactly one of
// NetNS and PID names the pod's network namespace.
type EnrollRequest struct {
	// NetNS is a path to the pod's network namespace, such as
	// /run/netns/x or /proc/123/ns/net.
	NetNS string `json:"netns,omitempty"`
	// PID is a process in the pod; its /proc/PID/ns/net is used.
	PID int `json:"pid,omitempty"`
	// Pod is informational: it is listed with the enrollment.
	Pod PodRef `json:"pod,omitzero"`
	// Addresses are the pod's IPs for inbound steering; when empty the agent
	// reads the global unicast addresses of the namespace's interfaces.
	Addresses []netip.Addr `json:"addresses,omitempty"`
	// Config is the pod's steering configuration.
	Config PodConfig `json:"config"`
}

// Enrollment is one enrolled pod.
type Enrollment struct {
	// NetNSCookie identifies the pod's network namespace to the kernel.
	NetNSCookie uint64 `json:"netnsCookie"`
	// NetNS is the path the pod was enrolled by.
	NetNS     string       `json:"netns"`
	Pod       PodRef       `json:"pod,omitzero"`
	Mode      Mode         `json:"mode"`
	Addresses []netip.Addr `json:"addresses"`
	Config    PodConfig    `json:"config"`
	// InboundListener reports, in eBPF mode, whether the proxy's inbound
	// listener has been found and inbound connections reach it.
	InboundListener bool `json:"inboundListener"`
	// Steered reports that the proxy answered the steering probe: traffic
	// to the pod reaches its proxy. Always false without a ProbePort.
	Steered bool `json:"steered"`
}

// ID is the enrollment's key in the API: its netns cookie in decimal.
func (e Enrollment) ID() string { return strconv.FormatUint(e.NetNSCookie, 10) }

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Status describes the agent and the kernel state it owns.
type Status struct {
	Version  string `json:"version"`
	Mode     Mode   `json:"mode"`
	PinRoot  string `json:"pinRoot"`
	CgroupV2 string `json:"cgroupRoot"`
	// Kernel is the running kernel's release (uname -r).
	Kernel string `json:"kernel"`
	// Features are the agent's kernel feature probes, in order.
	Features []Feature `json:"features"`
	// Programs are the programs the agent loaded and where each is attached.
	Programs []Program `json:"programs"`
	// Pins are the paths pinned under PinRoot, relative to it.
	Pins []string `json:"pins"`
	// Maps report how full each map is.
	Maps []MapUsage `json:"maps"`
	// RedirectEnabled says whether the sk_msg acceleration is on.
	RedirectEnabled bool `json:"redirectEnabled"`
	Enrollments     int  `json:"enrollments"`
}

// Feature is the result of one kernel feature probe.
type Feature struct {
	Name string `json:"name"`
	// MinKernel is the first Linux release that has the feature.
	MinKernel string `json:"minKernel"`
	// Required features stop the agent when missing; optional ones turn off
	// an acceleration.
	Required bool   `json:"required"`
	OK       bool   `json:"ok"`
	Error    string `json:"error,omitempty"`
}

// Program is one loaded program and its attachment.
type Program struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	AttachType string `json:"attachType,omitempty"`
	// AttachedTo is the cgroup path, map name or "netns" (one link per pod).
	AttachedTo string `json:"attachedTo"`
	Attached   bool   `json:"attached"`
	ID         uint32 `json:"id,omitempty"`
	// Tag is the kernel's tag of the program's instructions.
	Tag string `json:"tag,omitempty"`
}

// MapUsage reports how full one map is. Entries is -1 where the kernel
// offers no count (per-socket storage).
type MapUsage struct {
	Name       string `json:"name"`
	Entries    int    `json:"entries"`
	MaxEntries int    `json:"maxEntries"`
}

// Pressure is Entries/MaxEntries, or 0 where either is unknown.
func (m MapUsage) Pressure() float64 {
	if m.Entries <= 0 || m.MaxEntries <= 0 {
		return 0
	}
	return float64(m.Entries) / float64(m.MaxEntries)
}
