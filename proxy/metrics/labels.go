package metrics

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// TLS describes the connection's TLS state for labels.
type TLS struct {
	// Status is "true", "disabled" or "no_identity"; "" means "disabled".
	Status string
	// NoTLSReason says why there is no TLS, e.g. "not_provided_by_remote"
	// or "loopback"; emitted as no_tls_reason only when Status is
	// "no_identity".
	NoTLSReason string
	// ClientID is, inbound, the client's identity; emitted as client_id
	// only when Status is "true".
	ClientID string
	// ServerID is, outbound, the server's identity; emitted as server_id
	// only when Status is "true".
	ServerID string
}

// Target is what a series is about. Two calls with equal Targets (Dst
// compared by content) share one series.
type Target struct {
	// Direction is "inbound" or "outbound".
	Direction string
	// Authority is the request's authority (Host or :authority). It is a
	// label of HTTP series only (always present there, possibly empty) and
	// is ignored for TCP series.
	Authority string
	// Addr gives target_addr, target_ip and target_port; an invalid Addr
	// leaves the three labels out. An IPv4-mapped IPv6 address is shown as
	// the IPv4 address it is.
	Addr netip.AddrPort
	// TLS gives tls, no_tls_reason, client_id and server_id.
	TLS TLS
	// Dst holds the destination's metric labels from discovery without the
	// prefix, e.g. {"namespace": "x", "service": "web", "pod": "web-1"};
	// each is emitted as dst_<key> (dst_namespace, ...). Keys are sanitized
	// into valid label names (invalid characters become '_'); of keys that
	// collide after sanitizing, the first in sorted order wins. Empty keys
	// are dropped.
	Dst map[string]string
}

// labelPair is one label of a series.
type labelPair struct{ name, value string }

// labelSet is a series' labels in the order they are built; client_golang
// sorts them by name when it writes the exposition.
type labelSet []labelPair

// targetLabels returns t's labels: direction, then authority for HTTP
// (http true), peer for TCP (peer != ""), the target address, TLS and
// dst_* labels. Values are made valid UTF-8.
func targetLabels(t Target, http bool, peer string) labelSet {
	l := make(labelSet, 0, 10+len(t.Dst))
	l = append(l, labelPair{"direction", t.Direction})
	if http {
		l = append(l, labelPair{"authority", t.Authority})
	}
	if peer != "" {
		l = append(l, labelPair{"peer", peer})
	}
	if t.Addr.IsValid() {
		a := netip.AddrPortFrom(t.Addr.Addr().Unmap(), t.Addr.Port())
		l = append(l,
			labelPair{"target_addr", a.String()},
			labelPair{"target_ip", a.Addr().String()},
			labelPair{"target_port", strconv.Itoa(int(a.Port()))},
		)
	}
	status := t.TLS.Status
	if status == "" {
		status = "disabled"
	}
	l = append(l, labelPair{"tls", status})
	switch status {
	case "no_identity":
		if t.TLS.NoTLSReason != "" {
			l = append(l, labelPair{"no_tls_reason", t.TLS.NoTLSReason})
		}
	case "true":
		if t.TLS.ClientID != "" {
			l = append(l, labelPair{"client_id", t.TLS.ClientID})
		}
		if t.TLS.ServerID != "" {
			l = append(l, labelPair{"server_id", t.TLS.ServerID})
		}
	}
	l = append(l, dstLabels(t.Dst)...)
	for i := range l {
		l[i].value = labelValue(l[i].value)
	}
	return l
}

// dstLabels turns discovery's metric labels into sorted dst_* labels.
func dstLabels(dst map[string]string) labelSet {
	keys := make([]string, 0, len(dst))
	for k := range dst {
		if k != "" {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	l := make(labelSet, 0, len(keys))
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		name := "dst_" + labelName(k)
		if seen[name] {
			continue
		}
		seen[name] = true
		l = append(l, labelPair{name, dst[k]})
	}
	return l
}

// labelName replaces every character that may not appear in a (legacy,
// Prometheus 2 compatible) label name with '_'. The result is always used
// behind a prefix, so a leading digit is fine.
func labelName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, s)
}

// labelValue makes s valid UTF-8, as label values must be.
func labelValue(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

// key returns a string that identifies the label set; '\xff' never occurs
// in valid UTF-8, so distinct sets give distinct keys.
func (l labelSet) key() string {
	var b strings.Builder
	for _, p := range l {
		b.WriteString(p.name)
		b.WriteByte('\xff')
		b.WriteString(p.value)
		b.WriteByte('\xff')
	}
	return b.String()
}

// with returns l followed by extra, in a new slice.
func (l labelSet) with(extra ...labelPair) labelSet {
	return append(slices.Clip(l), extra...)
}

// desc builds the descriptor of one fixed-label metric.
func (l labelSet) desc(name, help string) *prometheus.Desc {
	m := make(prometheus.Labels, len(l))
	for _, p := range l {
		m[p.name] = p.value
	}
	return prometheus.NewDesc(name, help, nil, m)
}
