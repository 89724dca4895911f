package cni

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func TestBridgeConfList(t *testing.T) {
	v4 := netip.MustParsePrefix("10.88.0.0/16")
	v6 := netip.MustParsePrefix("fd00:88::/64")
	b, err := BridgeConfList(BridgeOptions{Name: "pods", Bridge: "cni0", Subnets: []netip.Prefix{v4, v6}, DataDir: "/run/x/ipam", MTU: 1400})
	if err != nil {
		t.Fatalf("BridgeConfList: %v", err)
	}
	// libcni accepts it as it will load it from the config dir.
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, b)
	}
	if list.Name != "pods" || list.CNIVersion != "1.0.0" || len(list.Plugins) != 2 {
		t.Fatalf("name %q, version %q, %d plugins; want pods, 1.0.0, 2", list.Name, list.CNIVersion, len(list.Plugins))
	}
	var got struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{
			"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
			"promiscMode": false, "mtu": 1400.0,
			"ipam": map[string]any{
				"type": "host-local",
				"ranges": []any{
					[]any{map[string]any{"subnet": "10.88.0.0/16"}},
					[]any{map[string]any{"subnet": "fd00:88::/64"}},
				},
				"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}, map[string]any{"dst": "::/0"}},
				"dataDir": "/run/x/ipam",
			},
		},
		{"type": "portmap", "capabilities": map[string]any{"portMappings": true}, "snat": true},
	}
	if !reflect.DeepEqual(got.Plugins, want) {
		t.Errorf("plugins =\n%s\nwant\n%#v", b, want)
	}
}

func TestBridgeConfListInvalid(t *testing.T) {
	v4 := netip.MustParsePrefix("10.88.0.0/16")
	tests := []struct {
		name string
		o    BridgeOptions
	}{
		{"no name", BridgeOptions{Bridge: "cni0", Subnets: []netip.Prefix{v4}}},
		{"no bridge", BridgeOptions{Name: "pods", Subnets: []netip.Prefix{v4}}},
		{"no subnet", BridgeOptions{Name: "pods", Bridge: "cni0"}},
		{"host bits", BridgeOptions{Name: "pods", Bridge: "cni0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.88.0.1/16")}}},
		{"two v4", BridgeOptions{Name: "pods", Bridge: "cni0", Subnets: []netip.Prefix{v4, netip.MustParsePrefix("10.89.0.0/16")}}},
		{"invalid", BridgeOptions{Name: "pods", Bridge: "cni0", Subnets: []netip.Prefix{{}}}},
	}
	for _, tt := range tests {
		if b, err := BridgeConfList(tt.o); err == nil {
			t.Errorf("%s: BridgeConfList = %s, want an error", tt.name, b)
		}
	}
}

func TestReady(t *testing.T) {
	bins := t.TempDir()
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if err := os.WriteFile(filepath.Join(bins, p), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	good, err := BridgeConfList(BridgeOptions{Name: "pods", Bridge: "cni0", Subnets: []netip.Prefix{netip.MustParsePrefix("10.88.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	missing := []byte(`{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"flannel"}]}`)
	tests := []struct {
		name  string
		files map[string][]byte
		// wantErr is a part of Ready's error, "" for ready.
		wantErr string
	}{
		{"no dir", nil, "no *.conflist"},
		{"empty", map[string][]byte{"README": []byte("x"), "99-old.conf": good}, "no *.conflist"},
		{"valid", map[string][]byte{"10-pods.conflist": good}, ""},
		{"first valid", map[string][]byte{"10-pods.conflist": good, "20-bad.conflist": []byte("{")}, ""},
		{"first invalid", map[string][]byte{"05-bad.conflist": []byte("{"), "10-pods.conflist": good}, "05-bad.conflist"},
		{"plugin missing", map[string][]byte{"10-x.conflist": missing}, `"flannel"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "net.d")
			if tt.files != nil {
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for name, b := range tt.files {
				if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			n, err := New(dir, []string{bins}, t.TempDir(), nil)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			err = n.Ready()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Ready = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("Ready = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestRuntimeConf(t *testing.T) {
	m := PodMeta{Namespace: "ns", Name: "web-0", UID: "uid-1", SandboxID: "sb1"}
	rt := runtimeConf("/run/netns/x", m, []PortMapping{
		{HostPort: 8080, ContainerPort: 80, Protocol: "TCP"},
		{ContainerPort: 9090, Protocol: "TCP"}, // no host port: not mapped
		{HostPort: 5353, ContainerPort: 53, Protocol: "UDP", HostIP: "192.0.2.2"},
		{HostPort: 81, ContainerPort: 81},
	})
	if rt.ContainerID != "sb1" || rt.NetNS != "/run/netns/x" || rt.IfName != "eth0" {
		t.Errorf("container %q, netns %q, ifname %q", rt.ContainerID, rt.NetNS, rt.IfName)
	}
	wantArgs := [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "ns"}, {"K8S_POD_NAME", "web-0"},
		{"K8S_POD_INFRA_CONTAINER_ID", "sb1"}, {"K8S_POD_UID", "uid-1"},
	}
	if !reflect.DeepEqual(rt.Args, wantArgs) {
		t.Errorf("args = %v, want %v", rt.Args, wantArgs)
	}
	b, err := json.Marshal(rt.CapabilityArgs)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},` +
		`{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"192.0.2.2"},` +
		`{"hostPort":81,"containerPort":81,"protocol":"tcp"}]}`
	if string(b) != want {
		t.Errorf("capability args = %s, want %s", b, want)
	}
	if rt := runtimeConf("", m, nil); rt.CapabilityArgs != nil {
		t.Errorf("capability args without ports = %v, want none", rt.CapabilityArgs)
	}
}
