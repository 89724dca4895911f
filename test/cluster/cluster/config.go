// Package cluster runs a real Kubernetes on this machine: etcd (Debian's
// etcd-server), kube-apiserver, kube-controller-manager, kube-scheduler, the
// process container runtime procri, the kubelet and kube-proxy, all built
// from their Go modules (package build), each a detached daemon with its log
// and pid file under the state directory, plus the CoreDNS addon.
//
// Up starts what is not already running and healthy and waits until the
// node and CoreDNS are Ready; Down stops everything and sweeps whatever a
// crash could have left (pod processes, mounts, iptables chains, links,
// cgroups, the state directory); Leftovers lists what Down should have
// removed and is still there.
//
// The admin kubeconfig is <Dir>/kubeconfig (Cluster.Kubeconfig).
package cluster

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/cri"
)

// Config configures Up, Down and Leftovers.
type Config struct {
	// Dir is the state root: certificates, kubeconfigs, etcd's data, the
	// daemons' logs and pid files, the kubelet's root and the runtime's
	// state. DefaultDir when empty.
	Dir string
	// Cache builds and finds the programs.
	Cache build.Cache
	// Images are entries of the runtime's image table on top of the
	// defaults (DefaultImages); entries added with MapImage while the
	// cluster ran stay unless these map the same image.
	Images []ImageMapping
	// Out receives progress lines, such as "etcd ready (0.4s)"; os.Stderr
	// when nil.
	Out io.Writer
	// Log receives details; nothing is logged when nil.
	Log *slog.Logger
}

// ImageMapping maps an image reference to a program of this machine: an
// entry of procri's image table (package cri), with Image, Program, Args,
// Env, WorkingDir and User. Image may end in ":*" to match every tag.
type ImageMapping = cri.ImageEntry

// DefaultDir is the state root: $SLUICE_CLUSTER_DIR, or
// /var/lib/sluice-cluster.
func DefaultDir() string {
	if d := os.Getenv("SLUICE_CLUSTER_DIR"); d != "" {
		return d
	}
	return "/var/lib/sluice-cluster"
}

// Cluster-wide settings.
const (
	// ClusterName names the cluster in kubeconfigs.
	ClusterName = "sluice"
	// APIServerPort is the API server's secure port (on every address).
	APIServerPort = 6443
	// etcd listens on loopback only, away from etcd's default ports so that
	// an etcd of the machine does not clash.
	etcdClientPort = 12379
	etcdPeerPort   = 12380
	// ClusterDomain is the DNS domain of Services.
	ClusterDomain = "cluster.local"
	// CNINetwork is the CNI network name (in the conflist, the plugins'
	// iptables comments and the IPAM store).
	CNINetwork = "sluice-cluster"
	// fieldManager owns what Up applies.
	fieldManager = "sluice-cluster"
)

// Cluster-wide address ranges.
var (
	// ServiceCIDR is the ClusterIP range; its first address is the
	// kubernetes Service.
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	// KubernetesServiceIP is the kubernetes Service's ClusterIP.
	KubernetesServiceIP = netip.MustParseAddr("10.96.0.1")
	// DNSServiceIP is the kube-dns Service's ClusterIP.
	DNSServiceIP = netip.MustParseAddr("10.96.0.10")
	// PodCIDRs hold every node's pod subnets.
	PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")}
)

// layout is where everything lives under the state root.
type layout struct{ dir string }

func (l layout) path(elem ...string) string {
	return filepath.Join(append([]string{l.dir}, elem...)...)
}
func (l layout) pki() string             { return l.path("pki") }
func (l layout) adminKubeconfig() string { return l.path("kubeconfig") }
func (l layout) kubeconfig(user string) string {
	return l.path("kubeconfigs", user+".kubeconfig")
}
func (l layout) logs() string               { return l.path("logs") }
func (l layout) logFile(name string) string { return l.path("logs", name+".log") }
func (l layout) run() string                { return l.path("run") }
func (l layout) images() string             { return l.path("images.yaml") }
