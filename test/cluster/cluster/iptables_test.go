package cluster

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitRule(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{"-N KUBE-SERVICES", []string{"-N", "KUBE-SERVICES"}},
		{`-A POSTROUTING -s 10.244.0.5/32 -m comment --comment "name: \"sluice-cluster\" id: \"abc\"" -j CNI-1234`,
			[]string{"-A", "POSTROUTING", "-s", "10.244.0.5/32", "-m", "comment", "--comment", `name: "sluice-cluster" id: "abc"`, "-j", "CNI-1234"}},
		{`-A KUBE-SERVICES -m comment --comment "kubernetes service portals" -j KUBE-X`,
			[]string{"-A", "KUBE-SERVICES", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-X"}},
		{"", nil},
	}
	for _, tt := range tests {
		got, err := splitRule(tt.line)
		if err != nil {
			t.Errorf("splitRule(%q): %v", tt.line, err)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("splitRule(%q) = %q, want %q", tt.line, got, tt.want)
		}
	}
	if _, err := splitRule(`-A X --comment "open`); err == nil {
		t.Error("an unterminated quote was accepted")
	}
}

// TestOurIptables picks the cluster's chains and the rules referring to
// them out of tables that also hold another CNI network's chains and
// unrelated rules; the portmap plugin's shared chains are the cluster's
// only while no other network forwards a host port.
func TestOurIptables(t *testing.T) {
	rule := func(table, line string) iptablesRule {
		f, err := splitRule(line)
		if err != nil {
			t.Fatal(err)
		}
		return iptablesRule{family: "iptables", table: table, chain: f[1], spec: f[2:]}
	}
	chain := func(table, name string) iptablesChain { return iptablesChain{"iptables", table, name} }
	chains := []iptablesChain{
		chain("nat", "KUBE-SERVICES"), chain("nat", "KUBE-SVC-X"), chain("filter", "KUBE-FIREWALL"),
		chain("nat", "CNI-ours"), chain("nat", "CNI-theirs"), chain("nat", "CNI-DN-ours"),
		chain("nat", "CNI-HOSTPORT-DNAT"), chain("nat", "CNI-HOSTPORT-MASQ"), chain("nat", "CNI-HOSTPORT-SETMARK"),
		chain("nat", "SLUICE-OUT"),
	}
	rules := []iptablesRule{
		rule("nat", `-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`),
		rule("nat", `-A KUBE-SERVICES -j KUBE-SVC-X`),
		rule("filter", `-A INPUT -j KUBE-FIREWALL`),
		rule("nat", `-A POSTROUTING -s 10.244.0.5/32 -m comment --comment "name: \"sluice-cluster\" id: \"a\"" -j CNI-ours`),
		rule("nat", `-A CNI-ours -d 10.244.0.0/24 -m comment --comment "name: \"sluice-cluster\" id: \"a\"" -j ACCEPT`),
		rule("nat", `-A POSTROUTING -s 10.250.0.5/32 -m comment --comment "name: \"critest\" id: \"b\"" -j CNI-theirs`),
		rule("nat", `-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`),
		rule("nat", `-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ`),
		rule("nat", `-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"sluice-cluster\" id: \"a\"" -m multiport --dports 80 -j CNI-DN-ours`),
		rule("nat", `-A OUTPUT -j SLUICE-OUT`),
	}
	theirHostport := rule("nat", `-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"critest\" id: \"b\"" -m multiport --dports 81 -j CNI-DN-theirs`)
	base := []string{"CNI-DN-ours", "CNI-ours", "KUBE-FIREWALL", "KUBE-SERVICES", "KUBE-SVC-X"}
	baseRefs := []string{
		`PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES`,
		`INPUT -j KUBE-FIREWALL`,
		`POSTROUTING -s 10.244.0.5/32 -m comment --comment name: "sluice-cluster" id: "a" -j CNI-ours`,
	}
	tests := []struct {
		name       string
		rules      []iptablesRule
		wantChains []string
		wantRefs   []string
	}{
		{"only this cluster forwards host ports", rules,
			append([]string{"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"}, base...),
			append(slices.Clone(baseRefs),
				`PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`,
				`POSTROUTING -m comment --comment CNI portfwd requiring masquerade -j CNI-HOSTPORT-MASQ`)},
		{"another network forwards a host port", append(slices.Clone(rules), theirHostport), base,
			append(slices.Clone(baseRefs),
				`CNI-HOSTPORT-DNAT -p tcp -m comment --comment dnat name: "sluice-cluster" id: "a" -m multiport --dports 80 -j CNI-DN-ours`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ours, refs := ourIptables(chains, tt.rules)
			var gotChains []string
			for _, c := range ours {
				gotChains = append(gotChains, c.name)
			}
			slices.Sort(gotChains)
			slices.Sort(tt.wantChains)
			if !slices.Equal(gotChains, tt.wantChains) {
				t.Errorf("chains %v, want %v", gotChains, tt.wantChains)
			}
			var gotRefs []string
			for _, r := range refs {
				gotRefs = append(gotRefs, r.chain+" "+strings.Join(r.spec, " "))
			}
			slices.Sort(gotRefs)
			slices.Sort(tt.wantRefs)
			if !slices.Equal(gotRefs, tt.wantRefs) {
				t.Errorf("rules to delete:\n  %s\nwant:\n  %s", strings.Join(gotRefs, "\n  "), strings.Join(tt.wantRefs, "\n  "))
			}
		})
	}
}
