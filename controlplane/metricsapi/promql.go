package metricsapi

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/controlplane/metricsapi/api"
)

// The proxies' metric names and labels (DESIGN.md, proxy/metrics).
const (
	metricResponses   = "response_total"
	metricLatency     = "response_latency_ms_bucket"
	metricTCPOpen     = "tcp_open_connections"
	metricTCPOpened   = "tcp_open_total"
	metricTCPRead     = "tcp_read_bytes_total"
	metricTCPWrite    = "tcp_write_bytes_total"
	labelDirection    = "direction"
	labelNamespace    = "namespace"
	labelAuthority    = "authority"
	labelClass        = "classification"
	labelPeer         = "peer"
	labelTLS          = "tls"
	labelClientID     = "client_id"
	labelServerID     = "server_id"
	labelNoTLSReason  = "no_tls_reason"
	dstPrefix         = "dst_"
	classSuccess      = "success"
	directionInbound  = "inbound"
	directionOutbound = "outbound"
)

// The latency quantiles a stat row or route reports.
var quantiles = [3]float64{0.5, 0.95, 0.99}

// PromLabel returns the label that names a resource of type t on the
// proxies' series, as Prometheus' relabelling of the scraped pod adds it
// (and, behind "dst_", as the destination service's metric labels carry
// it): namespace, pod, deployment, statefulset, daemonset, k8s_job (not
// "job", which is Prometheus' own) and service (only as dst_service).
func PromLabel(t api.ResourceType) string {
	if t == api.Job {
		return "k8s_job"
	}
	return string(t)
}

// matcher is one label matcher of a series selector.
type matcher struct {
	name, op, value string
}

func eq(name, value string) matcher { return matcher{name, "=", value} }
func ne(name, value string) matcher { return matcher{name, "!=", value} }

// selector is a series selector's matchers, in the order they are written.
type selector []matcher

// String renders s as PromQL, each value a quoted, escaped string literal
// (PromQL's string literals take Go's escapes).
func (s selector) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, m := range s {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(m.name)
		b.WriteString(m.op)
		b.WriteString(strconv.Quote(m.value))
	}
	b.WriteByte('}')
	return b.String()
}

// with returns s followed by the matchers in ms it does not hold yet, in a
// new slice.
func (s selector) with(ms ...matcher) selector {
	out := append(selector(nil), s...)
	for _, m := range ms {
		dup := false
		for _, x := range out {
			dup = dup || x == m
		}
		if !dup {
			out = append(out, m)
		}
	}
	return out
}

// selection is which series a request is about and how they group into
// rows.
type selection struct {
	// sel selects the HTTP series, direction first.
	sel selector
	// outbound is the direction of sel.
	outbound bool
	// keyNS and keyName are the labels that identify a row's resource;
	// keyNS is "" when rows are namespaces.
	keyNS, keyName string
}

// groupBy returns the row labels followed by extra.
func (s selection) groupBy(extra ...string) []string {
	var l []string
	if s.keyNS != "" {
		l = append(l, s.keyNS)
	}
	return append(append(l, s.keyName), extra...)
}

// tcpSelector returns the selector of the TCP series: with the peer on
// the far side of the proxy (src inbound, the connecting clients; dst
// outbound, the connections to the destination, which carry its dst_*
// labels).
func (s selection) tcpSelector() selector {
	if s.outbound {
		return s.sel.with(eq(labelPeer, "dst"))
	}
	return s.sel.with(eq(labelPeer, "src"))
}

// resourceMatchers select the series of resources of type t named name
// ("" for all of them) in namespace ns ("" for all), with label names
// behind prefix ("" or "dst_").
func resourceMatchers(prefix string, t api.ResourceType, ns, name string) selector {
	var s selector
	if t != api.Namespace && ns != "" {
		s = append(s, eq(prefix+labelNamespace, ns))
	}
	l := prefix + PromLabel(t)
	if name != "" {
		s = append(s, eq(l, name))
	} else {
		s = append(s, ne(l, ""))
	}
	return s
}

// keyLabels returns the labels that identify a resource of type t behind
// prefix.
func keyLabels(prefix string, t api.ResourceType) (nsLabel, nameLabel string) {
	if t == api.Namespace {
		return "", prefix + labelNamespace
	}
	return prefix + labelNamespace, prefix + PromLabel(t)
}

// statSelection returns the series about the resources of type t named
// name in ns, as Linkerd's stat selects them: their inbound traffic; with
// to, their outbound traffic to it; with from, the traffic from sent them.
// A service's traffic is what was sent to it (outbound, dst_service),
// narrowed by to or from. At most one of to and from is not nil, and from
// is no service (api.ParseStatRequest checks both).
func statSelection(t api.ResourceType, ns, name string, to, from *api.Resource) selection {
	var s selection
	switch {
	case t == api.Service:
		s.outbound = true
		s.sel = selector{eq(labelDirection, directionOutbound)}
		if from != nil {
			s.sel = s.sel.with(resourceMatchers("", from.Kind, from.Namespace, from.Name)...)
		}
		s.sel = s.sel.with(resourceMatchers(dstPrefix, t, ns, name)...)
		if to != nil {
			s.sel = s.sel.with(resourceMatchers(dstPrefix, to.Kind, to.Namespace, to.Name)...)
		}
		s.keyNS, s.keyName = keyLabels(dstPrefix, t)
	case to != nil:
		s.outbound = true
		s.sel = selector{eq(labelDirection, directionOutbound)}.
			with(resourceMatchers("", t, ns, name)...).
			with(resourceMatchers(dstPrefix, to.Kind, to.Namespace, to.Name)...)
		s.keyNS, s.keyName = keyLabels("", t)
	case from != nil:
		s.outbound = true
		s.sel = selector{eq(labelDirection, directionOutbound)}.
			with(resourceMatchers("", from.Kind, from.Namespace, from.Name)...).
			with(resourceMatchers(dstPrefix, t, ns, name)...)
		s.keyNS, s.keyName = keyLabels(dstPrefix, t)
	default:
		s.sel = selector{eq(labelDirection, directionInbound)}.with(resourceMatchers("", t, ns, name)...)
		s.keyNS, s.keyName = keyLabels("", t)
	}
	return s
}

// promRange renders a window as a PromQL range ("[60s]").
func promRange(w time.Duration) string {
	return "[" + strconv.FormatInt(int64(w/time.Second), 10) + "s]"
}

func by(labels []string) string { return "by (" + strings.Join(labels, ", ") + ")" }

// rateQuery sums the per-second rate of metric over w by labels.
func rateQuery(metric string, sel selector, w time.Duration, labels []string) string {
	return fmt.Sprintf("sum %s (rate(%s%s%s))", by(labels), metric, sel, promRange(w))
}

// quantileQuery is the q-quantile of the response latency over w by
// labels.
func quantileQuery(q float64, sel selector, w time.Duration, labels []string) string {
	return fmt.Sprintf("histogram_quantile(%s, %s)", strconv.FormatFloat(q, 'g', -1, 64),
		rateQuery(metricLatency, sel, w, append([]string{"le"}, labels...)))
}

// statQueries are the queries of a stat request.
type statQueries struct {
	responses         string    // response rate by row and classification
	latency           [3]string // quantiles of the latency by row
	tcpOpen           string    // open connections by row
	tcpRead, tcpWrite string    // byte rates by row
}

func buildStatQueries(s selection, w time.Duration) statQueries {
	g := s.groupBy()
	q := statQueries{
		responses: rateQuery(metricResponses, s.sel, w, s.groupBy(labelClass)),
		tcpOpen:   fmt.Sprintf("sum %s (%s%s)", by(g), metricTCPOpen, s.tcpSelector()),
		tcpRead:   rateQuery(metricTCPRead, s.tcpSelector(), w, g),
		tcpWrite:  rateQuery(metricTCPWrite, s.tcpSelector(), w, g),
	}
	for i, qu := range quantiles {
		q.latency[i] = quantileQuery(qu, s.sel, w, g)
	}
	return q
}

// routeQueries are the queries of a top-routes request.
type routeQueries struct {
	responses string
	latency   [3]string
}

func buildRouteQueries(s selection, w time.Duration) routeQueries {
	q := routeQueries{responses: rateQuery(metricResponses, s.sel, w, []string{labelAuthority, labelClass})}
	for i, qu := range quantiles {
		q.latency[i] = quantileQuery(qu, s.sel, w, []string{labelAuthority})
	}
	return q
}

// edgeQueries are the queries of an edges request: the outbound series
// of sources with a destination of the type, and the inbound series that
// name a client identity.
type edgeQueries struct {
	outbound, inbound string
}

func buildEdgeQueries(t api.ResourceType) edgeQueries {
	srcNS, src := keyLabels("", t)
	dstNS, dst := keyLabels(dstPrefix, t)
	out := selector{eq(labelDirection, directionOutbound), ne(src, ""), ne(dst, "")}
	in := selector{eq(labelDirection, directionInbound), eq(labelTLS, "true"), ne(labelClientID, ""), ne(src, "")}
	outBy := nonEmpty(srcNS, src, dstNS, dst, labelTLS, labelServerID, labelNoTLSReason)
	inBy := nonEmpty(srcNS, src, labelClientID)
	return edgeQueries{
		outbound: fmt.Sprintf("count %s (%s%s or %s%s)", by(outBy),
			metricTCPOpened, out.with(eq(labelPeer, "dst")), metricResponses, out),
		inbound: fmt.Sprintf("count %s (%s%s or %s%s)", by(inBy),
			metricTCPOpened, in.with(eq(labelPeer, "src")), metricResponses, in),
	}
}

func nonEmpty(s ...string) []string {
	var out []string
	for _, x := range s {
		if x != "" {
			out = append(out, x)
		}
	}
	return out
}
