package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/pki"
)

// EchoImage is the image reference of the echo test program (cmd/echo).
const EchoImage = "sluice.test/echo:*"

// PrometheusImage is the image reference of Prometheus, mapped to the
// build cache's Prometheus (built from its module: Debian's lacks
// Kubernetes service discovery).
const PrometheusImage = "docker.io/prom/prometheus:*"

// DefaultImages is the image table Up starts with: CoreDNS, Prometheus
// and the echo program from the build cache, and Debian programs of this
// machine (an entry whose program is not installed is left out).
func DefaultImages(b build.Binaries) []ImageMapping {
	var out []ImageMapping
	if b.CoreDNS != "" {
		out = append(out, ImageMapping{Image: "registry.k8s.io/coredns/coredns:*", Program: b.CoreDNS})
	}
	if b.Prometheus != "" {
		out = append(out, ImageMapping{Image: PrometheusImage, Program: b.Prometheus})
	}
	if echo := b.Own["echo"]; echo != "" {
		out = append(out, ImageMapping{Image: EchoImage, Program: echo})
	}
	debian := []ImageMapping{
		{Image: "docker.io/library/nginx:*", Program: "/usr/sbin/nginx", Args: []string{"-g", "daemon off;"}},
		{Image: "docker.io/library/busybox:*", Program: "/bin/busybox", Args: []string{"sh"}},
		{Image: "docker.io/curlimages/curl:*", Program: "/usr/bin/curl"},
	}
	for _, m := range debian {
		if _, err := os.Stat(m.Program); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// writeImages writes the image table: entries replace earlier ones with
// the same image.
func writeImages(path string, entries []ImageMapping) error {
	var table []ImageMapping
	for _, e := range entries {
		if e.Image == "" || !filepath.IsAbs(e.Program) {
			return fmt.Errorf("image mapping %q -> %q: want an image and an absolute program path", e.Image, e.Program)
		}
		if i := slices.IndexFunc(table, func(t ImageMapping) bool { return t.Image == e.Image }); i >= 0 {
			table[i] = e
			continue
		}
		table = append(table, e)
	}
	data, err := yaml.Marshal(table)
	if err != nil {
		return fmt.Errorf("encode image table: %w", err)
	}
	header := []byte("# procri's image table, written by `cluster up` (package cluster); see Cluster.MapImage.\n")
	return pki.WriteFile(path, append(header, data...), 0o644)
}

// readImages reads the image table.
func readImages(path string) ([]ImageMapping, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read image table: %w", err)
	}
	var table []ImageMapping
	if err := yaml.Unmarshal(data, &table); err != nil {
		return nil, fmt.Errorf("parse image table %s: %w", path, err)
	}
	return table, nil
}
