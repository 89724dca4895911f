package discovery_test

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/proxy/discovery"
)

func TestNamesPath(t *testing.T) {
	def := discovery.Names{Namespace: "default"}
	corp := discovery.Names{Namespace: "shop", ClusterDomain: "Corp.Example."}
	tests := []struct {
		names discovery.Names
		host  string
		port  uint16
		want  string // "" = not resolvable
	}{
		// Short names complete with the pod's namespace and the domain.
		{def, "web", 8080, "web.default.svc.cluster.local:8080"},
		{def, "WEB.", 8080, "web.default.svc.cluster.local:8080"},
		{def, "web.other", 80, "web.other.svc.cluster.local:80"},
		{def, "api.dev", 80, "api.dev.svc.cluster.local:80"},
		{def, "web.other.svc", 80, "web.other.svc.cluster.local:80"},
		{def, "web-0.web.other.svc", 80, "web-0.web.other.svc.cluster.local:80"},
		{def, "10-0-0-2.other.pod", 80, "10-0-0-2.other.pod.cluster.local:80"},
		// Fully qualified names are kept.
		{def, "web.other.svc.cluster.local", 80, "web.other.svc.cluster.local:80"},
		{def, "Web.Other.SVC.cluster.local.", 80, "web.other.svc.cluster.local:80"},
		{def, "web-0.web.other.svc.cluster.local", 80, "web-0.web.other.svc.cluster.local:80"},
		{def, "10-0-0-2.other.pod.cluster.local", 80, "10-0-0-2.other.pod.cluster.local:80"},
		// A custom cluster domain.
		{corp, "web", 80, "web.shop.svc.corp.example:80"},
		{corp, "web.shop.svc", 80, "web.shop.svc.corp.example:80"},
		{corp, "web.shop.svc.corp.example", 80, "web.shop.svc.corp.example:80"},
		{corp, "web.shop.svc.cluster.local", 80, ""},
		// External names and shapes the cluster DNS does not serve.
		{def, "example.com", 443, ""},
		{def, "pypi.org", 443, ""},
		{def, "docker.io", 443, ""},
		{def, "www.example.com", 443, ""},
		{def, "a.b.c", 80, ""},
		{def, "a.b.c.d.e", 80, ""},
		{def, "web.other.svc.cluster", 80, ""},
		{def, "cluster.local.example", 80, ""},
		{def, "foo.cluster.local", 80, ""},
		{def, "web.svc.cluster.local", 80, ""},
		{def, "a.b.c.d.svc.cluster.local", 80, ""},
		{def, "a.b.c.pod.cluster.local", 80, ""},
		// IP literals.
		{def, "10.0.0.2", 8080, "10.0.0.2:8080"},
		{def, "::1", 80, "[::1]:80"},
		{def, "[2001:DB8::1]", 80, "[2001:db8::1]:80"},
		{def, "::ffff:10.0.0.2", 80, "10.0.0.2:80"},
		{def, "fe80::1%eth0", 80, ""},
		{def, "[10.0.0.2]", 80, ""},
		{def, "[::1", 80, ""},
		// Invalid names and ports.
		{def, "web", 0, ""},
		{def, "", 80, ""},
		{def, ".", 80, ""},
		{def, "web..other", 80, ""},
		{def, "-web", 80, ""},
		{def, "web-", 80, ""},
		{def, "we_b", 80, ""},
		{def, "web other", 80, ""},
		{def, "wéb", 80, ""},
		{def, strings.Repeat("a", 64), 80, ""},
		{def, strings.Repeat("a", 63), 80, strings.Repeat("a", 63) + ".default.svc.cluster.local:80"},
		{def, strings.Repeat("a.", 127) + "a", 80, ""},
		// A short name needs a namespace.
		{discovery.Names{}, "web", 80, ""},
		{discovery.Names{Namespace: "bad.ns"}, "web", 80, ""},
		{discovery.Names{}, "web.other", 80, "web.other.svc.cluster.local:80"},
	}
	for _, tt := range tests {
		t.Run(tt.host+":"+strconv.Itoa(int(tt.port)), func(t *testing.T) {
			got, ok := tt.names.Path(tt.host, tt.port)
			if ok != (tt.want != "") || got != tt.want {
				t.Errorf("%+v.Path(%q, %d) = %q, %v; want %q", tt.names, tt.host, tt.port, got, ok, tt.want)
			}
		})
	}
}

func TestSplitAuthority(t *testing.T) {
	tests := []struct {
		in      string
		host    string
		port    uint16
		wantErr bool
	}{
		{in: "web:8080", host: "web", port: 8080},
		{in: "web", host: "web"},
		{in: "web:", host: "web"},
		{in: "Web.Default.svc.cluster.local.:80", host: "Web.Default.svc.cluster.local.", port: 80},
		{in: "10.0.0.1:80", host: "10.0.0.1", port: 80},
		{in: "[::1]:80", host: "::1", port: 80},
		{in: "[::1]", host: "::1"},
		{in: "[::1]:", host: "::1"},
		{in: "::1", host: "::1"},
		{in: "web:065535", host: "web", port: 65535},
		{in: "", wantErr: true},
		{in: ":80", wantErr: true},
		{in: "web:0", wantErr: true},
		{in: "web:65536", wantErr: true},
		{in: "web:+80", wantErr: true},
		{in: "web:-1", wantErr: true},
		{in: "web:8o", wantErr: true},
		{in: "user@web:80", wantErr: true},
		{in: "[::1", wantErr: true},
		{in: "[::1]x", wantErr: true},
		{in: "[::1]:x", wantErr: true},
		{in: "[web]:80", wantErr: true},
		{in: "[10.0.0.1]:80", wantErr: true},
		{in: "a:b:c", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, port, err := discovery.SplitAuthority(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Errorf("SplitAuthority(%q) = %q, %d; want an error", tt.in, host, port)
				}
				return
			}
			if err != nil || host != tt.host || port != tt.port {
				t.Errorf("SplitAuthority(%q) = %q, %d, %v; want %q, %d", tt.in, host, port, err, tt.host, tt.port)
			}
		})
	}
}

// FuzzPath checks that SplitAuthority and Path never panic and that a path
// round-trips: split and resolved again, it gives itself, in lower case, in
// the cluster domain or as an IP literal.
func FuzzPath(f *testing.F) {
	for _, s := range []string{"web:8080", "web.other:80", "web.other.svc.cluster.local.:80", "[::1]:80",
		"10.0.0.1:443", "example.com", "a.b.c:1", "x.y.pod:9", "::ffff:1.2.3.4", "[fe80::1%25eth0]:80", "WEB:80"} {
		f.Add(s, "default", "")
	}
	f.Add("web:80", "ns", "Corp.Example.")
	f.Fuzz(func(t *testing.T, authority, ns, domain string) {
		host, port, err := discovery.SplitAuthority(authority)
		if err != nil {
			return
		}
		if port == 0 {
			port = 80
		}
		names := discovery.Names{Namespace: ns, ClusterDomain: domain}
		path, ok := names.Path(host, port)
		if !ok {
			return
		}
		if path != strings.ToLower(path) {
			t.Fatalf("Path(%q, %d) = %q, not lower case", host, port, path)
		}
		h2, p2, err := discovery.SplitAuthority(path)
		if err != nil || p2 != port {
			t.Fatalf("SplitAuthority(%q) = %q, %d, %v; want port %d", path, h2, p2, err, port)
		}
		again, ok := names.Path(h2, p2)
		if !ok || again != path {
			t.Fatalf("Path(%q, %d) = %q, %v; want the path %q back", h2, p2, again, ok, path)
		}
		if _, err := netip.ParseAddr(h2); err == nil {
			return
		}
		d := strings.ToLower(strings.TrimSuffix(domain, "."))
		if d == "" {
			d = discovery.DefaultClusterDomain
		}
		if !strings.HasSuffix(h2, "."+d) {
			t.Fatalf("Path(%q, %d) = %q, not in the cluster domain %q", host, port, path, d)
		}
	})
}
