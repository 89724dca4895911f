package command

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func run(args ...string) (string, error) {
	var out bytes.Buffer
	root := NewRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// TestHelp: every service is a subcommand whose --help names its address,
// its admin port and the flags every service shares, with their defaults.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		service string
		addr    string
		admin   string
	}{
		{"destination", ":8086", ":9996"},
		{"identity", ":8080", ":9990"},
		{"tap", ":8088", ":9998"},
		{"injector", ":8443", ":9995"},
		{"metrics-api", ":8085", ":9997"},
	} {
		t.Run(tc.service, func(t *testing.T) {
			out, err := run(tc.service, "--help")
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"--addr", tc.addr, "--admin-addr", tc.admin, "--kubeconfig", "--log-level", "--log-format", "--drain-timeout"} {
				if !strings.Contains(out, want) {
					t.Errorf("%s --help lacks %q:\n%s", tc.service, want, out)
				}
			}
		})
	}
	out, err := run("--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"destination", "identity", "tap", "injector", "metrics-api"} {
		if !strings.Contains(out, s) {
			t.Errorf("sluice-controller --help lacks %s", s)
		}
	}
}

// TestBadFlags: a bad flag is one clear error naming it, before anything
// listens or talks to Kubernetes.
func TestBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"destination", "--log-level", "loud"}, `--log-level: "loud"`},
		{[]string{"identity", "--log-format", "xml"}, `--log-format: "xml"`},
		{[]string{"tap", "--admin-addr", "nope"}, "--admin-addr"},
		{[]string{"injector", "--drain-timeout", "-1s"}, "--drain-timeout"},
		{[]string{"metrics-api", "--prometheus-url", ""}, "--prometheus-url is required"},
		{[]string{"identity", "--kubeconfig", "/nonexistent/kubeconfig"}, "/nonexistent/kubeconfig"},
		{[]string{"destination", "extra"}, "unknown command"},
		{[]string{"nope"}, `unknown command "nope"`},
	} {
		_, err := run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
