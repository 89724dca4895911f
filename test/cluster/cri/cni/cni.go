// Package cni sets up and tears down pod networks with the CNI plugins
// through libcni, as the kubelet's container runtimes do, and renders the
// cluster's bridge network configuration.
//
// The network is the first *.conflist (in lexical order) in a configuration
// directory, read again on every call so that a configuration written after
// the runtime started is picked up. A pod is attached as interface eth0 of
// its network namespace, with the sandbox id as CNI container id and the
// kubelet's CNI_ARGS; host ports are passed as the portMappings capability.
// Teardown works from libcni's cache of what Setup ran, so it undoes the
// same plugins with the same arguments even when the configuration changed
// or the pod's network namespace is gone.
package cni

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
)

// IfName is the pod's interface.
const IfName = "eth0"

// cleanupTimeout bounds the DEL that undoes a failed ADD.
const cleanupTimeout = time.Minute

// Network runs the CNI plugins of the first conflist in a directory.
type Network struct {
	log     *slog.Logger
	confDir string
	binDirs []string
	cache   string
	cni     *libcni.CNIConfig
}

// New returns the network configured in confDir, with plugins looked up in
// binDirs and libcni's cache in cacheDir. A missing or invalid
// configuration is not an error here: Ready says what is wrong until it is
// fixed. log may be nil.
func New(confDir string, binDirs []string, cacheDir string, log *slog.Logger) (*Network, error) {
	if confDir == "" || len(binDirs) == 0 || cacheDir == "" {
		return nil, fmt.Errorf("create cni network: want a config dir (%q), plugin dirs (%q) and a cache dir (%q)", confDir, binDirs, cacheDir)
	}
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("create cni cache dir: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Network{
		log:     log.With("component", "cni"),
		confDir: confDir,
		binDirs: slices.Clone(binDirs),
		cache:   cacheDir,
		cni:     libcni.NewCNIConfigWithCacheDir(binDirs, cacheDir, nil),
	}, nil
}

// load reads the network configuration: the first *.conflist in confDir,
// whose plugins must all be in binDirs.
func (n *Network) load() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(n.confDir, []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("read cni config dir %s: %w", n.confDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("find cni config: no *.conflist in %s", n.confDir)
	}
	slices.Sort(files)
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("load cni config %s: %w", files[0], err)
	}
	if len(list.Plugins) == 0 {
		return nil, fmt.Errorf("load cni config %s: no plugins", files[0])
	}
	for _, p := range list.Plugins {
		if _, err := invoke.FindInPath(p.Network.Type, n.binDirs); err != nil {
			return nil, fmt.Errorf("load cni config %s: find plugin %q: %w", files[0], p.Network.Type, err)
		}
	}
	return list, nil
}

// Ready is nil when a valid conflist is loaded and its plugins are
// installed, else an error saying why not.
func (n *Network) Ready() error {
	_, err := n.load()
	return err
}

// PodMeta identifies a pod sandbox to the plugins.
type PodMeta struct {
	// Namespace, Name and UID are the pod's.
	Namespace, Name, UID string
	// SandboxID is the CNI container id.
	SandboxID string
}

// PortMapping is a host port forwarded to the pod (the portmap plugin).
type PortMapping struct {
	// HostPort is the port on the node; mappings without one are skipped.
	HostPort int32
	// ContainerPort is the port in the pod.
	ContainerPort int32
	// Protocol is "tcp" (when empty), "udp" or "sctp", in any case.
	Protocol string
	// HostIP limits the mapping to one node address ("": all).
	HostIP string
}

// Result is the outcome of Setup.
type Result struct {
	// IPs are the pod's addresses, IPv4 first when present.
	IPs []netip.Addr
}

// runtimeConf is the invocation of the plugins for pod m.
func runtimeConf(netnsPath string, m PodMeta, ports []PortMapping) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: m.SandboxID,
		NetNS:       netnsPath,
		IfName:      IfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", m.Namespace},
			{"K8S_POD_NAME", m.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", m.SandboxID},
			{"K8S_POD_UID", m.UID},
		},
	}
	// The portmap plugin's runtimeConfig.portMappings entries.
	type portMapping struct {
		HostPort      int32  `json:"hostPort"`
		ContainerPort int32  `json:"containerPort"`
		Protocol      string `json:"protocol"`
		HostIP        string `json:"hostIP,omitempty"`
	}
	var pms []portMapping
	for _, p := range ports {
		if p.HostPort <= 0 {
			continue
		}
		pms = append(pms, portMapping{
			HostPort:      p.HostPort,
			ContainerPort: p.ContainerPort,
			Protocol:      strings.ToLower(cmp.Or(p.Protocol, "tcp")),
			HostIP:        p.HostIP,
		})
	}
	if len(pms) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": pms}
	}
	return rt
}

// Setup attaches the pod's network namespace (a path such as
// /proc/<pid>/ns/net or a bind mount of it) to the network and returns its
// addresses. When a plugin fails, what the others did is undone.
func (n *Network) Setup(ctx context.Context, netnsPath string, m PodMeta, ports []PortMapping) (Result, error) {
	if m.SandboxID == "" || netnsPath == "" {
		return Result{}, fmt.Errorf("set up pod network of %s/%s: want a sandbox id and a netns path", m.Namespace, m.Name)
	}
	list, err := n.load()
	if err != nil {
		return Result{}, fmt.Errorf("set up pod network of %s/%s: %w", m.Namespace, m.Name, err)
	}
	rt := runtimeConf(netnsPath, m, ports)
	res, err := n.cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := n.cni.DelNetworkList(dctx, list, rt); derr != nil {
			n.log.Warn("undo failed pod network setup", "pod", m.Namespace+"/"+m.Name, "sandbox", m.SandboxID, "err", derr)
		}
		return Result{}, fmt.Errorf("set up pod network of %s/%s: %w", m.Namespace, m.Name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return Result{}, fmt.Errorf("set up pod network of %s/%s: convert result: %w", m.Namespace, m.Name, err)
	}
	var ips []netip.Addr
	for _, p := range podPrefixes(r) {
		ips = append(ips, p.Addr())
	}
	slices.SortStableFunc(ips, func(a, b netip.Addr) int {
		return cmp.Compare(a.BitLen(), b.BitLen()) // IPv4 (32 bits) first
	})
	n.log.Debug("pod network set up", "pod", m.Namespace+"/"+m.Name, "sandbox", m.SandboxID, "ips", ips)
	return Result{IPs: ips}, nil
}

// podPrefixes are the addresses (with their prefix lengths) a result gives
// the pod's interface, leaving out those of host-side interfaces.
func podPrefixes(r *types100.Result) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range r.IPs {
		if ipc.Interface != nil {
			i := *ipc.Interface
			if i >= 0 && i < len(r.Interfaces) && r.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		ones, _ := ipc.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones))
	}
	return out
}

// Teardown detaches the pod from the network: the plugins release its
// addresses, port mappings and masquerading rules. It undoes what Setup ran
// (from libcni's cache), falling back to the current configuration with
// ports when there is no cache entry. netnsPath may be "" or no longer
// exist (the namespace is gone): the plugins are then shown a stand-in
// namespace holding the pod's addresses, so that they still find what to
// clean up. Tearing down a pod that is not set up is fine.
func (n *Network) Teardown(ctx context.Context, netnsPath string, m PodMeta, ports []PortMapping) error {
	if m.SandboxID == "" {
		return fmt.Errorf("tear down pod network of %s/%s: want a sandbox id", m.Namespace, m.Name)
	}
	if netnsPath != "" {
		if _, err := os.Stat(netnsPath); errors.Is(err, os.ErrNotExist) {
			netnsPath = ""
		}
	}
	type attachment struct {
		list *libcni.NetworkConfigList
		rt   *libcni.RuntimeConf
	}
	var atts []attachment
	cached, err := n.cni.GetCachedAttachments(m.SandboxID)
	if err != nil {
		n.log.Warn("read cni cache", "sandbox", m.SandboxID, "err", err)
	}
	for _, a := range cached {
		if a.IfName != IfName {
			continue
		}
		list, err := libcni.NetworkConfFromBytes(a.Config)
		if err != nil {
			return fmt.Errorf("tear down pod network of %s/%s: parse cached config: %w", m.Namespace, m.Name, err)
		}
		atts = append(atts, attachment{list, &libcni.RuntimeConf{
			ContainerID:    a.ContainerID,
			NetNS:          netnsPath,
			IfName:         a.IfName,
			Args:           a.CniArgs,
			CapabilityArgs: a.CapabilityArgs,
		}})
	}
	if len(atts) == 0 {
		list, err := n.load()
		if err != nil {
			n.log.Warn("tear down pod network without a cache entry or a config", "pod", m.Namespace+"/"+m.Name, "sandbox", m.SandboxID, "err", err)
			return nil
		}
		atts = append(atts, attachment{list, runtimeConf(netnsPath, m, ports)})
	}
	for _, a := range atts {
		if err := n.del(ctx, a.list, a.rt); err != nil {
			return fmt.Errorf("tear down pod network of %s/%s: %w", m.Namespace, m.Name, err)
		}
	}
	n.log.Debug("pod network torn down", "pod", m.Namespace+"/"+m.Name, "sandbox", m.SandboxID)
	return nil
}

// del runs DEL, in a stand-in namespace with the cached addresses when the
// pod's namespace is gone.
func (n *Network) del(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	if rt.NetNS == "" {
		if res, err := n.cni.GetNetworkListCachedResult(list, rt); err == nil && res != nil {
			r, err := types100.NewResultFromResult(res)
			if err != nil {
				return fmt.Errorf("convert cached result: %w", err)
			}
			if addrs := podPrefixes(r); len(addrs) > 0 {
				path, cleanup, err := standIn(n.cache, rt.IfName, addrs)
				if err != nil {
					n.log.Warn("make stand-in netns for DEL: masquerading rules may stay", "sandbox", rt.ContainerID, "err", err)
				} else {
					defer cleanup()
					rt.NetNS = path
				}
			}
		}
	}
	return n.cni.DelNetworkList(ctx, list, rt)
}
