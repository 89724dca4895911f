package watcher_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluice-mesh/sluice/controlplane/destination/watcher"
)

func svc(ns, name string, port uint16) watcher.Target {
	return watcher.Target{Service: watcher.ServiceID{Namespace: ns, Name: name}, Port: port}
}

func host(hostname, ns, name string, port uint16) watcher.Target {
	t := svc(ns, name, port)
	t.Hostname = hostname
	return t
}

func ip(s string, port uint16) watcher.Target {
	return watcher.Target{IP: netip.MustParseAddr(s), Port: port}
}

func TestParsePath(t *testing.T) {
	const domain = "cluster.local"
	tests := []struct {
		path, ns string
		want     watcher.Target
		err      string // part of the error; "" means success
	}{
		{"web.shop.svc.cluster.local:8080", "", svc("shop", "web", 8080), ""},
		{"web.shop.svc.cluster.local.:8080", "", svc("shop", "web", 8080), ""},
		{"WEB.Shop.SVC.Cluster.Local:8080", "", svc("shop", "web", 8080), ""},
		{"web.shop.svc:8080", "", svc("shop", "web", 8080), ""},
		{"web.shop:8080", "", svc("shop", "web", 8080), ""},
		{"web:8080", "shop", svc("shop", "web", 8080), ""},
		{"web:8080", "Shop", svc("shop", "web", 8080), ""},
		{"web.shop.svc.cluster.local", "", svc("shop", "web", 80), ""},
		{"web-0.db.shop.svc.cluster.local:5432", "", host("web-0", "shop", "db", 5432), ""},
		{"web-0.db.shop.svc:5432", "", host("web-0", "shop", "db", 5432), ""},
		{"10-1-2-3.shop.pod.cluster.local:8080", "", ip("10.1.2.3", 8080), ""},
		{"10-1-2-3.shop.pod:8080", "", ip("10.1.2.3", 8080), ""},
		{"fd00--1.shop.pod.cluster.local:8080", "", ip("fd00::1", 8080), ""},
		{"10.1.2.3:8080", "", ip("10.1.2.3", 8080), ""},
		{"10.1.2.3", "", ip("10.1.2.3", 80), ""},
		{"[fd00::1]:8080", "", ip("fd00::1", 8080), ""},
		{"[::ffff:10.1.2.3]:8080", "", ip("10.1.2.3", 8080), ""},
		{"fd00::1", "", ip("fd00::1", 80), ""},
		{"example.com:443", "", svc("com", "example", 443), ""}, // service.namespace: exists or not, the watcher says

		{"", "shop", watcher.Target{}, "empty path"},
		{"web:8080", "", watcher.Target{}, "needs the namespace"},
		{"web:8080", "not a label!", watcher.Target{}, "not a DNS label"},
		{"web:0", "shop", watcher.Target{}, "port"},
		{"web:65536", "shop", watcher.Target{}, "port"},
		{"web:+80", "shop", watcher.Target{}, "port"},
		{"web:http", "shop", watcher.Target{}, "port"},
		{"web:", "shop", watcher.Target{}, "empty port"},
		{":80", "shop", watcher.Target{}, "empty host"},
		{"we_b.shop:80", "", watcher.Target{}, "not a DNS name"},
		{"-web.shop:80", "", watcher.Target{}, "not a DNS name"},
		{"web..shop:80", "", watcher.Target{}, "not a DNS name"},
		{"api.example.com:443", "", watcher.Target{}, "not a name in the cluster domain"},
		{"web.shop.svc.other.domain:80", "", watcher.Target{}, "not a name in the cluster domain"},
		{"web.shop.cluster.local:80", "", watcher.Target{}, "not a service"},
		{"a.b.c.d.shop.svc.cluster.local:80", "", watcher.Target{}, "not a service"},
		{"x-y.shop.pod.cluster.local:80", "", watcher.Target{}, "not an IP address"},
		{"[fe80::1%eth0]:80", "", watcher.Target{}, "zone"},
		{"[10.1.2.3]:80", "", watcher.Target{}, "IPv6"},
		{"[fd00::1:80", "", watcher.Target{}, "missing ']'"},
		{"[fd00::1]x", "", watcher.Target{}, "after ']'"},
		{"fd00::1::2:80", "", watcher.Target{}, "too many colons"},
		{strings.Repeat("a", 64) + ".shop:80", "", watcher.Target{}, "not a DNS name"},
	}
	for _, tt := range tests {
		got, err := watcher.ParsePath(tt.path, tt.ns, domain)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, watcher.ErrInvalidPath) {
				t.Errorf("ParsePath(%q, %q) = %v, %v; want ErrInvalidPath mentioning %q", tt.path, tt.ns, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePath(%q, %q) = %v, %v; want %v", tt.path, tt.ns, got, err, tt.want)
		}
	}
}

func TestParsePathOtherClusterDomain(t *testing.T) {
	got, err := watcher.ParsePath("web.shop.svc.example.internal:80", "", "example.internal.")
	if err != nil || got != svc("shop", "web", 80) {
		t.Errorf("ParsePath in domain example.internal = %v, %v", got, err)
	}
	if _, err := watcher.ParsePath("web.shop.svc.cluster.local:80", "", "example.internal"); err == nil {
		t.Error("a name in cluster.local parsed with the cluster domain example.internal")
	}
}

// FuzzParsePath checks that ParsePath never panics, that what it accepts
// is a well-formed target, and that a target's String parses back to it.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"web.shop.svc.cluster.local:8080", "web:80", "web.shop", "web-0.db.shop.svc:5432",
		"10-1-2-3.shop.pod.cluster.local:8080", "10.1.2.3:8080", "[fd00::1]:8080", "fd00::1",
		"[::ffff:1.2.3.4]:1", "a.b.c.d.e:99999", "[fe80::1%eth0]:80", "web:", ":", "[", "..:80",
	} {
		f.Add(s, "shop")
	}
	f.Fuzz(func(t *testing.T, path, ns string) {
		got, err := watcher.ParsePath(path, ns, "cluster.local")
		if err != nil {
			if !errors.Is(err, watcher.ErrInvalidPath) {
				t.Fatalf("ParsePath(%q) error %v does not wrap ErrInvalidPath", path, err)
			}
			return
		}
		if got.Port == 0 {
			t.Fatalf("ParsePath(%q) = %v: port 0", path, got)
		}
		if got.IP.IsValid() == (got.Service != watcher.ServiceID{}) {
			t.Fatalf("ParsePath(%q) = %+v: want exactly one of IP and service", path, got)
		}
		if got.IP.IsValid() && (got.IP.Zone() != "" || got.IP.Is4In6()) {
			t.Fatalf("ParsePath(%q) = %v: zoned or mapped IP", path, got)
		}
		again, err := watcher.ParsePath(got.String(), "", "cluster.local")
		if err != nil || again != got {
			t.Fatalf("ParsePath(%q) = %+v, whose String %q parses to %+v, %v", path, got, got.String(), again, err)
		}
	})
}
