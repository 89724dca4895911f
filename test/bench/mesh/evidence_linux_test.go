package mesh

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/test/bench/benchkit"
	"github.com/sluice-mesh/sluice/test/netns"
)

// appCount is a line of the app's stats (loadgen ListenerCount).
type appCount struct {
	Addr     string `json:"addr"`
	Proto    string `json:"proto"`
	Loopback int64  `json:"loopback"`
	Other    int64  `json:"other"`
}

// appCounts reads the server app's per-listener counts by port.
func appCounts(p *pair) (map[uint16]appCount, error) {
	body, err := benchkit.HTTPGet(fmt.Sprintf("http://%s/", netip.AddrPortFrom(p.srv.IPv4(), portStats)))
	if err != nil {
		return nil, fmt.Errorf("app stats of %s: %w", p.Name, err)
	}
	var counts []appCount
	if err := json.Unmarshal(body, &counts); err != nil {
		return nil, fmt.Errorf("app stats of %s: %w: %s", p.Name, err, body)
	}
	out := map[uint16]appCount{}
	for _, c := range counts {
		if ap, err := netip.ParseAddrPort(c.Addr); err == nil {
			out[ap.Port()] = c
		}
	}
	return out, nil
}

// redirectRule matches a counted nat REDIRECT rule of iptables-save -c.
var redirectRule = regexp.MustCompile(`^\[(\d+):\d+\] -A (\S+) .*-j REDIRECT`)

// redirectHits sums the packets that hit REDIRECT rules in pod's nat table,
// per chain: the first packets of the connections the rules steered.
func redirectHits(pod *netns.Pod) (map[string]int64, error) {
	out, err := pod.Command(0, "iptables-save", "-c", "-t", "nat").Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-save in %s: %w", pod.Name(), err)
	}
	hits := map[string]int64{}
	for line := range strings.SplitSeq(string(out), "\n") {
		if m := redirectRule.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			hits[m[2]] += n
		}
	}
	return hits, nil
}

// evidence checks that each case took the path it names and returns the
// report's section on it; what does not hold fails the run.
func (f *fixture) evidence() string {
	tb := f.tb
	tb.Helper()
	var sb strings.Builder
	sb.WriteString("Checked by the benchmark, which fails otherwise: the application counted, per listener and by the peer's " +
		"address, at least the requests (bulk: connections) the load generator counted as answered; through a proxy they come " +
		"from loopback, without one from the client pod. Sluice's proxies counted them in `request_total`; nat REDIRECT rules " +
		"steered connections where the case uses iptables and none exist elsewhere; the eBPF counters moved as the case says.\n\n")
	sb.WriteString("| case | HTTP requests measured | app: from loopback / elsewhere | gRPC calls measured | app: loopback / elsewhere | TCP connections measured | app: loopback / elsewhere | client proxy `request_total` outbound | server proxy inbound | nat REDIRECT hits client pod / server pod | eBPF counters moved during its runs | client proxy: outbound requests with `tls=\"true\"` / TLS handshakes |\n")
	sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
	for _, p := range f.pairs {
		sent := map[string]int64{}
		for _, w := range f.cfg.Workloads() {
			for _, r := range p.Runs[w.Key] {
				sent[w.Proto] += r.Res.Requests
			}
		}
		counts, err := appCounts(p)
		if err != nil {
			tb.Error(err)
			continue
		}
		cell := func(proto string, port uint16) string {
			c := counts[port]
			got := c.Other
			if p.Proxied() {
				got = c.Loopback
				if c.Other != 0 {
					tb.Errorf("%s: the app's %s listener served %d requests from outside the pod: around the proxy", p.Name, proto, c.Other)
				}
			} else if c.Loopback != 0 {
				tb.Errorf("%s: the app's %s listener served %d requests from loopback without a proxy", p.Name, proto, c.Loopback)
			}
			if got < sent[proto] {
				tb.Errorf("%s: the app's %s listener served %d from the expected peer, fewer than the %d measured", p.Name, proto, got, sent[proto])
			}
			return fmt.Sprintf("| %d | %d / %d ", sent[proto], c.Loopback, c.Other)
		}
		row := "| " + p.Name + " " + cell("http", portHTTP) + cell("grpc", portGRPC) + cell("tcp", portSink)
		out, in := "—", "—"
		if p.sluice {
			o := f.sluiceRequests(p.cli, "outbound")
			i := f.sluiceRequests(p.srv, "inbound")
			if o < float64(sent["http"]+sent["grpc"]) || i < float64(sent["http"]+sent["grpc"]) {
				tb.Errorf("%s: request_total outbound %.0f on the client proxy, inbound %.0f on the server proxy; %d measured",
					p.Name, o, i, sent["http"]+sent["grpc"])
			}
			out, in = fmt.Sprintf("%.0f", o), fmt.Sprintf("%.0f", i)
		}
		var hits [2]int64
		for i, pod := range []*netns.Pod{p.cli, p.srv} {
			h, err := redirectHits(pod)
			if err != nil {
				tb.Error(err)
			}
			for _, n := range h {
				hits[i] += n
			}
			if p.iptables && (len(h) == 0 || hits[i] == 0) {
				tb.Errorf("%s: no nat REDIRECT rule of pod %s steered anything: %v", p.Name, pod.Name(), h)
			}
			if !p.iptables && len(h) != 0 {
				tb.Errorf("%s: pod %s has nat REDIRECT rules: %v", p.Name, pod.Name(), h)
			}
		}
		counters := "— (no BPF programs on this node)"
		if p.agent != nil {
			counters = sortedCounters(p.Counters)
			if p.Counters["steered_outbound_ipv4"] == 0 {
				tb.Errorf("%s: steered_outbound_ipv4 did not move", p.Name)
			}
			if p.redirect != (p.Counters["redirect_ok"] > 0) {
				tb.Errorf("%s: redirect_ok moved by %d; the sk_msg redirect is %v for this case", p.Name, p.Counters["redirect_ok"], p.redirect)
			}
		}
		fmt.Fprintf(&sb, "%s| %s | %s | %d / %d | %s | %s |\n", row, out, in, hits[0], hits[1], counters, f.tlsEvidence(p))
	}
	return sb.String()
}

// tlsEvidence checks that the client proxy of p sent its requests over
// mutual TLS to the server's identity if and only if p is the mTLS case,
// and returns the cell: requests with tls="true" and handshakes.
func (f *fixture) tlsEvidence(p *pair) string {
	if !p.sluice {
		return "—"
	}
	body, err := benchkit.HTTPGet(fmt.Sprintf("http://%s/metrics", netip.AddrPortFrom(p.cli.IPv4(), adminPort)))
	if err != nil {
		f.tb.Errorf("metrics of the proxy in %s: %v", p.cli.Name(), err)
		return "?"
	}
	serverID := meshmeta.IdentityName("web-"+p.slug, namespace, meshmeta.DefaultTrustDomain)
	all, _ := benchkit.SumMetric(string(body), "request_total", `direction="outbound"`)
	secured, _ := benchkit.SumMetric(string(body), "request_total", `direction="outbound"`, `server_id="`+serverID+`"`, `tls="true"`)
	handshakes, _ := benchkit.SumMetric(string(body), "tls_handshakes_total", `direction="outbound"`)
	switch {
	case p.mtls && (secured < all || handshakes == 0):
		f.tb.Errorf("%s: %.0f of %.0f outbound requests were mutual TLS to %s, %.0f handshakes", p.Name, secured, all, serverID, handshakes)
	case !p.mtls && secured > 0:
		f.tb.Errorf("%s: %.0f outbound requests were mutual TLS in a plaintext case", p.Name, secured)
	}
	return fmt.Sprintf("%.0f / %.0f", secured, handshakes)
}

// sluiceRequests sums request_total of direction on the proxy of pod.
func (f *fixture) sluiceRequests(pod *netns.Pod, direction string) float64 {
	body, err := benchkit.HTTPGet(fmt.Sprintf("http://%s/metrics", netip.AddrPortFrom(pod.IPv4(), adminPort)))
	if err != nil {
		f.tb.Errorf("metrics of the proxy in %s: %v", pod.Name(), err)
		return 0
	}
	n, _ := benchkit.SumMetric(string(body), "request_total", `direction="`+direction+`"`)
	return n
}
