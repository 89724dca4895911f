package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/sluice-mesh/sluice/agent/api"
)

// RuleSet returns the iptables-restore input (for iptables-restore or
// ip6tables-restore, by family) that Install feeds with --noflush. Zero
// fields of cfg take their defaults. Only the skipped subnets of family
// appear (an IPv4-mapped IPv6 prefix counts as IPv4); invalid prefixes and
// port ranges are left out, which Install rejects up front. The chains are
// created with -N, so the input fails as a whole where they already exist.
// An unknown family gives "".
func RuleSet(cfg api.PodConfig, family Family) string {
	if family != IPv4 && family != IPv6 {
		return ""
	}
	cfg = cfg.WithDefaults()
	var b strings.Builder
	rule := func(chain string, spec ...string) {
		b.WriteString("-A " + chain + " " + strings.Join(spec, " ") + "\n")
	}
	comment := func(s string) string { return `-m comment --comment "sluice: ` + s + `"` }

	fmt.Fprintf(&b, "# Sluice %s rules for %s --noflush.\n", family, family.restoreCmd())
	b.WriteString("*nat\n")
	b.WriteString("-N " + InboundChain + "\n")
	b.WriteString("-N " + OutboundChain + "\n")

	for _, ports := range multiport(cfg.SkipInboundPorts) {
		rule(InboundChain, "-p tcp -m multiport --dports", ports, comment("skip inbound ports"), "-j RETURN")
	}
	rule(InboundChain, "-p tcp", comment("inbound to proxy"), "-j REDIRECT --to-ports", strconv.Itoa(int(cfg.InboundPort)))

	rule(OutboundChain, "-m owner --uid-owner", strconv.FormatUint(uint64(cfg.ProxyUID), 10), comment("proxy user"), "-j RETURN")
	rule(OutboundChain, "-o lo", comment("loopback"), "-j RETURN")
	for _, ports := range multiport(cfg.SkipOutboundPorts) {
		rule(OutboundChain, "-p tcp -m multiport --dports", ports, comment("skip outbound ports"), "-j RETURN")
	}
	for _, p := range subnets(cfg.SkipSubnets, family) {
		rule(OutboundChain, "-d", p.String(), comment("skip subnet"), "-j RETURN")
	}
	rule(OutboundChain, "-p tcp", comment("outbound to proxy"), "-j REDIRECT --to-ports", strconv.Itoa(int(cfg.OutboundPort)))

	rule("PREROUTING", comment("inbound"), "-j", InboundChain)
	rule("OUTPUT", comment("outbound"), "-j", OutboundChain)
	b.WriteString("COMMIT\n")
	return b.String()
}

// multiport returns the --dports arguments for rs, split so that none takes
// more than the 15 ports multiport allows (a range "lo:hi" takes two).
func multiport(rs []api.PortRange) []string {
	var (
		out   []string
		cur   []string
		slots int
	)
	for _, r := range rs {
		if r.Lo == 0 || r.Lo > r.Hi {
			continue
		}
		s, n := strconv.Itoa(int(r.Lo)), 1
		if r.Hi != r.Lo {
			s, n = s+":"+strconv.Itoa(int(r.Hi)), 2
		}
		if slots+n > maxMultiport {
			out = append(out, strings.Join(cur, ","))
			cur, slots = nil, 0
		}
		cur = append(cur, s)
		slots += n
	}
	if len(cur) > 0 {
		out = append(out, strings.Join(cur, ","))
	}
	return out
}

// subnets returns the valid prefixes of ps in family, masked, IPv4-mapped
// IPv6 prefixes unmapped.
func subnets(ps []netip.Prefix, family Family) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		if a := p.Addr(); a.Is4In6() {
			if p.Bits() < 96 {
				continue // covers more than the mapped range; no IPv4 meaning
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if p.Addr().Is4() != (family == IPv4) {
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}
