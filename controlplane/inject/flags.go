package inject

import (
	"fmt"
	"os"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ValueFlags are command-line flags for Values, shared by the injector's
// command and meshctl inject so that both spell them the same. Apply lays
// the flags the user set over Values read from elsewhere (a file, the
// cluster, DefaultValues); flags left alone change nothing.
type ValueFlags struct {
	fs    *pflag.FlagSet
	v     Values
	extra struct {
		trustAnchorsFile                           string
		cpuRequest, memRequest, cpuLimit, memLimit string
		pullPolicy                                 string
	}
	// apply holds, per flag name, what it sets.
	apply map[string]func(*Values) error
}

// BindValueFlags adds the Values flags to fs, with DefaultValues' values
// as their shown defaults.
func BindValueFlags(fs *pflag.FlagSet) *ValueFlags {
	f := &ValueFlags{fs: fs, v: DefaultValues(), apply: map[string]func(*Values) error{}}
	d := &f.v
	str := func(name string, p *string, field func(*Values) *string, usage string) {
		fs.StringVar(p, name, *p, usage)
		f.apply[name] = func(v *Values) error { *field(v) = *p; return nil }
	}
	str("control-plane-namespace", &d.ControlPlaneNamespace, func(v *Values) *string { return &v.ControlPlaneNamespace },
		"namespace of the control plane the proxies talk to")
	str("cluster-domain", &d.ClusterDomain, func(v *Values) *string { return &v.ClusterDomain }, "the cluster's DNS domain")
	str("mode", &d.InterceptionMode, func(v *Values) *string { return &v.InterceptionMode },
		"interception mode: ebpf (the node agent steers; no init container, no capability) or iptables (a sluice-init container with NET_ADMIN and NET_RAW installs REDIRECT rules); the annotation config.sluice.io/interception-mode overrides it per workload")
	str("destination-addr", &d.DestinationAddr, func(v *Values) *string { return &v.DestinationAddr },
		"destination service host:port (default sluice-dst.<control-plane-namespace>.svc.<cluster-domain>:8086)")
	str("proxy-image", &d.Proxy.Image, func(v *Values) *string { return &v.Proxy.Image }, "the proxy's image, without its tag")
	str("proxy-version", &d.Proxy.Version, func(v *Values) *string { return &v.Proxy.Version },
		"the proxy's image tag, also written to the annotation sluice.io/proxy-version")
	str("proxy-log-level", &d.Proxy.LogLevel, func(v *Values) *string { return &v.Proxy.LogLevel },
		"the proxy's log level: debug, info, warn or error (annotation config.sluice.io/proxy-log-level overrides it)")
	str("opaque-ports", &d.Proxy.OpaquePorts, func(v *Values) *string { return &v.Proxy.OpaquePorts },
		"default ports and ranges carried as opaque TCP, e.g. 25,3306 (annotation config.sluice.io/opaque-ports overrides it)")
	str("skip-inbound-ports", &d.Proxy.SkipInboundPorts, func(v *Values) *string { return &v.Proxy.SkipInboundPorts },
		"default inbound ports that bypass the proxy (annotation config.sluice.io/skip-inbound-ports overrides it)")
	str("skip-outbound-ports", &d.Proxy.SkipOutboundPorts, func(v *Values) *string { return &v.Proxy.SkipOutboundPorts },
		"default outbound ports that bypass the proxy (annotation config.sluice.io/skip-outbound-ports overrides it)")
	str("skip-subnets", &d.Proxy.SkipSubnets, func(v *Values) *string { return &v.Proxy.SkipSubnets },
		"default destination CIDRs that bypass the proxy (annotation config.sluice.io/skip-subnets overrides it)")
	str("init-image", &d.Init.Image, func(v *Values) *string { return &v.Init.Image },
		"the image of the iptables-mode sluice-init container (the agent's image), without its tag")
	str("init-version", &d.Init.Version, func(v *Values) *string { return &v.Init.Version }, "the sluice-init image's tag")
	str("trust-domain", &d.Identity.TrustDomain, func(v *Values) *string { return &v.Identity.TrustDomain },
		"trust domain of the proxies' identities")
	str("identity-addr", &d.Identity.Addr, func(v *Values) *string { return &v.Identity.Addr },
		"identity service host:port (default sluice-identity.<control-plane-namespace>.svc.<cluster-domain>:8080)")

	fs.Int64Var(&d.Proxy.UID, "proxy-uid", d.Proxy.UID, "user id the proxy runs as; its own connections are never steered")
	f.apply["proxy-uid"] = func(v *Values) error { v.Proxy.UID = d.Proxy.UID; return nil }

	f.extra.pullPolicy = string(d.Proxy.ImagePullPolicy)
	fs.StringVar(&f.extra.pullPolicy, "image-pull-policy", f.extra.pullPolicy, "image pull policy of the proxy and init containers: Always, IfNotPresent or Never")
	f.apply["image-pull-policy"] = func(v *Values) error {
		v.Proxy.ImagePullPolicy = corev1.PullPolicy(f.extra.pullPolicy)
		return nil
	}

	fs.StringVar(&f.extra.trustAnchorsFile, "trust-anchors", "", "PEM file of the trust anchors (root certificates) the proxies trust, replacing the installation's; empty: none, which disables identity")
	f.apply["trust-anchors"] = func(v *Values) error {
		if f.extra.trustAnchorsFile == "" {
			v.Identity.TrustAnchorsPEM = ""
			return nil
		}
		b, err := os.ReadFile(f.extra.trustAnchorsFile)
		if err != nil {
			return fmt.Errorf("--trust-anchors: %w", err)
		}
		v.Identity.TrustAnchorsPEM = string(b)
		return nil
	}

	quantity := func(name string, p *string, res corev1.ResourceName, limit bool, usage string) {
		list := d.Proxy.Resources.Requests
		if limit {
			list = d.Proxy.Resources.Limits
		}
		if q, ok := list[res]; ok {
			*p = q.String()
		}
		fs.StringVar(p, name, *p, usage+"; empty: none")
		f.apply[name] = func(v *Values) error {
			rl := &v.Proxy.Resources.Requests
			if limit {
				rl = &v.Proxy.Resources.Limits
			}
			if *p == "" {
				delete(*rl, res)
				return nil
			}
			q, err := resource.ParseQuantity(*p)
			if err != nil {
				return fmt.Errorf("--%s: %q: %w", name, *p, err)
			}
			if *rl == nil {
				*rl = corev1.ResourceList{}
			}
			(*rl)[res] = q
			return nil
		}
	}
	quantity("proxy-cpu-request", &f.extra.cpuRequest, corev1.ResourceCPU, false, "the proxy's CPU request")
	quantity("proxy-memory-request", &f.extra.memRequest, corev1.ResourceMemory, false, "the proxy's memory request")
	quantity("proxy-cpu-limit", &f.extra.cpuLimit, corev1.ResourceCPU, true, "the proxy's CPU limit")
	quantity("proxy-memory-limit", &f.extra.memLimit, corev1.ResourceMemory, true, "the proxy's memory limit")
	return f
}

// ControlPlaneNamespace is the --control-plane-namespace flag's value:
// where to look for the installed Values.
func (f *ValueFlags) ControlPlaneNamespace() string { return f.v.ControlPlaneNamespace }

// Apply returns base with the flags the user set laid over it, validated.
func (f *ValueFlags) Apply(base Values) (Values, error) {
	v := base
	v.Proxy.Resources = *base.Proxy.Resources.DeepCopy()
	var err error
	f.fs.Visit(func(fl *pflag.Flag) {
		set, ok := f.apply[fl.Name]
		if !ok || err != nil {
			return
		}
		err = set(&v)
	})
	if err != nil {
		return Values{}, err
	}
	if err := v.Validate(); err != nil {
		return Values{}, err
	}
	return v, nil
}
