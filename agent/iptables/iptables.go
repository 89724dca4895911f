// Package iptables programs per-pod iptables REDIRECT rules, the node agent's
// "iptables mode": the same steering as linkerd-init, installed from outside
// the pod into its network namespace.
//
// Two chains go into the nat table of each family (iptables and ip6tables):
//
//   - SLUICE_INBOUND, jumped to from PREROUTING, returns for the skipped
//     inbound ports and redirects every other TCP connection to the proxy's
//     inbound port.
//   - SLUICE_OUTPUT, jumped to from OUTPUT, returns for the proxy's own user,
//     for loopback, for the skipped outbound ports and subnets, and redirects
//     every other TCP connection to the proxy's outbound port (127.0.0.1 or
//     ::1, where the proxy listens).
//
// RuleSet renders the iptables-restore input so the rules can be reviewed;
// Rules installs and removes them. Every command runs in the pod's network
// namespace through a Runner; the default one execs
// `nsenter --net=<netns> <cmd>`, so only the child process changes network
// namespace and the agent's own threads never do.
package iptables

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-mesh/sluice/agent/api"
)

// ErrInstalled is wrapped by the error of Install when Sluice chains already
// exist in the network namespace. Install has then changed nothing.
var ErrInstalled = errors.New("sluice iptables rules already installed")

// Chain names. Every chain Sluice owns starts with ChainPrefix.
const (
	ChainPrefix   = "SLUICE_"
	InboundChain  = ChainPrefix + "INBOUND"
	OutboundChain = ChainPrefix + "OUTPUT"
)

// maxMultiport is how many ports one multiport match takes; a range counts
// twice.
const maxMultiport = 15

// rollbackTimeout bounds the removal of the IPv4 rules after a failed IPv6
// install, which runs even when the caller's context is done.
const rollbackTimeout = 10 * time.Second

// Family is an IP address family: IPv4 rules go to iptables, IPv6 rules to
// ip6tables.
type Family uint8

// The address families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// families is the order Install programs them in and Remove removes them.
var families = []Family{IPv4, IPv6}

// String returns "ipv4" or "ipv6".
func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return "family(" + strconv.Itoa(int(f)) + ")"
}

func (f Family) restoreCmd() string {
	if f == IPv6 {
		return "ip6tables-restore"
	}
	return "iptables-restore"
}

func (f Family) saveCmd() string {
	if f == IPv6 {
		return "ip6tables-save"
	}
	return "iptables-save"
}

// Runner runs a command inside a network namespace. stdin may be nil. It
// returns the command's standard output; its error should carry the
// command's standard error, and must wrap os.ErrNotExist when the network
// namespace does not exist.
type Runner interface {
	Run(ctx context.Context, netns string, stdin []byte, name string, args ...string) ([]byte, error)
}

// Rules installs and removes Sluice's iptables rules in network namespaces.
// The zero value is ready to use; a Rules must not be copied after first
// use. A Rules is safe for concurrent use as far as its Runner is: it
// serializes Install and Remove per network namespace, so of installs racing
// on one namespace one wins and the others return ErrInstalled. Use one
// Rules per agent: iptables-nft does not settle races between processes.
type Rules struct {
	// Runner runs iptables-restore and iptables-save (and their ip6tables
	// twins) in the pod's network namespace. Nil means exec
	// `nsenter --net=<netns> <cmd>`; netns is then a path such as
	// /run/netns/x or /proc/123/ns/net.
	Runner Runner

	locks nsLocks
}

func (r *Rules) runner() Runner {
	if r.Runner != nil {
		return r.Runner
	}
	return nsenterRunner{}
}

// Install programs the rules for cfg into the nat tables of both families
// in netns, each family in one atomic iptables-restore --noflush. Zero
// fields of cfg take their defaults (api.PodConfig.WithDefaults) and cfg
// must then be valid.
//
// If Sluice chains already exist in netns, in either family, Install returns
// an error wrapping ErrInstalled and changes nothing. If the IPv6 rules fail
// after the IPv4 ones went in, the IPv4 ones are removed again. A missing
// netns gives an error wrapping os.ErrNotExist.
func (r *Rules) Install(ctx context.Context, netns string, cfg api.PodConfig) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("install iptables rules in %s: invalid config: %w", netns, err)
	}
	defer r.locks.lock(netns)()
	for _, f := range families {
		st, err := r.state(ctx, netns, f)
		if err != nil {
			return fmt.Errorf("install iptables rules in %s: %w", netns, err)
		}
		if len(st.chains) > 0 {
			return fmt.Errorf("install iptables rules in %s: %w (%s chains %s)",
				netns, ErrInstalled, f, strings.Join(st.chains, ", "))
		}
	}
	for i, f := range families {
		err := r.restore(ctx, netns, f, []byte(RuleSet(cfg, f)))
		if err == nil {
			continue
		}
		if i == 0 {
			// The rule set creates its chains with -N, so an install that
			// got in since the check above (another process) mostly makes
			// the whole restore fail and leaves that one in place.
			if st, serr := r.state(ctx, netns, f); serr == nil && len(st.chains) > 0 {
				return fmt.Errorf("install iptables rules in %s: %w (%s chains %s)",
					netns, ErrInstalled, f, strings.Join(st.chains, ", "))
			}
			return fmt.Errorf("install iptables rules in %s: %w", netns, err)
		}
		err = fmt.Errorf("install iptables rules in %s: %w", netns, err)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		for _, done := range families[:i] {
			if rerr := r.removeFamily(rctx, netns, done); rerr != nil {
				err = errors.Join(err, fmt.Errorf("roll back %s rules: %w", done, rerr))
			}
		}
		return err
	}
	return nil
}

// Remove deletes the jumps to Sluice chains and the chains themselves from
// the nat tables of both families in netns. A netns without Sluice rules is
// not an error; a missing netns is one wrapping os.ErrNotExist. Remove
// tries both families even when the first fails.
func (r *Rules) Remove(ctx context.Context, netns string) error {
	defer r.locks.lock(netns)()
	var errs []error
	for _, f := range families {
		if err := r.removeFamily(ctx, netns, f); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("remove iptables rules from %s: %w", netns, err)
			}
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove iptables rules from %s: %w", netns, err)
	}
	return nil
}

// Installed reports whether Sluice chains exist in netns in either family,
// which is when Install would return ErrInstalled.
func (r *Rules) Installed(ctx context.Context, netns string) (bool, error) {
	for _, f := range families {
		st, err := r.state(ctx, netns, f)
		if err != nil {
			return false, fmt.Errorf("check iptables rules in %s: %w", netns, err)
		}
		if len(st.chains) > 0 {
			return true, nil
		}
	}
	return false, nil
}

func (r *Rules) removeFamily(ctx context.Context, netns string, f Family) error {
	st, err := r.state(ctx, netns, f)
	if err != nil {
		return err
	}
	script := st.removal()
	if script == "" {
		return nil
	}
	if err := r.restore(ctx, netns, f, []byte(script)); err != nil {
		return err
	}
	return nil
}

func (r *Rules) restore(ctx context.Context, netns string, f Family, input []byte) error {
	// -w waits for the xtables lock under iptables-legacy; nft ignores it.
	if _, err := r.runner().Run(ctx, netns, input, f.restoreCmd(), "-w", "--noflush"); err != nil {
		return fmt.Errorf("%s: %w", f.restoreCmd(), err)
	}
	return nil
}

// state reads the Sluice part of netns's nat table for f.
func (r *Rules) state(ctx context.Context, netns string, f Family) (natState, error) {
	out, err := r.runner().Run(ctx, netns, nil, f.saveCmd(), "-t", "nat")
	if err != nil {
		return natState{}, fmt.Errorf("%s: %w", f.saveCmd(), err)
	}
	return parseSave(string(out)), nil
}

// natState is what of a nat table iptables-save shows concerns Sluice.
type natState struct {
	// chains are the Sluice chains.
	chains []string
	// jumps are the rules outside Sluice chains that jump or go to one, as
	// iptables-save writes them without the leading "-A ".
	jumps []string
}

// removal returns the iptables-restore input that deletes st, or "".
func (st natState) removal() string {
	if len(st.chains) == 0 && len(st.jumps) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, j := range st.jumps {
		b.WriteString("-D " + j + "\n")
	}
	// Flush all before deleting any: a chain may be referenced by another.
	for _, c := range st.chains {
		b.WriteString("-F " + c + "\n")
	}
	for _, c := range st.chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// parseSave picks the Sluice chains and the jumps to them out of the output
// of iptables-save -t nat.
func parseSave(out string) natState {
	var st natState
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if strings.HasPrefix(name, ChainPrefix) {
				st.chains = append(st.chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			args := splitArgs(line)
			if len(args) < 2 || strings.HasPrefix(args[1], ChainPrefix) {
				continue
			}
			for i := 2; i+1 < len(args); i++ {
				switch args[i] {
				case "-j", "--jump", "-g", "--goto":
					if strings.HasPrefix(args[i+1], ChainPrefix) {
						st.jumps = append(st.jumps, strings.TrimPrefix(line, "-A "))
					}
				}
			}
		}
	}
	return st
}

// splitArgs splits an iptables-save rule line into arguments the way
// iptables-restore does: on blanks, with double quotes grouping and
// backslash escaping a quote inside them.
func splitArgs(line string) []string {
	var (
		args   []string
		cur    strings.Builder
		inArg  bool
		quoted bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line) && line[i+1] == '"':
			cur.WriteByte('"')
			i++
		case c == '"':
			quoted = !quoted
			inArg = true
		case !quoted && (c == ' ' || c == '\t'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}
