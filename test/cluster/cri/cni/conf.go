package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// BridgeOptions configures BridgeConfList.
type BridgeOptions struct {
	// Name is the network's name (CNI "name"; it also names the
	// masquerading chains and host-local's data subdirectory).
	Name string
	// Bridge is the Linux bridge the pods attach to.
	Bridge string
	// Subnets are the pod address ranges: at most one IPv4 and one IPv6
	// prefix, in canonical (masked) form.
	Subnets []netip.Prefix
	// DataDir is where host-local records the addresses it hands out
	// (its default, /var/lib/cni/networks, when empty).
	DataDir string
	// MTU of the pods' interfaces and the bridge (the plugin's default
	// when 0).
	MTU int
}

// BridgeConfList renders the cluster's conflist: the bridge plugin as the
// pods' gateway (isGateway, ipMasq, hairpinMode) with host-local addresses
// from each subnet (one range set per family) and default routes for each
// family, then portmap for host ports (portMappings capability, SNAT for
// hairpin and localhost traffic). Loopback is not in it: the runtime brings
// lo up itself.
func BridgeConfList(o BridgeOptions) ([]byte, error) {
	if o.Name == "" || o.Bridge == "" {
		return nil, fmt.Errorf("render bridge conflist: want a network name (%q) and a bridge (%q)", o.Name, o.Bridge)
	}
	if len(o.Subnets) == 0 {
		return nil, errors.New("render bridge conflist: no subnet")
	}
	type rangeT struct {
		Subnet string `json:"subnet"`
	}
	type route struct {
		Dst string `json:"dst"`
	}
	var ranges [][]rangeT
	var routes []route
	families := map[bool]bool{}
	for _, s := range o.Subnets {
		if !s.IsValid() || s.Masked() != s {
			return nil, fmt.Errorf("render bridge conflist: subnet %s is not a canonical prefix", s)
		}
		v4 := s.Addr().Is4()
		if families[v4] {
			return nil, fmt.Errorf("render bridge conflist: two subnets of one family (%s)", s)
		}
		families[v4] = true
		ranges = append(ranges, []rangeT{{Subnet: s.String()}})
		def := "::/0"
		if v4 {
			def = "0.0.0.0/0"
		}
		routes = append(routes, route{Dst: def})
	}
	type ipam struct {
		Type    string     `json:"type"`
		Ranges  [][]rangeT `json:"ranges"`
		Routes  []route    `json:"routes"`
		DataDir string     `json:"dataDir,omitempty"`
	}
	type bridge struct {
		Type        string `json:"type"`
		Bridge      string `json:"bridge"`
		IsGateway   bool   `json:"isGateway"`
		IPMasq      bool   `json:"ipMasq"`
		HairpinMode bool   `json:"hairpinMode"`
		PromiscMode bool   `json:"promiscMode"`
		MTU         int    `json:"mtu,omitempty"`
		IPAM        ipam   `json:"ipam"`
	}
	type portmap struct {
		Type         string          `json:"type"`
		Capabilities map[string]bool `json:"capabilities"`
		SNAT         bool            `json:"snat"`
	}
	conf := struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []any  `json:"plugins"`
	}{
		CNIVersion: "1.0.0",
		Name:       o.Name,
		Plugins: []any{
			bridge{
				Type: "bridge", Bridge: o.Bridge, IsGateway: true, IPMasq: true, HairpinMode: true, MTU: o.MTU,
				IPAM: ipam{Type: "host-local", Ranges: ranges, Routes: routes, DataDir: o.DataDir},
			},
			portmap{Type: "portmap", Capabilities: map[string]bool{"portMappings": true}, SNAT: true},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render bridge conflist: %w", err)
	}
	return append(b, '\n'), nil
}
