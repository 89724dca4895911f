package cluster

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
)

// iptablesTables are the tables the cluster's components write to.
var iptablesTables = []string{"filter", "nat", "mangle", "raw"}

// iptablesRule is one "-A" line of `iptables -S`.
type iptablesRule struct {
	family, table, chain string
	// spec is the rule without "-A <chain>", tokenized.
	spec []string
}

func (r iptablesRule) jumpTarget() string {
	for i, a := range r.spec {
		if (a == "-j" || a == "-g" || a == "--jump" || a == "--goto") && i+1 < len(r.spec) {
			return r.spec[i+1]
		}
	}
	return ""
}

func (r iptablesRule) comment() string {
	for i, a := range r.spec {
		if a == "--comment" && i+1 < len(r.spec) {
			return r.spec[i+1]
		}
	}
	return ""
}

// iptablesChain is a chain of a table of a family.
type iptablesChain struct{ family, table, name string }

func (c iptablesChain) String() string {
	return fmt.Sprintf("%s chain %s (table %s)", c.family, c.name, c.table)
}

// iptablesState lists the chains and rules of every table of both families.
func iptablesState() ([]iptablesChain, []iptablesRule, error) {
	var chains []iptablesChain
	var rules []iptablesRule
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, table := range iptablesTables {
			out, err := exec.Command(family, "-w", "-t", table, "-S").Output()
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					return nil, nil, fmt.Errorf("%s -t %s -S: %w: %s", family, table, err, ee.Stderr)
				}
				return nil, nil, fmt.Errorf("%s -t %s -S: %w", family, table, err)
			}
			for _, line := range strings.Split(string(out), "\n") {
				f, err := splitRule(line)
				if err != nil {
					return nil, nil, fmt.Errorf("%s -t %s -S: %w", family, table, err)
				}
				switch {
				case len(f) == 2 && f[0] == "-N":
					chains = append(chains, iptablesChain{family, table, f[1]})
				case len(f) >= 2 && f[0] == "-A":
					rules = append(rules, iptablesRule{family, table, f[1], f[2:]})
				}
			}
		}
	}
	return chains, rules, nil
}

// splitRule tokenizes a line of `iptables -S`: words separated by spaces,
// double-quoted words with backslash escapes (comments).
func splitRule(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quoted && ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			quoted, inWord = !quoted, true
		case ch == ' ' && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// hostportChains are the portmap plugin's chains shared by every CNI
// network of the machine.
var hostportChains = []string{"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"}

// ourIptables returns the chains that are the cluster's, and the rules in
// other chains that refer to them or carry the cluster's CNI comment:
// every KUBE-* chain (kube-proxy's and the kubelet's; `kube-proxy
// --cleanup` leaves KUBE-IPTABLES-HINT and the kubelet's KUBE-FIREWALL and
// KUBE-KUBELET-CANARY), the CNI plugins' chains of network CNINetwork
// (known by their rules' comments, `name: "sluice-cluster" id:
// "<container>"`, as the bridge and portmap plugins write them), and the
// portmap plugin's shared CNI-HOSTPORT-* chains when no other network
// forwards a host port through them. Other CNI networks' chains on this
// machine are left alone.
func ourIptables(chains []iptablesChain, rules []iptablesRule) (ours []iptablesChain, refs []iptablesRule) {
	mark := fmt.Sprintf("name: %q", CNINetwork)
	isOurs := map[iptablesChain]bool{}
	for _, c := range chains {
		if strings.HasPrefix(c.name, "KUBE-") {
			isOurs[c] = true
		}
	}
	for _, c := range chains {
		if c.name != hostportChains[0] {
			continue
		}
		shared := false
		for _, r := range rules {
			shared = shared || (r.family == c.family && r.table == c.table && r.chain == c.name && !strings.Contains(r.comment(), mark))
		}
		if !shared {
			for _, name := range hostportChains {
				isOurs[iptablesChain{c.family, c.table, name}] = true
			}
		}
	}
	for _, r := range rules {
		if !strings.Contains(r.comment(), mark) {
			continue
		}
		if t := r.jumpTarget(); strings.HasPrefix(t, "CNI-") && !strings.HasPrefix(t, "CNI-HOSTPORT-") {
			isOurs[iptablesChain{r.family, r.table, t}] = true
		}
		if strings.HasPrefix(r.chain, "CNI-") && !strings.HasPrefix(r.chain, "CNI-HOSTPORT-") {
			isOurs[iptablesChain{r.family, r.table, r.chain}] = true
		}
	}
	for _, c := range chains {
		if isOurs[c] {
			ours = append(ours, c)
		}
	}
	for _, r := range rules {
		if isOurs[iptablesChain{r.family, r.table, r.chain}] {
			continue // goes with its chain
		}
		if isOurs[iptablesChain{r.family, r.table, r.jumpTarget()}] || strings.Contains(r.comment(), mark) {
			refs = append(refs, r)
		}
	}
	return ours, refs
}

// sweepIptables deletes the cluster's chains and the rules that refer to
// them, until none is left (a plugin may add one meanwhile).
func sweepIptables() error {
	var err error
	for range 3 {
		var done bool
		if done, err = sweepIptablesOnce(); done && err == nil {
			return nil
		}
	}
	return err
}

func sweepIptablesOnce() (done bool, err error) {
	chains, rules, err := iptablesState()
	if err != nil {
		return false, err
	}
	ours, refs := ourIptables(chains, rules)
	if len(ours) == 0 && len(refs) == 0 {
		return true, nil
	}
	var errs []error
	run := func(family string, args ...string) {
		if out, err := exec.Command(family, append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w: %s", family, strings.Join(args, " "), err, strings.TrimSpace(string(out))))
		}
	}
	for _, r := range refs {
		run(r.family, append([]string{"-t", r.table, "-D", r.chain}, r.spec...)...)
	}
	// Flush all first: our chains jump to each other.
	for _, c := range ours {
		run(c.family, "-t", c.table, "-F", c.name)
	}
	for _, c := range ours {
		run(c.family, "-t", c.table, "-X", c.name)
	}
	return false, errors.Join(errs...)
}

// iptablesLeftovers lists the cluster's chains still there.
func iptablesLeftovers() ([]string, error) {
	chains, rules, err := iptablesState()
	if err != nil {
		return nil, err
	}
	ours, refs := ourIptables(chains, rules)
	var out []string
	for _, c := range ours {
		out = append(out, c.String())
	}
	for _, r := range refs {
		out = append(out, fmt.Sprintf("%s rule in %s (table %s): %s", r.family, r.chain, r.table, strings.Join(r.spec, " ")))
	}
	return slices.Compact(out), nil
}
