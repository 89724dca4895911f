package watcher

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrInvalidPath is wrapped by ParsePath's errors: the path is not
// something the destination service resolves.
var ErrInvalidPath = errors.New("invalid destination path")

// DefaultPort is the port of a path that names none, as in Linkerd.
const DefaultPort = 80

// ServiceID names a Service.
type ServiceID struct {
	Namespace, Name string
}

// String returns "namespace/name".
func (id ServiceID) String() string { return id.Namespace + "/" + id.Name }

// Target is what one Get resolves: a port of a service (or of one pod of
// a headless service, by hostname), or a port of an IP address (a
// service's cluster IP or a pod's IP). It is comparable: streams that
// resolve the same Target share one watch.
type Target struct {
	// Service is the service of a name; zero for an IP.
	Service ServiceID
	// Hostname, with Service, names one endpoint of a headless service
	// ("web-0" in web-0.web.default.svc.cluster.local), as a StatefulSet's
	// pods are named.
	Hostname string
	// IP is the address of an IP target; invalid for a name.
	IP   netip.Addr
	Port uint16
}

// String returns the target as a path ParsePath reads back to it (without
// the cluster domain): "web.default.svc:8080",
// "web-0.web.default.svc:8080", "10.1.2.3:8080" or "[fd00::1]:8080".
func (t Target) String() string {
	if t.IP.IsValid() {
		return netip.AddrPortFrom(t.IP, t.Port).String()
	}
	name := t.Service.Name + "." + t.Service.Namespace + ".svc"
	if t.Hostname != "" {
		name = t.Hostname + "." + name
	}
	return name + ":" + strconv.Itoa(int(t.Port))
}

// ParsePath parses the path of a GetDestination: an authority as the
// proxy's application wrote it, completed as Kubernetes DNS would from a
// pod of namespace ns (which only short names need):
//
//   - "name.ns.svc.<clusterDomain>:port", "name.ns.svc:port",
//     "name.ns:port" and "name:port" (with ns) name a service port;
//   - "host.name.ns.svc[.<clusterDomain>]:port" names the endpoint of a
//     headless service with that hostname;
//   - "a-b-c-d.ns.pod[.<clusterDomain>]:port" names the IP a.b.c.d (and
//     IPv6 with dashes for colons), as Kubernetes DNS answers it;
//   - "10.1.2.3:port" and "[fd00::1]:port" name an IP: a service's
//     cluster IP or a pod's IP.
//
// A missing port is DefaultPort; names are case-insensitive and may end in
// a dot. Anything else, such as a name in another domain ("example.com:80"
// is taken as service example in namespace com, but "api.example.com:80"
// is no cluster name), a port outside 1-65535 or an IPv6 zone, is an error
// wrapping ErrInvalidPath. clusterDomain must be a valid DNS name.
func ParsePath(path, ns, clusterDomain string) (Target, error) {
	bad := func(format string, args ...any) (Target, error) {
		return Target{}, fmt.Errorf("%w %q: %s", ErrInvalidPath, truncate(path), fmt.Sprintf(format, args...))
	}
	host, portStr, err := splitHostPort(path)
	if err != nil {
		return bad("%v", err)
	}
	port := uint16(DefaultPort)
	if portStr != "" {
		p, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || p == 0 || portStr[0] < '0' || portStr[0] > '9' {
			return bad("port %q is not a number from 1 to 65535", portStr)
		}
		port = uint16(p)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return bad("an IPv6 zone is not allowed")
		}
		return Target{IP: ip.Unmap(), Port: port}, nil
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if !validDNSName(name) {
		return bad("%q is not a DNS name", truncate(host))
	}
	labels := strings.Split(name, ".")
	domain := strings.ToLower(strings.TrimSuffix(clusterDomain, "."))
	if rest, ok := strings.CutSuffix(name, "."+domain); ok {
		// Fully qualified in the cluster domain.
		labels = strings.Split(rest, ".")
		switch {
		case len(labels) == 3 && labels[2] == "svc":
			return Target{Service: ServiceID{labels[1], labels[0]}, Port: port}, nil
		case len(labels) == 4 && labels[3] == "svc":
			return Target{Service: ServiceID{labels[2], labels[1]}, Hostname: labels[0], Port: port}, nil
		case len(labels) == 3 && labels[2] == "pod":
			return podTarget(labels[0], port, bad)
		}
		return bad("not a service (name.namespace.svc.%s) or pod (ip.namespace.pod.%s) name", domain, domain)
	}
	switch {
	case len(labels) == 1:
		ns = strings.ToLower(ns)
		if ns == "" {
			return bad("a short name needs the namespace from the context token")
		}
		if !validLabel(ns) {
			return bad("context token namespace %q is not a DNS label", ns)
		}
		return Target{Service: ServiceID{ns, labels[0]}, Port: port}, nil
	case len(labels) == 2:
		return Target{Service: ServiceID{labels[1], labels[0]}, Port: port}, nil
	case len(labels) == 3 && labels[2] == "svc":
		return Target{Service: ServiceID{labels[1], labels[0]}, Port: port}, nil
	case len(labels) == 4 && labels[3] == "svc":
		return Target{Service: ServiceID{labels[2], labels[1]}, Hostname: labels[0], Port: port}, nil
	case len(labels) == 3 && labels[2] == "pod":
		return podTarget(labels[0], port, bad)
	}
	return bad("not a name in the cluster domain %q", domain)
}

// truncate shortens s for an error message.
func truncate(s string) string {
	const limit = 300
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}

// podTarget parses the first label of a pod name, "10-1-2-3" or
// "fd00--1", into an IP target.
func podTarget(label string, port uint16, bad func(string, ...any) (Target, error)) (Target, error) {
	if ip, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ".")); err == nil && ip.Is4() {
		return Target{IP: ip, Port: port}, nil
	}
	if ip, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ":")); err == nil && ip.Is6() && ip.Zone() == "" {
		return Target{IP: ip.Unmap(), Port: port}, nil
	}
	return bad("%q is not an IP address with dashes", label)
}

// splitHostPort splits "host:port", "host", "[v6]:port", "[v6]" or a bare
// IPv6 address. port is "" when there is none.
func splitHostPort(s string) (host, port string, err error) {
	switch {
	case s == "":
		return "", "", errors.New("empty path")
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", errors.New("missing ']'")
		}
		host, rest := s[1:end], s[end+1:]
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() {
			return "", "", errors.New("not an IPv6 address in brackets")
		}
		if rest == "" {
			return host, "", nil
		}
		p, ok := strings.CutPrefix(rest, ":")
		if !ok || p == "" {
			return "", "", errors.New("text after ']'")
		}
		return host, p, nil
	case strings.Count(s, ":") > 1:
		if _, err := netip.ParseAddr(s); err != nil {
			return "", "", errors.New("too many colons")
		}
		return s, "", nil
	}
	host, port, found := strings.Cut(s, ":")
	if host == "" {
		return "", "", errors.New("empty host")
	}
	if found && port == "" {
		return "", "", errors.New("empty port")
	}
	return host, port, nil
}

// validDNSName reports whether s is a lower-case DNS name of RFC 1123
// labels, 253 bytes at most.
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !validLabel(l) {
			return false
		}
	}
	return true
}

// validLabel reports whether s is a lower-case RFC 1123 label: 1 to 63
// letters, digits and inner hyphens.
func validLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
