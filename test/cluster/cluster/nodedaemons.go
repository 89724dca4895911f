package cluster

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/cni"
	"github.com/sluice-mesh/sluice/test/cluster/pki"
)

var (
	//go:embed kubelet.yaml.tmpl
	kubeletTemplateText string
	//go:embed kube-proxy.yaml.tmpl
	kubeProxyTemplateText string
)

// nodeFiles are a node's runtime, kubelet and kube-proxy paths.
type nodeFiles struct {
	socket, stateDir, cniConfDir, cniCacheDir, cniDataDir   string
	kubeletRoot, kubeletConfig, kubeProxyConfig, resolvConf string
	podLogs                                                 string
}

func (l layout) node(n node) nodeFiles {
	base := func(elem ...string) string {
		if n.index == 0 {
			return l.path(elem...)
		}
		return l.path(append([]string{"nodes", n.name}, elem...)...)
	}
	return nodeFiles{
		socket:          base("run", "procri.sock"),
		stateDir:        base("procri"),
		cniConfDir:      base("cni", "net.d"),
		cniCacheDir:     base("cni", "cache"),
		cniDataDir:      base("cni", "ipam"),
		kubeletRoot:     base("kubelet"),
		kubeletConfig:   base("config", "kubelet.yaml"),
		kubeProxyConfig: base("config", "kube-proxy.yaml"),
		resolvConf:      base("config", "resolv.conf"),
		podLogs:         base("pod-logs"),
	}
}

// writeNodeConfig writes the node's CNI conflist, resolv.conf, kubelet and
// kube-proxy configuration.
func writeNodeConfig(l layout, n node, c certs) error {
	f := l.node(n)
	conf, err := cni.BridgeConfList(cni.BridgeOptions{Name: CNINetwork, Bridge: n.bridge, Subnets: n.podSubnets, DataDir: f.cniDataDir})
	if err != nil {
		return fmt.Errorf("render CNI configuration: %w", err)
	}
	if err := pki.WriteFile(filepath.Join(f.cniConfDir, "10-"+CNINetwork+".conflist"), conf, 0o644); err != nil {
		return err
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return fmt.Errorf("read the machine's resolv.conf: %w", err)
	}
	if err := pki.WriteFile(f.resolvConf, withoutLoopbackServers(resolv), 0o644); err != nil {
		return err
	}
	kubelet, err := kubeletConfig(l, n, c)
	if err != nil {
		return err
	}
	if err := pki.WriteFile(f.kubeletConfig, kubelet, 0o644); err != nil {
		return err
	}
	proxy, err := kubeProxyConfig(l, n)
	if err != nil {
		return err
	}
	return pki.WriteFile(f.kubeProxyConfig, proxy, 0o644)
}

// kubeletConfig renders node n's KubeletConfiguration.
func kubeletConfig(l layout, n node, c certs) ([]byte, error) {
	f := l.node(n)
	return render(kubeletTemplateText, map[string]any{
		"Node":            n.name,
		"Socket":          f.socket,
		"PodLogsDir":      f.podLogs,
		"VolumePluginDir": filepath.Join(f.kubeletRoot, "volume-plugins"),
		"NodeIP":          n.ipv4,
		"TLSCert":         c.kubeletServing[n.name].Cert,
		"TLSKey":          c.kubeletServing[n.name].Key,
		"ClientCA":        c.ca.Cert,
		"ClusterDNS":      DNSServiceIP,
		"ClusterDomain":   ClusterDomain,
		"ResolvConf":      f.resolvConf,
	})
}

// kubeProxyConfig renders node n's KubeProxyConfiguration.
func kubeProxyConfig(l layout, n node) ([]byte, error) {
	cidrs := make([]string, len(PodCIDRs))
	for i, p := range PodCIDRs {
		cidrs[i] = p.String()
	}
	return render(kubeProxyTemplateText, map[string]any{
		"Node":        n.name,
		"Kubeconfig":  l.kubeconfig("kube-proxy"),
		"ClusterCIDR": strings.Join(cidrs, ","),
		"NodeIP":      n.ipv4,
	})
}

func render(text string, data any) ([]byte, error) {
	t, err := template.New("").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("render template: %w", err)
	}
	return buf.Bytes(), nil
}

// withoutLoopbackServers drops "nameserver" lines with a loopback address
// (systemd-resolved's 127.0.0.53, a local dnsmasq): inside a pod's network
// namespace they point at the pod itself.
func withoutLoopbackServers(resolv []byte) []byte {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(resolv))
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.IsLoopback() {
				continue
			}
		}
		out.WriteString(line + "\n")
	}
	return out.Bytes()
}

// procriDaemon is the node's container runtime.
func procriDaemon(l layout, n node, path, cniBinDir string) *daemon {
	f := l.node(n)
	return &daemon{
		name: "procri" + n.suffix(),
		path: path,
		args: []string{
			"--socket=" + f.socket,
			"--state-dir=" + f.stateDir,
			"--images=" + l.images(),
			"--cni-conf-dir=" + f.cniConfDir,
			"--cni-bin-dir=" + cniBinDir,
			"--cni-cache-dir=" + f.cniCacheDir,
		},
		files: []string{filepath.Join(f.cniConfDir, "10-"+CNINetwork+".conflist")},
		ready: func(ctx context.Context) error {
			_, err := criVersion(ctx, f.socket)
			return err
		},
		timeout: 30 * time.Second,
	}
}

// criVersion asks a CRI runtime for its version.
func criVersion(ctx context.Context, socket string) (*runtimeapi.VersionResponse, error) {
	if _, err := os.Stat(socket); err != nil {
		return nil, fmt.Errorf("no CRI socket: %w", err)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	defer conn.Close()
	v, err := runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI Version on %s: %w", socket, err)
	}
	return v, nil
}

// kubeletDaemon is the node's kubelet.
func kubeletDaemon(l layout, n node, path string) *daemon {
	f := l.node(n)
	return &daemon{
		name: "kubelet" + n.suffix(),
		path: path,
		args: []string{
			"--config=" + f.kubeletConfig,
			"--kubeconfig=" + l.kubeconfig("kubelet-"+n.name),
			"--hostname-override=" + n.name,
			// Both families: the node's InternalIPs, which kube-proxy's
			// nodePortAddresses "primary" and the pods' hostIPs follow.
			"--node-ip=" + n.ipv4.String() + "," + n.ipv6.String(),
			"--root-dir=" + f.kubeletRoot,
			"--cert-dir=" + filepath.Join(f.kubeletRoot, "pki"),
		},
		files: []string{f.kubeletConfig},
		ready: func(ctx context.Context) error {
			_, err := httpGet(ctx, http.DefaultClient, "http://"+net.JoinHostPort(n.ipv4.String(), "10248")+"/healthz")
			return err
		},
		timeout: 60 * time.Second,
	}
}

// kubeProxyDaemon is the node's kube-proxy.
func kubeProxyDaemon(l layout, n node, path string) *daemon {
	f := l.node(n)
	return &daemon{
		name:  "kube-proxy" + n.suffix(),
		path:  path,
		args:  []string{"--config=" + f.kubeProxyConfig},
		files: []string{f.kubeProxyConfig},
		ready: func(ctx context.Context) error {
			_, err := httpGet(ctx, http.DefaultClient, "http://"+net.JoinHostPort(n.ipv4.String(), "10256")+"/livez")
			return err
		},
		timeout: 60 * time.Second,
	}
}
