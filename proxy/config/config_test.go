package config

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/internal/pki"
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
		"POD_IPS":          "10.244.0.7, fd00::7",
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
	if want := []netip.Addr{netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00::7")}; !slices.Equal(c.PodIPs, want) {
		t.Errorf("pod IPs %v, want %v", c.PodIPs, want)
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
		"POD_IPS":                "10.0.0.1,pod",
	}))
	if err == nil {
		t.Fatal("no error")
	}
	for _, name := range []string{"OUTBOUND_LISTEN_ADDRS", "DETECT_TIMEOUT", "OPAQUE_PORTS", "MAX_CONCURRENT_STREAMS", "LOG_FORMAT", "POD_IPS"} {
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

// identityEnv is a complete identity configuration.
func identityEnv(t *testing.T) map[string]string {
	t.Helper()
	creds, err := pki.Generate(pki.GenerateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"IDENTITY_LOCAL_NAME":     "web.shop.serviceaccount.identity.sluice.cluster.local",
		"IDENTITY_SVC_ADDR":       "sluice-identity.sluice.svc.cluster.local:8080",
		"IDENTITY_SVC_NAME":       "sluice-identity.sluice.serviceaccount.identity.sluice.cluster.local",
		"IDENTITY_TRUST_ANCHORS":  string(creds.TrustAnchorPEM),
		"IDENTITY_TOKEN_FILE":     "/var/run/secrets/tokens/sluice-identity-token",
		"IDENTITY_DIR":            "/var/run/sluice/identity/end-entity",
		"IDENTITY_BACKOFF_MIN":    "100ms",
		"IDENTITY_BACKOFF_MAX":    "2s",
		"DESTINATION_ADDR":        "sluice-dst.sluice.svc.cluster.local:8086",
		"IDENTITY_UNRELATED_NOTE": "ignored",
	}
}

func TestIdentity(t *testing.T) {
	c, err := FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity.Enabled() || c.Identity.BackoffMin != 500*time.Millisecond || c.Identity.BackoffMax != 10*time.Second {
		t.Errorf("no identity variables: %+v, want disabled with default backoffs", c.Identity)
	}

	c, err = FromEnv(env(identityEnv(t)))
	if err != nil {
		t.Fatal(err)
	}
	id := c.Identity
	if !id.Enabled() || id.LocalName != "web.shop.serviceaccount.identity.sluice.cluster.local" || id.TrustDomain != "cluster.local" ||
		id.SvcAddr != "sluice-identity.sluice.svc.cluster.local:8080" || id.SvcName != "sluice-identity.sluice.serviceaccount.identity.sluice.cluster.local" ||
		len(id.TrustAnchors) != 1 || id.TokenFile == "" || id.Dir == "" || id.BackoffMin != 100*time.Millisecond || id.BackoffMax != 2*time.Second {
		t.Errorf("identity: %+v", id)
	}
}

func TestIdentityInvalid(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string // changes to a complete configuration; "" unsets
		want []string          // in the error
	}{
		{"half configured", map[string]string{"IDENTITY_SVC_ADDR": "", "IDENTITY_TOKEN_FILE": ""},
			[]string{"half configured", Prefix + "IDENTITY_SVC_ADDR", Prefix + "IDENTITY_TOKEN_FILE", "missing"}},
		{"only the directory", map[string]string{"IDENTITY_LOCAL_NAME": "", "IDENTITY_SVC_ADDR": "", "IDENTITY_SVC_NAME": "",
			"IDENTITY_TRUST_ANCHORS": "", "IDENTITY_TOKEN_FILE": ""}, []string{Prefix + "IDENTITY_DIR set", Prefix + "IDENTITY_LOCAL_NAME"}},
		{"local name not an identity", map[string]string{"IDENTITY_LOCAL_NAME": "web.shop.svc.cluster.local"},
			[]string{Prefix + "IDENTITY_LOCAL_NAME", "serviceaccount.identity.sluice"}},
		{"local name with upper case", map[string]string{"IDENTITY_LOCAL_NAME": "Web.shop.serviceaccount.identity.sluice.cluster.local"},
			[]string{Prefix + "IDENTITY_LOCAL_NAME", "lowercase"}},
		{"anchors not PEM", map[string]string{"IDENTITY_TRUST_ANCHORS": "not a certificate"},
			[]string{Prefix + "IDENTITY_TRUST_ANCHORS", "no PEM CERTIFICATE"}},
		{"anchors that do not parse", map[string]string{"IDENTITY_TRUST_ANCHORS": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
			[]string{Prefix + "IDENTITY_TRUST_ANCHORS", "parse certificate 1"}},
		{"address without port", map[string]string{"IDENTITY_SVC_ADDR": "sluice-identity"}, []string{Prefix + "IDENTITY_SVC_ADDR", "host:port"}},
		{"service name not DNS", map[string]string{"IDENTITY_SVC_NAME": "sluice identity"}, []string{Prefix + "IDENTITY_SVC_NAME"}},
		{"backoffs reversed", map[string]string{"IDENTITY_BACKOFF_MIN": "5s", "IDENTITY_BACKOFF_MAX": "1s"}, []string{"IDENTITY_BACKOFF_MAX", "below"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := identityEnv(t)
			for k, v := range tc.env {
				if v == "" {
					delete(e, k)
				} else {
					e[k] = v
				}
			}
			_, err := FromEnv(env(e))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
}

func TestIdentityTrustDomain(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"web.shop.serviceaccount.identity.sluice.cluster.local", "cluster.local", true},
		{"default.default.serviceaccount.identity.sluice.example.org", "example.org", true},
		{"web.shop.serviceaccount.identity.sluice", "", false},
		{"web.serviceaccount.identity.sluice.cluster.local", "", false},
		{"a.b.c.serviceaccount.identity.sluice.cluster.local", "", false},
		{"web.shop.serviceaccount.identity.linkerd.cluster.local", "", false},
	} {
		got, err := IdentityTrustDomain(tc.name)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("IdentityTrustDomain(%q) = %q, %v; want %q ok=%v", tc.name, got, err, tc.want, tc.ok)
		}
	}
}
