package api

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func TestParsePortRanges(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{"", "[]", ""},
		{"80", "[80]", ""},
		{" 22 , 9000-9100 ", "[22 9000-9100]", ""},
		{"1-65535", "[1-65535]", ""},
		{"0", "", "out of range"},
		{"65536", "", "out of range"},
		{"90-80", "", "above"},
		{"http", "", "not a number"},
		{"1-", "", "not a number"},
		{"-5", "", "not a number"},
	}
	for _, tc := range tests {
		got, err := ParsePortRanges(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParsePortRanges(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParsePortRanges(%q): %v", tc.in, err)
			continue
		}
		s := make([]string, len(got))
		for i, r := range got {
			s[i] = r.String()
		}
		if g := "[" + strings.Join(s, " ") + "]"; g != tc.want {
			t.Errorf("ParsePortRanges(%q) = %s, want %s", tc.in, g, tc.want)
		}
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := PodConfig{}.WithDefaults()
	if c.ProxyUID != 2102 || c.OutboundPort != 4140 || c.InboundPort != 4143 {
		t.Errorf("defaults: %+v", c)
	}
	if !containsPort(c.SkipInboundPorts, 4190) || !containsPort(c.SkipInboundPorts, 4191) {
		t.Errorf("proxy ports not skipped inbound: %v", c.SkipInboundPorts)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
	bad := []struct {
		name string
		c    PodConfig
		err  string
	}{
		{"same ports", PodConfig{OutboundPort: 4143}, "both"},
		{"inbound port skipped", PodConfig{SkipInboundPorts: []PortRange{{4000, 4200}}}, "inbound port"},
		{"too many ranges", PodConfig{SkipOutboundPorts: make([]PortRange, 17)}, "at most 16"},
		{"zero range", PodConfig{SkipOutboundPorts: []PortRange{{0, 0}}}, "invalid range"},
		{"invalid prefix", PodConfig{SkipSubnets: []netip.Prefix{{}}}, "invalid prefix"},
	}
	for _, tc := range bad {
		err := tc.c.WithDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
	}
}

func TestEnrollRequestJSON(t *testing.T) {
	in := `{"netns":"/run/netns/x","config":{"skipOutboundPorts":["5432","9000-9100"],"skipSubnets":["10.96.0.0/12","fd00::/8"]}}`
	var req EnrollRequest
	if err := json.Unmarshal([]byte(in), &req); err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != in {
		t.Errorf("round trip:\n got %s\nwant %s", out, in)
	}
}

// FuzzParsePortRanges: any input parses to valid ranges or fails cleanly,
// and what parses prints back to something that parses the same.
func FuzzParsePortRanges(f *testing.F) {
	for _, s := range []string{"", "80", "1-65535", "22,80-90", "0", "65536", "9-1", ",,", "1-2-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParsePortRanges(s)
		if err != nil {
			return
		}
		parts := make([]string, len(rs))
		for i, r := range rs {
			if r.Lo == 0 || r.Lo > r.Hi {
				t.Fatalf("%q parsed to invalid range %+v", s, r)
			}
			parts[i] = r.String()
		}
		again, err := ParsePortRanges(strings.Join(parts, ","))
		if err != nil || len(again) != len(rs) {
			t.Fatalf("%q: re-parse of %v: %v", s, parts, err)
		}
		for i := range rs {
			if again[i] != rs[i] {
				t.Fatalf("%q: %v re-parsed as %v", s, rs, again)
			}
		}
	})
}

// FuzzEnrollRequest: decoding arbitrary bodies never panics, and a decoded
// config either validates or is refused with an error.
func FuzzEnrollRequest(f *testing.F) {
	f.Add(`{"netns":"/run/netns/x","config":{"skipOutboundPorts":["5432"]}}`)
	f.Add(`{"pid":4,"config":{"skipSubnets":["10.0.0.0/8"],"inboundPort":1}}`)
	f.Add(`{"config":{"skipInboundPorts":["1-2","3"]}}`)
	f.Fuzz(func(t *testing.T, body string) {
		var req EnrollRequest
		if json.Unmarshal([]byte(body), &req) != nil {
			return
		}
		c := req.Config.WithDefaults()
		if c.Validate() == nil && (c.OutboundPort == c.InboundPort || len(c.SkipSubnets) > MaxSubnets) {
			t.Fatalf("invalid config validated: %+v", c)
		}
	})
}
