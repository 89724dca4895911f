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
// them out of a table that also holds another CNI network's chains and
// unrelated rules.
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
		chain("nat", "CNI-ours"), chain("nat", "CNI-theirs"), chain("nat", "CNI-HOSTPORT-DNAT"), chain("nat", "CNI-DN-ours"),
		chain("nat", "SLUICE-OUT"),
	}
	rules := []iptablesRule{
		rule("nat", `-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`),
		rule("nat", `-A KUBE-SERVICES -j KUBE-SVC-X`),
		rule("filter", `-A INPUT -j KUBE-FIREWALL`),
		rule("nat", `-A POSTROUTING -s 10.244.0.5/32 -m comment --comment "name: \"sluice-cluster\" id: \"a\"" -j CNI-ours`),
		rule("nat", `-A CNI-ours -d 10.244.0.0/24 -m comment --comment "name: \"sluice-cluster\" id: \"a\"" -j ACCEPT`),
		rule("nat", `-A POSTROUTING -s 10.250.0.5/32 -m comment --comment "name: \"critest\" id: \"b\"" -j CNI-theirs`),
		rule("nat", `-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"sluice-cluster\" id: \"a\"" -m multiport --dports 80 -j CNI-DN-ours`),
		rule("nat", `-A OUTPUT -j SLUICE-OUT`),
	}
	ours, refs := ourIptables(chains, rules)
	var gotChains []string
	for _, c := range ours {
		gotChains = append(gotChains, c.name)
	}
	slices.Sort(gotChains)
	wantChains := []string{"CNI-DN-ours", "CNI-ours", "KUBE-FIREWALL", "KUBE-SERVICES", "KUBE-SVC-X"}
	if !slices.Equal(gotChains, wantChains) {
		t.Errorf("chains %v, want %v", gotChains, wantChains)
	}
	var gotRefs []string
	for _, r := range refs {
		gotRefs = append(gotRefs, r.chain+" "+strings.Join(r.spec, " "))
	}
	wantRefs := []string{
		`PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES`,
		`INPUT -j KUBE-FIREWALL`,
		`POSTROUTING -s 10.244.0.5/32 -m comment --comment name: "sluice-cluster" id: "a" -j CNI-ours`,
		`CNI-HOSTPORT-DNAT -p tcp -m comment --comment dnat name: "sluice-cluster" id: "a" -m multiport --dports 80 -j CNI-DN-ours`,
	}
	if !slices.Equal(gotRefs, wantRefs) {
		t.Errorf("rules to delete:\n  %s\nwant:\n  %s", strings.Join(gotRefs, "\n  "), strings.Join(wantRefs, "\n  "))
	}
}
