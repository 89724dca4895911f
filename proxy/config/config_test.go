package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[strings.TrimPrefix(k, Prefix)]
		return v, ok
	}
}

func TestDefaults(t *testing.T) {
	c, err := FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4140"), netip.MustParseAddrPort("[::1]:4140")}
	if len(c.OutboundAddrs) != 2 || c.OutboundAddrs[0] != want[0] || c.OutboundAddrs[1] != want[1] {
		t.Errorf("outbound = %v", c.OutboundAddrs)
	}
	if c.InboundAddrs[0].String() != "0.0.0.0:4143" || c.InboundAddrs[1].String() != "[::]:4143" {
		t.Errorf("inbound = %v", c.InboundAddrs)
	}
	if c.TapAddr.Port() != 4190 || c.AdminAddr.Port() != 4191 {
		t.Errorf("tap %v admin %v", c.TapAddr, c.AdminAddr)
	}
	if c.DetectTimeout != 10*time.Second || c.EWMADefaultRTT != 30*time.Millisecond || c.EWMADecay != 10*time.Second ||
		c.FailureLimit != 7 || c.BackoffMin != time.Second || c.BackoffMax != time.Minute || c.MetricsRetainIdle != 10*time.Minute {
		t.Errorf("defaults: %+v", c)
	}
	if c.DestinationCtx != `{"ns":"default"}` || !c.RequireSteering || c.SteeringProbePort != 4144 {
		t.Errorf("ctx %q steering %v %d", c.DestinationCtx, c.RequireSteering, c.SteeringProbePort)
	}
}

func TestOverridesAndEmpty(t *testing.T) {
	c, err := FromEnv(env(map[string]string{
		"TAP_LISTEN_ADDR":  "",
		"OPAQUE_PORTS":     "25, 3306,9000-9100",
		"POD_NAMESPACE":    "shop",
		"DETECT_TIMEOUT":   "", // empty takes the default
		"LOG_LEVEL":        "debug",
		"REQUIRE_STEERING": "false",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.TapAddr.IsValid() {
		t.Errorf("tap should be disabled: %v", c.TapAddr)
	}
	for _, p := range []uint16{25, 3306, 9000, 9050, 9100} {
		if !c.OpaquePorts.Contains(p) {
			t.Errorf("opaque ports miss %d", p)
		}
	}
	if c.OpaquePorts.Contains(80) || c.OpaquePorts.Contains(9101) {
		t.Errorf("opaque ports too wide: %v", c.OpaquePorts)
	}
	if c.DestinationCtx != `{"ns":"shop"}` || c.DetectTimeout != 10*time.Second || c.RequireSteering {
		t.Errorf("got %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	_, err := FromEnv(env(map[string]string{
		"OUTBOUND_LISTEN_ADDRS":  "localhost:4140",
		"DETECT_TIMEOUT":         "ten",
		"OPAQUE_PORTS":           "70000",
		"MAX_CONCURRENT_STREAMS": "0",
		"LOG_FORMAT":             "xml",
	}))
	if err == nil {
		t.Fatal("no error")
	}
	for _, name := range []string{"OUTBOUND_LISTEN_ADDRS", "DETECT_TIMEOUT", "OPAQUE_PORTS", "MAX_CONCURRENT_STREAMS", "LOG_FORMAT"} {
		if !strings.Contains(err.Error(), Prefix+name) {
			t.Errorf("error does not name %s: %v", name, err)
		}
	}
	if _, err := FromEnv(env(map[string]string{"FAILURE_ACCRUAL_BACKOFF_MIN": "2m"})); err == nil {
		t.Error("backoff max below min accepted")
	}
}

func TestUsageListsEveryVar(t *testing.T) {
	u := Usage()
	for _, v := range Vars() {
		if !strings.Contains(u, Prefix+v.Name) {
			t.Errorf("usage misses %s", v.Name)
		}
	}
}
