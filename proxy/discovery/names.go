package discovery

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultClusterDomain is the cluster domain when Names leaves it empty.
const DefaultClusterDomain = "cluster.local"

// Names turns HTTP authorities into destination paths, as Kubernetes DNS
// would resolve them from a pod in Namespace (search list
// "<ns>.svc.<domain> svc.<domain> <domain>").
type Names struct {
	Namespace     string // the proxy's pod namespace
	ClusterDomain string // "" = DefaultClusterDomain
}

// Path returns the path to resolve for host (a Host header or :authority
// without its port, maybe with a trailing dot) and port:
//
//   - an IP literal: "ip:port" ("[v6]:port");
//   - "svc": "svc.<ns>.svc.<domain>:port";
//   - "svc.ns": "svc.ns.svc.<domain>:port";
//   - "svc.ns.svc", "pod.ns.pod", "host.sub.ns.svc": the cluster domain
//     appended;
//   - "svc.ns.svc.<domain>", "host.sub.ns.svc.<domain>" (a pod behind a
//     headless service) and "pod-ip.ns.pod.<domain>": kept as they are.
//
// Anything else, such as "example.com" (a two-label name in a common public
// top-level domain), "a.b.c" or another cluster's domain, gives ok=false: the proxy then forwards to the original
// destination. So do port 0, invalid DNS names (or cluster domain), IPv6 zones and a short name
// when Namespace is empty. Names are lower-cased.
func (n Names) Path(host string, port uint16) (path string, ok bool) {
	if port == 0 {
		return "", false
	}
	if ip, ok := parseIP(host); ok {
		if ip.Zone() != "" {
			return "", false
		}
		return netip.AddrPortFrom(ip.Unmap(), port).String(), true
	}
	name, ok := n.resolve(host)
	if !ok {
		return "", false
	}
	return name + ":" + strconv.FormatUint(uint64(port), 10), true
}

// parseIP parses an IPv4 address, or an IPv6 one with or without brackets.
func parseIP(host string) (netip.Addr, bool) {
	if inner, ok := strings.CutPrefix(host, "["); ok {
		inner, ok = strings.CutSuffix(inner, "]")
		ip, err := netip.ParseAddr(inner)
		return ip, ok && err == nil && ip.Is6()
	}
	ip, err := netip.ParseAddr(host)
	return ip, err == nil
}

// isPublicTLD reports whether tld is one of the top-level domains that make a two-label name external
// ("example.com") rather than service.namespace. Misreading either way is
// safe, only slower: a service in a namespace named like one of these goes
// to its original destination (its ClusterIP), and any other two-label
// external name is answered NotFound by the destination service. Names that
// make likely namespaces ("dev", "app", "prod") are left out on purpose.
func isPublicTLD(tld string) bool {
	switch tld {
	case "com", "net", "org", "edu", "gov", "mil", "int", "io", "info", "biz":
		return true
	}
	return false
}

// resolve returns the fully qualified name of host, without trailing dot.
func (n Names) resolve(host string) (string, bool) {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if !validDNSName(host) {
		return "", false
	}
	domain := strings.ToLower(strings.TrimSuffix(n.ClusterDomain, "."))
	if domain == "" {
		domain = DefaultClusterDomain
	}
	if !validDNSName(domain) {
		return "", false
	}
	labels := strings.Split(host, ".")
	if rest, ok := strings.CutSuffix(host, "."+domain); ok {
		// Fully qualified in the cluster domain: kept when it has a shape
		// the cluster's DNS serves.
		if inCluster(strings.Split(rest, ".")) {
			return host, true
		}
		return "", false
	}
	switch {
	case len(labels) == 1:
		ns := strings.ToLower(n.Namespace)
		if !validDNSName(ns) || strings.Contains(ns, ".") {
			return "", false
		}
		return host + "." + ns + ".svc." + domain, true
	case len(labels) == 2 && !isPublicTLD(labels[1]):
		return host + ".svc." + domain, true
	case inCluster(labels):
		return host + "." + domain, true
	}
	return "", false
}

// inCluster reports whether labels (a name without the cluster domain) name
// a service ("svc.ns.svc"), a pod behind a headless service
// ("host.sub.ns.svc") or a pod by IP ("1-2-3-4.ns.pod").
func inCluster(labels []string) bool {
	switch len(labels) {
	case 3:
		return labels[2] == "svc" || labels[2] == "pod"
	case 4:
		return labels[3] == "svc"
	}
	return false
}

// validDNSName reports whether s is a lower-case DNS name of RFC 1123
// labels: 1 to 63 letters, digits and inner hyphens each, 253 bytes at most.
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
				return false
			}
		}
	}
	return true
}

// errEmptyAuthority is returned by SplitAuthority for "".
var errEmptyAuthority = errors.New("empty authority")

// SplitAuthority splits "host:port", "[v6]:port", "host", "[v6]" or a bare
// IPv6 address into host (IPv6 without brackets) and port (0 when absent or
// empty, as in "host:"). It rejects user information, an empty host and a
// port that is not a decimal number from 1 to 65535. It does not validate
// the host name; Names.Path does.
func SplitAuthority(authority string) (host string, port uint16, err error) {
	if authority == "" {
		return "", 0, fmt.Errorf("split authority: %w", errEmptyAuthority)
	}
	if strings.Contains(authority, "@") {
		return "", 0, fmt.Errorf("split authority %q: user information is not allowed", authority)
	}
	portStr := ""
	switch {
	case authority[0] == '[':
		end := strings.IndexByte(authority, ']')
		if end < 0 {
			return "", 0, fmt.Errorf("split authority %q: missing ']'", authority)
		}
		host, rest := authority[1:end], authority[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return "", 0, fmt.Errorf("split authority %q: text after ']'", authority)
			}
			portStr = rest[1:]
		}
		if _, err := netip.ParseAddr(host); err != nil || !strings.Contains(host, ":") {
			return "", 0, fmt.Errorf("split authority %q: invalid IPv6 address", authority)
		}
		authority = host
	case strings.Count(authority, ":") > 1:
		// A bare IPv6 address, without port.
		if _, err := netip.ParseAddr(authority); err != nil {
			return "", 0, fmt.Errorf("split authority %q: too many colons", authority)
		}
		return authority, 0, nil
	default:
		if i := strings.IndexByte(authority, ':'); i >= 0 {
			authority, portStr = authority[:i], authority[i+1:]
		}
		if authority == "" {
			return "", 0, fmt.Errorf("split authority: empty host")
		}
	}
	if portStr == "" {
		return authority, 0, nil
	}
	p, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || p == 0 || portStr[0] == '+' {
		return "", 0, fmt.Errorf("split authority: invalid port %q", portStr)
	}
	return authority, uint16(p), nil
}
