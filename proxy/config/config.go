// Package config reads the proxy's configuration from SLUICE_PROXY_*
// environment variables. Every setting has a default; proxy/README.md and
// `sluice-proxy --help` list them.
package config

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// Config is the proxy's configuration.
type Config struct {
	OutboundAddrs   []netip.AddrPort
	InboundAddrs    []netip.AddrPort
	TapAddr         netip.AddrPort // invalid (zero) when tap is disabled
	AdminAddr       netip.AddrPort
	DestinationAddr string // host:port; "" means no discovery
	DestinationCtx  string
	Namespace       string
	// PodIPs are the pod's addresses; outbound tap events name the
	// application by them rather than by the loopback address its
	// connections reach the proxy from. Empty: loopback is shown.
	PodIPs        []netip.Addr
	ClusterDomain string
	OpaquePorts   PortSet

	DetectTimeout         time.Duration
	ConnectTimeout        time.Duration
	ResponseHeaderTimeout time.Duration
	IdleTimeout           time.Duration
	MaxConcurrentStreams  uint32

	EWMADefaultRTT time.Duration
	EWMADecay      time.Duration
	FailureLimit   int
	BackoffMin     time.Duration
	BackoffMax     time.Duration

	MetricsRetainIdle   time.Duration
	ShutdownGracePeriod time.Duration
	SteeringProbePort   uint16
	RequireSteering     bool

	LogLevel  slog.Level
	LogFormat string // "json" or "text"

	// Identity is the mutual-TLS identity; its zero value (no
	// SLUICE_PROXY_IDENTITY_* set) disables identity: plaintext between
	// proxies, as without a control plane.
	Identity Identity
}

// Identity configures the proxy's TLS identity: the certificate it
// obtains from the identity service and presents to its peers.
type Identity struct {
	// LocalName is the proxy's identity, in meshmeta.IdentityName form;
	// "" means identity is disabled.
	LocalName string
	// TrustDomain ends LocalName (cluster.local); derived from it.
	TrustDomain string
	// SvcAddr is the identity service's host:port (gRPC over TLS).
	SvcAddr string
	// SvcName is the identity service's own TLS identity, which its
	// certificate must carry.
	SvcName string
	// TrustAnchorsPEM is the PEM bundle every peer's (and the identity
	// service's) chain must end at; TrustAnchors is it parsed.
	TrustAnchorsPEM []byte
	TrustAnchors    []*x509.Certificate
	// TokenFile holds the projected service-account token (audience
	// meshmeta.IdentityAudience); it is read anew for every request.
	TokenFile string
	// Dir, when set, is where the current certificate chain is written
	// (certificate.crt) for debugging; the private key never leaves memory.
	Dir string
	// BackoffMin and BackoffMax bound the jittered, doubling delay between
	// failed certificate requests.
	BackoffMin, BackoffMax time.Duration
}

// Enabled reports whether the proxy has an identity.
func (i Identity) Enabled() bool { return i.LocalName != "" }

// identityRequired are the variables identity needs: all of them, or none.
var identityRequired = []string{
	"IDENTITY_LOCAL_NAME", "IDENTITY_SVC_ADDR", "IDENTITY_SVC_NAME", "IDENTITY_TRUST_ANCHORS", "IDENTITY_TOKEN_FILE",
}

// Var is one environment variable the proxy reads.
type Var struct {
	Name    string
	Default string
	Help    string
	set     func(c *Config, v string) error
}

// Prefix starts every variable's name.
const Prefix = "SLUICE_PROXY_"

// Vars lists the variables in the order --help prints them.
func Vars() []Var {
	return []Var{
		{"OUTBOUND_LISTEN_ADDRS", "127.0.0.1:4140,[::1]:4140", "outbound listeners (comma-separated)", func(c *Config, v string) (err error) {
			c.OutboundAddrs, err = addrList(v)
			return err
		}},
		{"INBOUND_LISTEN_ADDRS", "0.0.0.0:4143,[::]:4143", "inbound listeners (comma-separated)", func(c *Config, v string) (err error) {
			c.InboundAddrs, err = addrList(v)
			return err
		}},
		{"TAP_LISTEN_ADDR", "0.0.0.0:4190", "tap gRPC server; empty disables tap", func(c *Config, v string) (err error) {
			if v == "" {
				c.TapAddr = netip.AddrPort{}
				return nil
			}
			c.TapAddr, err = addr(v)
			return err
		}},
		{"ADMIN_LISTEN_ADDR", "0.0.0.0:4191", "admin server (/metrics, /live, /ready, /proxy-log-level, /shutdown)", func(c *Config, v string) (err error) {
			c.AdminAddr, err = addr(v)
			return err
		}},
		{"DESTINATION_ADDR", "", "destination service host:port; empty: no discovery, connections go to their original destination", func(c *Config, v string) error {
			c.DestinationAddr = v
			return nil
		}},
		{"DESTINATION_CONTEXT", "", `context token for lookups; empty: {"ns":"<namespace>"}`, func(c *Config, v string) error {
			c.DestinationCtx = v
			return nil
		}},
		{"POD_NAMESPACE", "default", "the pod's namespace, which completes short service names", func(c *Config, v string) error {
			if v == "" {
				return errors.New("must not be empty")
			}
			c.Namespace = v
			return nil
		}},
		{"POD_IPS", "", "the pod's addresses (comma-separated; the injector sets the downward API's status.podIPs): tap shows them as the source of outbound requests", func(c *Config, v string) (err error) {
			c.PodIPs, err = ipList(v)
			return err
		}},
		{"CLUSTER_DOMAIN", "cluster.local", "the cluster's DNS domain", func(c *Config, v string) error {
			c.ClusterDomain = strings.TrimSuffix(v, ".")
			if c.ClusterDomain == "" {
				return errors.New("must not be empty")
			}
			return nil
		}},
		{"OPAQUE_PORTS", "", "ports and ranges (a-b) carried as opaque TCP without protocol detection", func(c *Config, v string) (err error) {
			c.OpaquePorts, err = ParsePortSet(v)
			return err
		}},
		{"DETECT_TIMEOUT", "10s", "wait for a connection's first bytes before treating it as opaque", dur(func(c *Config) *time.Duration { return &c.DetectTimeout }, true)},
		{"CONNECT_TIMEOUT", "1s", "connect timeout to an endpoint or the application", dur(func(c *Config) *time.Duration { return &c.ConnectTimeout }, true)},
		{"RESPONSE_HEADER_TIMEOUT", "0", "longest wait for response headers before 504; 0: none", dur(func(c *Config) *time.Duration { return &c.ResponseHeaderTimeout }, false)},
		{"IDLE_TIMEOUT", "60s", "idle pooled connections are closed after this", dur(func(c *Config) *time.Duration { return &c.IdleTimeout }, true)},
		{"MAX_CONCURRENT_STREAMS", "1000", "HTTP/2 streams per connection the proxy accepts", func(c *Config, v string) error {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return fmt.Errorf("want a positive integer, got %q", v)
			}
			c.MaxConcurrentStreams = uint32(n)
			return nil
		}},
		{"EWMA_DEFAULT_RTT", "30ms", "peak-EWMA initial latency estimate", dur(func(c *Config) *time.Duration { return &c.EWMADefaultRTT }, true)},
		{"EWMA_DECAY", "10s", "peak-EWMA decay", dur(func(c *Config) *time.Duration { return &c.EWMADecay }, true)},
		{"FAILURE_ACCRUAL_CONSECUTIVE_FAILURES", "7", "failures in a row before an endpoint is backed off", func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return fmt.Errorf("want a positive integer, got %q", v)
			}
			c.FailureLimit = n
			return nil
		}},
		{"FAILURE_ACCRUAL_BACKOFF_MIN", "1s", "first backoff of a failing endpoint", dur(func(c *Config) *time.Duration { return &c.BackoffMin }, true)},
		{"FAILURE_ACCRUAL_BACKOFF_MAX", "60s", "longest backoff (backoffs double, with jitter)", dur(func(c *Config) *time.Duration { return &c.BackoffMax }, true)},
		{"METRICS_RETAIN_IDLE", "10m", "series idle this long leave /metrics", dur(func(c *Config) *time.Duration { return &c.MetricsRetainIdle }, true)},
		{"SHUTDOWN_GRACE_PERIOD", "30s", "how long SIGTERM waits for in-flight requests", dur(func(c *Config) *time.Duration { return &c.ShutdownGracePeriod }, false)},
		{"STEERING_PROBE_PORT", "4144", "inbound port the node agent probes to confirm steering", func(c *Config, v string) error {
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				return fmt.Errorf("want a port 1-65535, got %q", v)
			}
			c.SteeringProbePort = uint16(n)
			return nil
		}},
		{"REQUIRE_STEERING", "true", "/ready waits for the agent's steering probe; false: ready once listening", func(c *Config, v string) (err error) {
			c.RequireSteering, err = strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("want true or false, got %q", v)
			}
			return nil
		}},
		{"IDENTITY_LOCAL_NAME", "", "this proxy's TLS identity, <serviceaccount>.<namespace>.serviceaccount.identity.sluice.<trust-domain>; " +
			"the IDENTITY_* variables (but DIR and BACKOFF_*) are all set or all empty; empty: identity disabled, plaintext between proxies", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			td, err := IdentityTrustDomain(v)
			if err != nil {
				return err
			}
			c.Identity.LocalName, c.Identity.TrustDomain = v, td
			return nil
		}},
		{"IDENTITY_SVC_ADDR", "", "identity service host:port (gRPC over TLS)", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			host, port, err := net.SplitHostPort(v)
			if err != nil {
				return fmt.Errorf("want host:port: %w", err)
			}
			if _, err := strconv.ParseUint(port, 10, 16); err != nil || host == "" {
				return fmt.Errorf("want host:port with a numeric port, got %q", v)
			}
			c.Identity.SvcAddr = v
			return nil
		}},
		{"IDENTITY_SVC_NAME", "", "the identity service's TLS identity, checked against the trust anchors", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if err := dnsName(v); err != nil {
				return err
			}
			c.Identity.SvcName = v
			return nil
		}},
		{"IDENTITY_TRUST_ANCHORS", "", "PEM trust anchors: every peer's certificate and the identity service's must chain to one", func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			certs, err := pki.ParseCertificates([]byte(v))
			if err != nil {
				return err
			}
			c.Identity.TrustAnchorsPEM, c.Identity.TrustAnchors = []byte(v), certs
			return nil
		}},
		{"IDENTITY_TOKEN_FILE", "", "file of the projected service-account token (audience " + meshmeta.IdentityAudience + "), re-read at every certificate request", func(c *Config, v string) error {
			c.Identity.TokenFile = v
			return nil
		}},
		{"IDENTITY_DIR", "", "directory where the current certificate chain is written as certificate.crt, for debugging (never the key); empty: nothing written", func(c *Config, v string) error {
			c.Identity.Dir = v
			return nil
		}},
		{"IDENTITY_BACKOFF_MIN", "500ms", "first delay after a failed certificate request (delays double, with jitter)", dur(func(c *Config) *time.Duration { return &c.Identity.BackoffMin }, true)},
		{"IDENTITY_BACKOFF_MAX", "10s", "longest delay between certificate requests while they fail (they never stop)", dur(func(c *Config) *time.Duration { return &c.Identity.BackoffMax }, true)},
		{"LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, v string) error {
			return c.LogLevel.UnmarshalText([]byte(v))
		}},
		{"LOG_FORMAT", "json", "json or text (to stderr)", func(c *Config, v string) error {
			if v != "json" && v != "text" {
				return fmt.Errorf("want json or text, got %q", v)
			}
			c.LogFormat = v
			return nil
		}},
	}
}

// FromEnv builds the configuration from lookup (os.LookupEnv in main).
// Unset variables take their defaults; a set but empty variable means empty
// where that is meaningful (TAP_LISTEN_ADDR, DESTINATION_ADDR,
// OPAQUE_PORTS) and the default elsewhere. Every invalid value is reported.
func FromEnv(lookup func(string) (string, bool)) (Config, error) {
	var c Config
	var errs []error
	set := map[string]bool{} // variables set to a non-empty value
	for _, v := range Vars() {
		val, ok := lookup(Prefix + v.Name)
		val = strings.TrimSpace(val)
		if !ok || (val == "" && !emptyAllowed(v.Name)) {
			val = v.Default
		}
		set[v.Name] = ok && val != ""
		if err := v.set(&c, val); err != nil {
			shown := val
			if len(shown) > 80 {
				shown = shown[:80] + "..."
			}
			errs = append(errs, fmt.Errorf("%s%s=%q: %w", Prefix, v.Name, shown, err))
		}
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	if err := checkIdentitySet(set); err != nil {
		return Config{}, err
	}
	if c.DestinationCtx == "" {
		b, _ := json.Marshal(map[string]string{"ns": c.Namespace})
		c.DestinationCtx = string(b)
	}
	if c.BackoffMax < c.BackoffMin {
		return Config{}, fmt.Errorf("%sFAILURE_ACCRUAL_BACKOFF_MAX (%v) is below _MIN (%v)", Prefix, c.BackoffMax, c.BackoffMin)
	}
	if c.Identity.BackoffMax < c.Identity.BackoffMin {
		return Config{}, fmt.Errorf("%sIDENTITY_BACKOFF_MAX (%v) is below _MIN (%v)", Prefix, c.Identity.BackoffMax, c.Identity.BackoffMin)
	}
	return c, nil
}

// checkIdentitySet enforces all-or-nothing on the identity variables: some
// set (IDENTITY_DIR counts) but not all is an error naming the missing ones.
func checkIdentitySet(set map[string]bool) error {
	var have, missing []string
	for _, name := range identityRequired {
		if set[name] {
			have = append(have, Prefix+name)
		} else {
			missing = append(missing, Prefix+name)
		}
	}
	if set["IDENTITY_DIR"] {
		have = append(have, Prefix+"IDENTITY_DIR")
	}
	if len(have) > 0 && len(missing) > 0 {
		return fmt.Errorf("identity is half configured: %s set but %s missing (set all of %s, or none to disable identity)",
			strings.Join(have, ", "), strings.Join(missing, ", "), strings.Join(identityRequired, ", "))
	}
	return nil
}

// IdentityTrustDomain checks that name is a well-formed identity name,
// <serviceaccount>.<namespace>.serviceaccount.identity.sluice.<trust-domain>
// (meshmeta.IdentityName), and returns its trust domain.
func IdentityTrustDomain(name string) (string, error) {
	if err := dnsName(name); err != nil {
		return "", err
	}
	// Service-account and namespace names hold no dots: the trust domain
	// is what follows the fifth label.
	labels := strings.Split(name, ".")
	if len(labels) < 6 {
		return "", fmt.Errorf("identity %q is not <serviceaccount>.<namespace>.serviceaccount.identity.sluice.<trust-domain>", name)
	}
	td := strings.Join(labels[5:], ".")
	if _, _, err := meshmeta.ParseIdentityName(name, td); err != nil {
		return "", err
	}
	return td, nil
}

// dnsName checks that s is a DNS name: dot-separated labels of 1 to 63
// lowercase letters, digits and hyphens, not starting or ending with a
// hyphen, 253 characters at most.
func dnsName(s string) error {
	if len(s) > 253 {
		return fmt.Errorf("%q is longer than 253 characters", s)
	}
	for _, l := range strings.Split(s, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q is not a DNS name (label %q)", s, l)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q is not a lowercase DNS name (character %q)", s, r)
			}
		}
	}
	return nil
}

func emptyAllowed(name string) bool {
	switch name {
	case "TAP_LISTEN_ADDR", "DESTINATION_ADDR", "OPAQUE_PORTS", "DESTINATION_CONTEXT":
		return true
	}
	return strings.HasPrefix(name, "IDENTITY_") && !strings.HasPrefix(name, "IDENTITY_BACKOFF_")
}

// Usage renders the variables as the table --help prints.
func Usage() string {
	var b strings.Builder
	for _, v := range Vars() {
		def := v.Default
		if def == "" {
			def = "(empty)"
		}
		fmt.Fprintf(&b, "  %s%s\n      %s (default %s)\n", Prefix, v.Name, v.Help, def)
	}
	return b.String()
}

func addr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("want ip:port or [ipv6]:port: %w", err)
	}
	return ap, nil
}

// commaList parses each non-empty, space-trimmed item of a
// comma-separated list with parse; "" is none.
func commaList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func addrList(s string) ([]netip.AddrPort, error) {
	out, err := commaList(s, addr)
	if err == nil && len(out) == 0 {
		err = errors.New("want at least one address")
	}
	return out, err
}

// ipList parses comma-separated IP addresses; "" is none.
func ipList(s string) ([]netip.Addr, error) {
	return commaList(s, func(f string) (netip.Addr, error) {
		ip, err := netip.ParseAddr(f)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("want IP addresses, got %q", f)
		}
		return ip.Unmap(), nil
	})
}

func dur(field func(*Config) *time.Duration, positive bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("want a duration such as 10s: %w", err)
		}
		if d < 0 || (positive && d == 0) {
			return fmt.Errorf("want a positive duration, got %v", d)
		}
		*field(c) = d
		return nil
	}
}

// PortSet is a set of TCP ports given as ports and inclusive ranges.
type PortSet []PortRange

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

// ParsePortSet parses "25,3306,9000-9100". Empty is the empty set.
func ParsePortSet(s string) (PortSet, error) {
	return commaList(s, portRange)
}

// portRange parses a port ("25") or an inclusive range ("9000-9100").
func portRange(f string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(f, "-")
	l, err := port(lo)
	if err != nil {
		return PortRange{}, err
	}
	h := l
	if isRange {
		if h, err = port(hi); err != nil {
			return PortRange{}, err
		}
	}
	if h < l {
		return PortRange{}, fmt.Errorf("range %q: %d is above %d", f, l, h)
	}
	return PortRange{l, h}, nil
}

func port(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("want a port 1-65535, got %q", s)
	}
	return uint16(n), nil
}

// Contains reports whether p is in the set.
func (ps PortSet) Contains(p uint16) bool {
	for _, r := range ps {
		if p >= r.Lo && p <= r.Hi {
			return true
		}
	}
	return false
}
