package command

import (
	"bytes"
	"strings"
	"testing"
)

func TestHelpListsEnvironment(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"--help"}, func(string) (string, bool) { return "", false }, &out, &errb); code != 0 {
		t.Fatalf("--help exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"SLUICE_PROXY_OUTBOUND_LISTEN_ADDRS", "SLUICE_PROXY_DESTINATION_ADDR", "default 10s",
		"SLUICE_PROXY_IDENTITY_LOCAL_NAME", "SLUICE_PROXY_IDENTITY_TRUST_ANCHORS", "SLUICE_PROXY_IDENTITY_TOKEN_FILE"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}

func TestBadConfigurationFailsClearly(t *testing.T) {
	var out, errb bytes.Buffer
	env := map[string]string{"SLUICE_PROXY_DETECT_TIMEOUT": "soon"}
	code := Main(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "SLUICE_PROXY_DETECT_TIMEOUT") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}

func TestHalfConfiguredIdentityFailsClearly(t *testing.T) {
	var out, errb bytes.Buffer
	env := map[string]string{"SLUICE_PROXY_IDENTITY_LOCAL_NAME": "web.shop.serviceaccount.identity.sluice.cluster.local"}
	code := Main(nil, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, &out, &errb)
	for _, want := range []string{"identity is half configured", "SLUICE_PROXY_IDENTITY_SVC_ADDR", "SLUICE_PROXY_IDENTITY_TRUST_ANCHORS"} {
		if code != 1 || !strings.Contains(errb.String(), want) {
			t.Errorf("exit %d, stderr %q; want it to name %s", code, errb.String(), want)
		}
	}
}

func TestNoArguments(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"extra"}, func(string) (string, bool) { return "", false }, &out, &errb); code != 1 {
		t.Errorf("exit %d for an argument", code)
	}
}
