package inject

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// AnnotationError is a config.sluice.io/* annotation whose value is
// invalid. Its message names the annotation.
type AnnotationError struct {
	Annotation string
	Value      string
	Err        error
}

// Error names the annotation, its value and what is wrong with it.
func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s: %q: %v", e.Annotation, e.Value, e.Err)
}

// Unwrap returns what is wrong with the value.
func (e *AnnotationError) Unwrap() error { return e.Err }

// Config is one pod's proxy configuration: the installation's Values with
// the pod's config.sluice.io/* annotations applied.
type Config struct {
	// Mode is meshmeta.ModeEBPF or meshmeta.ModeIPTables.
	Mode string
	// LogLevel is the proxy's log level.
	LogLevel string
	// OpaquePorts are carried as TCP without protocol detection.
	OpaquePorts []api.PortRange
	// Steering is what the node agent (eBPF mode) or sluice-init
	// (iptables mode) steers: ports, proxy user, skipped ports and
	// subnets, with api.PodConfig's defaults applied. In eBPF mode its
	// ProbePort is the proxy's steering probe port.
	Steering api.PodConfig
}

// ConfigFor returns the configuration of a pod with the given annotations
// under v. An invalid config annotation gives an *AnnotationError; a
// combination the steering cannot honour (such as more skipped ranges than
// the agent's maps hold) an error naming the annotations. Unknown
// config.sluice.io/* annotations are ignored.
func ConfigFor(annotations map[string]string, v Values) (Config, error) {
	get := func(key, def string) (string, bool) {
		if s, ok := annotations[key]; ok {
			return strings.TrimSpace(s), true
		}
		return def, false
	}
	c := Config{}
	var err error
	bad := func(key, val string, err error) error {
		return &AnnotationError{Annotation: key, Value: val, Err: err}
	}
	mode, own := get(meshmeta.AnnotationInterceptionMode, v.InterceptionMode)
	if err := checkMode(mode); err != nil && own {
		return Config{}, bad(meshmeta.AnnotationInterceptionMode, mode, err)
	}
	c.Mode = mode
	level, own := get(meshmeta.AnnotationProxyLogLevel, v.Proxy.LogLevel)
	if err := checkLogLevel(level); err != nil && own {
		return Config{}, bad(meshmeta.AnnotationProxyLogLevel, level, err)
	}
	c.LogLevel = level
	s, own := get(meshmeta.AnnotationOpaquePorts, v.Proxy.OpaquePorts)
	if c.OpaquePorts, err = parsePorts(s); err != nil && own {
		return Config{}, bad(meshmeta.AnnotationOpaquePorts, s, err)
	}
	st := api.PodConfig{ProxyUID: uint32(v.Proxy.UID)}
	s, own = get(meshmeta.AnnotationSkipInboundPorts, v.Proxy.SkipInboundPorts)
	if st.SkipInboundPorts, err = parsePorts(s); err != nil && own {
		return Config{}, bad(meshmeta.AnnotationSkipInboundPorts, s, err)
	}
	if len(st.SkipInboundPorts) > api.MaxPortRanges {
		return Config{}, bad(meshmeta.AnnotationSkipInboundPorts, s, fmt.Errorf("%d ranges, at most %d", len(st.SkipInboundPorts), api.MaxPortRanges))
	}
	s, own = get(meshmeta.AnnotationSkipOutboundPorts, v.Proxy.SkipOutboundPorts)
	if st.SkipOutboundPorts, err = parsePorts(s); err != nil && own {
		return Config{}, bad(meshmeta.AnnotationSkipOutboundPorts, s, err)
	}
	if len(st.SkipOutboundPorts) > api.MaxPortRanges {
		return Config{}, bad(meshmeta.AnnotationSkipOutboundPorts, s, fmt.Errorf("%d ranges, at most %d", len(st.SkipOutboundPorts), api.MaxPortRanges))
	}
	s, own = get(meshmeta.AnnotationSkipSubnets, v.Proxy.SkipSubnets)
	if st.SkipSubnets, err = api.ParsePrefixes(s); err != nil && own {
		return Config{}, bad(meshmeta.AnnotationSkipSubnets, s, err)
	}
	if len(st.SkipSubnets) > api.MaxSubnets {
		return Config{}, bad(meshmeta.AnnotationSkipSubnets, s, fmt.Errorf("%d subnets, at most %d", len(st.SkipSubnets), api.MaxSubnets))
	}
	if c.Mode == meshmeta.ModeEBPF {
		st.ProbePort = api.DefaultProbePort
	}
	st = st.WithDefaults()
	if err := st.Validate(); err != nil {
		return Config{}, fmt.Errorf("config.sluice.io annotations: %w", err)
	}
	c.Steering = st
	return c, nil
}

// parsePorts parses "25,9000-9100"; empty is none.
func parsePorts(s string) ([]api.PortRange, error) {
	return api.ParsePortRanges(s)
}

// joinPorts writes ranges as "25,9000-9100".
func joinPorts(rs []api.PortRange) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

// joinSubnets writes prefixes comma-separated.
func joinSubnets(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
