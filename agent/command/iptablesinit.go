package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/iptables"
)

// ownNetns names the init container's own network namespace.
const ownNetns = "/proc/self/ns/net"

type iptablesInitOptions struct {
	proxyUID     uint32
	inboundPort  uint16
	outboundPort uint16
	skipIn       string
	skipOut      string
	skipSubnets  string
	netns        string
	dryRun       bool
	// runner runs iptables in the namespace; nil: directly when --netns is
	// not given, else through nsenter.
	runner iptables.Runner
}

func newIPTablesInitOptions() *iptablesInitOptions {
	return &iptablesInitOptions{
		proxyUID:     api.DefaultProxyUID,
		inboundPort:  api.DefaultInboundPort,
		outboundPort: api.DefaultOutboundPort,
	}
}

func newCmdIPTablesInit() *cobra.Command { return newIPTablesInitOptions().command() }

// command returns the iptables-init command bound to o.
func (o *iptablesInitOptions) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "iptables-init",
		Short: "Install a pod's iptables REDIRECT rules in this network namespace (the sluice-init container)",
		Long: `iptables-init is what the sluice-init container runs in pods injected for the
iptables interception mode. It installs, in the network namespace it runs in,
the same rules as the node agent's iptables mode (linkerd-init's): TCP
connections to the pod, except on the skipped inbound ports and the proxy's
tap and admin ports (4190, 4191), are redirected to the proxy's inbound port;
TCP connections the pod makes, except the proxy user's own, loopback ones and
those to skipped ports and subnets, to the proxy's outbound port on loopback.
Both IPv4 (iptables) and IPv6 (ip6tables) rules go in, each family in one
atomic iptables-restore.

It is idempotent: rules from an earlier run (an init container run again in
the same pod) are replaced. It needs CAP_NET_ADMIN and CAP_NET_RAW and the
iptables programs (iptables-restore, iptables-save and their ip6tables twins).

--dry-run prints the rules instead of installing them.`,
		Example: `  sluice-agent iptables-init --proxy-uid 2102 --skip-outbound-ports 5432 \
    --skip-subnets 10.96.0.0/12
  sluice-agent iptables-init --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.config()
			if err != nil {
				return err
			}
			return o.run(cmd, cfg)
		},
	}
	f := cmd.Flags()
	f.Uint32Var(&o.proxyUID, "proxy-uid", o.proxyUID, "user the proxy runs as; its connections are not redirected")
	f.Uint16Var(&o.inboundPort, "inbound-port", o.inboundPort, "the proxy's inbound port")
	f.Uint16Var(&o.outboundPort, "outbound-port", o.outboundPort, "the proxy's outbound port on loopback")
	f.StringVar(&o.skipIn, "skip-inbound-ports", "", "ports (and ranges, 9000-9100) on the pod that bypass the proxy, comma-separated")
	f.StringVar(&o.skipOut, "skip-outbound-ports", "", "destination ports the pod reaches directly, comma-separated")
	f.StringVar(&o.skipSubnets, "skip-subnets", "", "destination CIDRs the pod reaches directly, comma-separated")
	f.StringVar(&o.netns, "netns", "", "install into this network namespace (a path such as /run/netns/x) instead of the own one")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the iptables-restore input of both families and change nothing")
	return cmd
}

// config builds and validates the pod's steering configuration.
func (o *iptablesInitOptions) config() (api.PodConfig, error) {
	cfg := api.PodConfig{ProxyUID: o.proxyUID, InboundPort: o.inboundPort, OutboundPort: o.outboundPort}
	if o.proxyUID == 0 {
		return cfg, errors.New("--proxy-uid must not be 0: the proxy never runs as root, and root's connections must be redirected")
	}
	var err error
	if cfg.SkipInboundPorts, err = api.ParsePortRanges(o.skipIn); err != nil {
		return cfg, fmt.Errorf("--skip-inbound-ports: %w", err)
	}
	if cfg.SkipOutboundPorts, err = api.ParsePortRanges(o.skipOut); err != nil {
		return cfg, fmt.Errorf("--skip-outbound-ports: %w", err)
	}
	for _, s := range strings.Split(o.skipSubnets, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return cfg, fmt.Errorf("--skip-subnets: %w", err)
		}
		cfg.SkipSubnets = append(cfg.SkipSubnets, p)
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("invalid rules: %w", err)
	}
	return cfg, nil
}

func (o *iptablesInitOptions) run(cmd *cobra.Command, cfg api.PodConfig) error {
	out := cmd.OutOrStdout()
	if o.dryRun {
		for _, f := range []iptables.Family{iptables.IPv4, iptables.IPv6} {
			fmt.Fprint(out, iptables.RuleSet(cfg, f))
		}
		return nil
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	runner, netns := o.runner, o.netns
	if netns == "" {
		netns = ownNetns
		if runner == nil {
			runner = localRunner{}
		}
	}
	rules := &iptables.Rules{Runner: runner}
	err := rules.Install(ctx, netns, cfg)
	if errors.Is(err, iptables.ErrInstalled) {
		fmt.Fprintf(out, "replacing the Sluice rules of an earlier run\n")
		if err = rules.Remove(ctx, netns); err == nil {
			err = rules.Install(ctx, netns, cfg)
		}
	}
	if err != nil {
		return fmt.Errorf("%w (sluice-init needs CAP_NET_ADMIN, CAP_NET_RAW and the iptables programs)", err)
	}
	fmt.Fprintf(out, "installed Sluice iptables rules: inbound to :%d, outbound to loopback:%d, proxy uid %d, skipped inbound ports %s, outbound ports %s, subnets %s\n",
		cfg.InboundPort, cfg.OutboundPort, cfg.ProxyUID, ranges(cfg.SkipInboundPorts), ranges(cfg.SkipOutboundPorts), prefixes(cfg.SkipSubnets))
	return nil
}

func ranges(rs []api.PortRange) string {
	if len(rs) == 0 {
		return "none"
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// localRunner runs commands in the caller's own network namespace, whatever
// netns names: the init container is already in the pod's.
type localRunner struct{}

var _ iptables.Runner = localRunner{}

func (localRunner) Run(ctx context.Context, _ string, stdin []byte, name string, args ...string) ([]byte, error) {
	c := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		c.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return stdout.Bytes(), fmt.Errorf("%w: %s", err, msg)
		}
		return stdout.Bytes(), err
	}
	return stdout.Bytes(), nil
}
