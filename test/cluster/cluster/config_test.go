package cluster

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	kubeletscheme "k8s.io/kubernetes/pkg/kubelet/apis/config/scheme"
	kubeletvalidation "k8s.io/kubernetes/pkg/kubelet/apis/config/validation"
	"k8s.io/kubernetes/pkg/kubelet/kubeletconfig/configfiles"
	proxyconfig "k8s.io/kubernetes/pkg/proxy/apis/config"
	proxyscheme "k8s.io/kubernetes/pkg/proxy/apis/config/scheme"
	proxyvalidation "k8s.io/kubernetes/pkg/proxy/apis/config/validation"
	utilfs "k8s.io/kubernetes/pkg/util/filesystem"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/pki"
)

func testCerts(l layout, n node) certs {
	pair := func(name string) pki.Pair {
		return pki.Pair{Cert: filepath.Join(l.pki(), name+".crt"), Key: filepath.Join(l.pki(), name+".key")}
	}
	return certs{
		ca:             pair("ca"),
		kubeletServing: map[string]pki.Pair{n.name: pair("kubelet-serving")},
	}
}

// TestKubeletConfigLoads loads the rendered KubeletConfiguration with the
// kubelet's own loader (strict: an unknown or misspelt field fails) and
// validates it as the kubelet does at start.
func TestKubeletConfigLoads(t *testing.T) {
	l := layout{dir: t.TempDir()}
	n := newNode(0)
	data, err := kubeletConfig(l, n, testCerts(l, n))
	if err != nil {
		t.Fatal(err)
	}
	// The kubelet itself falls back to lenient decoding with a warning:
	// decode strictly first, so that a misspelt setting fails here.
	_, codecs, err := kubeletscheme.NewSchemeAndCodecs(serializer.EnableStrict)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runtime.Decode(codecs.UniversalDecoder(), data); err != nil {
		t.Fatalf("strict decoding: %v\n%s", err, data)
	}
	path := filepath.Join(l.dir, "kubelet.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	loader, err := configfiles.NewFsLoader(&utilfs.DefaultFs{}, path)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := loader.Load(context.Background())
	if err != nil {
		t.Fatalf("the kubelet does not load its configuration: %v\n%s", err, data)
	}
	if err := kubeletvalidation.ValidateKubeletConfiguration(kc, utilfeature.DefaultFeatureGate); err != nil {
		t.Fatalf("the kubelet rejects its configuration: %v", err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"cgroupDriver", kc.CgroupDriver, "cgroupfs"},
		{"failCgroupV1", kc.FailCgroupV1, false},
		{"containerRuntimeEndpoint", kc.ContainerRuntimeEndpoint, "unix://" + l.node(n).socket},
		{"clusterDNS", kc.ClusterDNS, []string{"10.96.0.10"}},
		{"clusterDomain", kc.ClusterDomain, "cluster.local"},
		{"authentication.anonymous", kc.Authentication.Anonymous.Enabled, false},
		{"authentication.webhook", kc.Authentication.Webhook.Enabled, true},
		{"authorization.mode", string(kc.Authorization.Mode), "Webhook"},
		{"readOnlyPort", kc.ReadOnlyPort, int32(0)},
		{"failSwapOn", kc.FailSwapOn, false},
		{"address", kc.Address, "10.99.0.1"},
		{"evictionHard nodefs.available", kc.EvictionHard["nodefs.available"], "1%"},
		{"podLogsDir under the state root", strings.HasPrefix(kc.PodLogsDir, l.dir+"/"), true},
	}
	for _, c := range checks {
		if !equal(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	// Every setting is explained: each blank-line-separated block of
	// settings opens with a comment.
	for _, block := range strings.Split(string(data), "\n\n") {
		block = strings.TrimSpace(block)
		if strings.HasPrefix(block, "apiVersion:") || block == "" {
			continue
		}
		if !strings.HasPrefix(block, "#") {
			t.Errorf("settings without a comment:\n%s", block)
		}
	}
}

func equal(a, b any) bool {
	if as, ok := a.([]string); ok {
		bs, ok := b.([]string)
		return ok && slices.Equal(as, bs)
	}
	return a == b
}

// TestKubeProxyConfigLoads decodes the rendered KubeProxyConfiguration
// strictly with kube-proxy's scheme and validates it.
func TestKubeProxyConfigLoads(t *testing.T) {
	l := layout{dir: t.TempDir()}
	data, err := kubeProxyConfig(l, newNode(0))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := runtime.Decode(proxyscheme.Codecs.UniversalDecoder(), data)
	if err != nil {
		t.Fatalf("kube-proxy does not load its configuration: %v\n%s", err, data)
	}
	kc, ok := obj.(*proxyconfig.KubeProxyConfiguration)
	if !ok {
		t.Fatalf("decoded a %T", obj)
	}
	if errs := proxyvalidation.Validate(kc); len(errs) > 0 {
		t.Fatalf("kube-proxy rejects its configuration: %v", errs.ToAggregate())
	}
	if kc.Mode != proxyconfig.ProxyModeIPTables || kc.HostnameOverride != "sluice-node0" || *kc.Linux.Conntrack.MaxPerCore != 0 {
		t.Errorf("mode %q, hostnameOverride %q, conntrack.maxPerCore %d; want iptables, sluice-node0, 0", kc.Mode, kc.HostnameOverride, *kc.Linux.Conntrack.MaxPerCore)
	}
	if !slices.Equal(kc.DetectLocal.ClusterCIDRs, []string{"10.244.0.0/16", "fd00:10:244::/48"}) {
		t.Errorf("clusterCIDRs %v", kc.DetectLocal.ClusterCIDRs)
	}
}

func TestWithoutLoopbackServers(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nameserver 10.255.255.53\n", "nameserver 10.255.255.53\n"},
		{"search example.org\nnameserver 127.0.0.53\noptions edns0\n", "search example.org\noptions edns0\n"},
		{"nameserver ::1\nnameserver 192.0.2.1\n", "nameserver 192.0.2.1\n"},
	}
	for _, tt := range tests {
		if got := string(withoutLoopbackServers([]byte(tt.in))); got != tt.want {
			t.Errorf("withoutLoopbackServers(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestImageTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "images.yaml")
	bins := build.Binaries{CoreDNS: "/cache/coredns", Own: map[string]string{"echo": "/cache/own/echo"}}
	if err := writeImages(path, DefaultImages(bins)); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{l: layout{dir: filepath.Dir(path)}}
	// MapImage replaces an entry of the same image and appends a new one.
	if err := c.MapImage(ImageMapping{Image: EchoImage, Program: "/other/echo", Args: []string{"serve"}}); err != nil {
		t.Fatal(err)
	}
	if err := c.MapImage(ImageMapping{Image: "example.test/app:v1", Program: "/bin/true"}); err != nil {
		t.Fatal(err)
	}
	table, err := readImages(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range table {
		if _, dup := got[e.Image]; dup {
			t.Errorf("image %s twice in the table", e.Image)
		}
		got[e.Image] = e.Program
	}
	want := map[string]string{
		"registry.k8s.io/coredns/coredns:*": "/cache/coredns",
		EchoImage:                           "/other/echo",
		"example.test/app:v1":               "/bin/true",
		"docker.io/library/nginx:*":         "/usr/sbin/nginx", // installed on this machine (deps)
	}
	for image, program := range want {
		if got[image] != program {
			t.Errorf("table maps %s to %q, want %q (table %v)", image, got[image], program, got)
		}
	}
	if err := c.MapImage(ImageMapping{Image: "x", Program: "relative"}); err == nil {
		t.Error("a relative program path was accepted")
	}
}
