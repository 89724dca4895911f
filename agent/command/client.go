package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/agent/iptables"
)

// clientFlags are shared by the commands that talk to a running agent.
type clientFlags struct {
	socket string
	output string
}

func (c *clientFlags) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.socket, "socket", api.DefaultSocket, "the agent's admin API socket")
	cmd.Flags().StringVarP(&c.output, "output", "o", "table", "output format: table or json")
}

func (c *clientFlags) validate() error {
	if c.output != "table" && c.output != "json" {
		return fmt.Errorf("--output must be table or json, not %q", c.output)
	}
	return nil
}

type enrollOptions struct {
	clientFlags
	netns, pod                   string
	pid                          int
	skipIn, skipOut, skipSubnets string
	proxyUID                     uint32
	outboundPort, inboundPort    uint16
	disableRedirect              bool
	probePort                    uint16
	addresses                    []string
}

func newCmdEnroll() *cobra.Command {
	o := &enrollOptions{}
	cmd := &cobra.Command{
		Use:   "enroll (--netns PATH | --pid PID)",
		Short: "Steer a pod's traffic into its proxy",
		Long: `enroll asks the running agent to steer the TCP traffic of the pod whose network
namespace is given: outbound connects go to the proxy on loopback:4140, inbound
connections to the pod's IPs go to the proxy's 4143 listener. The proxy's user
(uid 2102), loopback destinations and the skipped ports and subnets are left alone.`,
		Example: `  sluice-agent enroll --netns /run/netns/web --skip-outbound-ports 5432 --skip-subnets 10.96.0.0/12
  sluice-agent enroll --pid 4242 --pod default/web-7d9c`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := o.request()
			if err != nil {
				return err
			}
			en, err := api.NewClient(o.socket).Enroll(cmd.Context(), req)
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), []api.Enrollment{en})
		},
	}
	o.bind(cmd)
	f := cmd.Flags()
	f.StringVar(&o.netns, "netns", "", "path of the pod's network namespace")
	f.IntVar(&o.pid, "pid", 0, "a process of the pod (its /proc/PID/ns/net is used)")
	f.StringVar(&o.pod, "pod", "", "namespace/name of the pod, for listings")
	f.StringVar(&o.skipIn, "skip-inbound-ports", "", "ports (and ranges, 9000-9100) on the pod that bypass the proxy")
	f.StringVar(&o.skipOut, "skip-outbound-ports", "", "destination ports the pod reaches directly")
	f.StringVar(&o.skipSubnets, "skip-subnets", "", "destination CIDRs the pod reaches directly, comma-separated")
	f.Uint32Var(&o.proxyUID, "proxy-uid", api.DefaultProxyUID, "user the proxy runs as")
	f.Uint16Var(&o.outboundPort, "outbound-port", api.DefaultOutboundPort, "the proxy's outbound port on loopback")
	f.Uint16Var(&o.inboundPort, "inbound-port", api.DefaultInboundPort, "the proxy's inbound port")
	f.BoolVar(&o.disableRedirect, "disable-redirect", false, "steer without the sk_msg acceleration")
	f.Uint16Var(&o.probePort, "probe-port", 0, fmt.Sprintf("after enrolling, confirm steering by probing the proxy on this port (Sluice proxies: %d); 0: no probe", api.DefaultProbePort))
	f.StringSliceVar(&o.addresses, "address", nil, "the pod's IPs (default: read from the namespace)")
	return cmd
}

func (o *enrollOptions) request() (api.EnrollRequest, error) {
	if err := o.validate(); err != nil {
		return api.EnrollRequest{}, err
	}
	req := api.EnrollRequest{NetNS: o.netns, PID: o.pid, Config: api.PodConfig{
		ProxyUID: o.proxyUID, OutboundPort: o.outboundPort, InboundPort: o.inboundPort, DisableRedirect: o.disableRedirect,
		ProbePort: o.probePort,
	}}
	if (o.netns == "") == (o.pid == 0) {
		return req, fmt.Errorf("give exactly one of --netns and --pid")
	}
	if o.pod != "" {
		ns, name, ok := strings.Cut(o.pod, "/")
		if !ok {
			return req, fmt.Errorf("--pod must be namespace/name, not %q", o.pod)
		}
		req.Pod = api.PodRef{Namespace: ns, Name: name}
	}
	var err error
	if req.Config.SkipInboundPorts, err = api.ParsePortRanges(o.skipIn); err != nil {
		return req, fmt.Errorf("--skip-inbound-ports: %w", err)
	}
	if req.Config.SkipOutboundPorts, err = api.ParsePortRanges(o.skipOut); err != nil {
		return req, fmt.Errorf("--skip-outbound-ports: %w", err)
	}
	for _, s := range strings.Split(o.skipSubnets, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return req, fmt.Errorf("--skip-subnets: %w", err)
		}
		req.Config.SkipSubnets = append(req.Config.SkipSubnets, p)
	}
	for _, s := range o.addresses {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return req, fmt.Errorf("--address: %w", err)
		}
		req.Addresses = append(req.Addresses, a)
	}
	return req, nil
}

func (c *clientFlags) print(w io.Writer, ens []api.Enrollment) error {
	if c.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(ens)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "COOKIE\tMODE\tNETNS\tPOD\tADDRESSES\tLISTENER")
	for _, e := range ens {
		pod := "-"
		if e.Pod.Name != "" {
			pod = e.Pod.Namespace + "/" + e.Pod.Name
		}
		addrs := make([]string, len(e.Addresses))
		for i, a := range e.Addresses {
			addrs[i] = a.String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%v\n", e.NetNSCookie, e.Mode, e.NetNS, pod, strings.Join(addrs, ","), e.InboundListener)
	}
	return tw.Flush()
}

func newCmdList() *cobra.Command {
	o := &clientFlags{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the enrolled pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			ens, err := api.NewClient(o.socket).List(cmd.Context())
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), ens)
		},
	}
	o.bind(cmd)
	return cmd
}

func newCmdUnenroll() *cobra.Command {
	o := &clientFlags{}
	var netns string
	cmd := &cobra.Command{
		Use:   "unenroll (COOKIE | --netns PATH)",
		Short: "Stop steering a pod's traffic",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := api.NewClient(o.socket)
			cookie, err := resolveCookie(cmd.Context(), c, args, netns)
			if err != nil {
				return err
			}
			if err := c.Unenroll(cmd.Context(), cookie); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unenrolled %d\n", cookie)
			return nil
		},
	}
	cmd.Flags().StringVar(&o.socket, "socket", api.DefaultSocket, "the agent's admin API socket")
	cmd.Flags().StringVar(&netns, "netns", "", "the path the pod was enrolled by")
	return cmd
}

func resolveCookie(ctx context.Context, c *api.Client, args []string, netns string) (uint64, error) {
	if (len(args) == 1) == (netns != "") {
		return 0, fmt.Errorf("give a netns cookie or --netns, not both or neither")
	}
	if len(args) == 1 {
		v, err := strconv.ParseUint(args[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("netns cookie %q is not a number", args[0])
		}
		return v, nil
	}
	ens, err := c.List(ctx)
	if err != nil {
		return 0, err
	}
	for _, e := range ens {
		if e.NetNS == netns {
			return e.NetNSCookie, nil
		}
	}
	return 0, fmt.Errorf("no enrollment with netns %s", netns)
}

func newCmdStatus() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the agent's programs, pins, maps and kernel features as JSON",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := api.NewClient(socket).Status(cmd.Context())
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", api.DefaultSocket, "the agent's admin API socket")
	return cmd
}

// removeIPTables removes the rules of every iptables-mode enrollment in the
// state file and returns how many pods it cleaned.
func removeIPTables(ctx context.Context, stateFile string) (int, error) {
	data, err := os.ReadFile(stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", stateFile, err)
	}
	var ens []api.Enrollment
	if err := json.Unmarshal(data, &ens); err != nil {
		return 0, fmt.Errorf("parse %s: %w", stateFile, err)
	}
	var rules iptables.Rules
	var errs []error
	n := 0
	for _, e := range ens {
		if e.Mode != api.ModeIPTables {
			continue
		}
		if err := rules.Remove(ctx, e.NetNS); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
