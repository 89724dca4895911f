package meshctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDashboard checks the dashboard's URL through the API server's
// service proxy, the browser opened with it or failing, and the message
// of a cluster without the dashboard.
func TestDashboard(t *testing.T) {
	kubeconfig, server := fakeCluster{dashboard: true}.start(t)
	url := server + "/api/v1/namespaces/sluice/services/http:sluice-web:8084/proxy/"

	stdout, stderr, err := runIn(t.Context(), kubeconfig, "dashboard", "--show=url")
	if err != nil || stdout != url+"\n" || stderr != "" {
		t.Errorf("dashboard --show=url: %v, %q, %q; want %q", err, stdout, stderr, url)
	}

	// A browser that records its argument, then one that fails.
	bin := t.TempDir()
	opened := filepath.Join(bin, "opened")
	writeFile(t, filepath.Join(bin, browserCommand), "#!/bin/sh\necho \"$1\" > "+opened+"\n")
	if err := os.Chmod(filepath.Join(bin, browserCommand), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	stdout, _, err = runIn(t.Context(), kubeconfig, "dashboard")
	got, _ := os.ReadFile(opened)
	if err != nil || string(got) != url+"\n" || stdout != "Sluice dashboard available at:\n"+url+"\nOpened it in the default browser.\n" {
		t.Errorf("dashboard: %v, printed %q, opened %q", err, stdout, got)
	}
	t.Setenv("PATH", t.TempDir())
	stdout, _, err = runIn(t.Context(), kubeconfig, "dashboard")
	if err != nil || !strings.HasSuffix(stdout, url+"\nCould not open a browser (xdg-open: exec: \"xdg-open\": executable file not found in $PATH): open the URL above.\n") {
		t.Errorf("dashboard without a browser: %v, printed %q", err, stdout)
	}

	bare, _ := fakeCluster{}.start(t)
	stdout, stderr, err = runIn(t.Context(), bare, "dashboard", "--show=url")
	if err == nil || !AlreadyReported(err) || stdout != "" ||
		stderr != "The Sluice dashboard is not installed in namespace sluice (no Service sluice-web); meshctl stat, top, edges and tap show the same figures.\n" {
		t.Errorf("dashboard without one: %v, %q, %q", err, stdout, stderr)
	}

	_, _, err = runIn(t.Context(), kubeconfig, "dashboard", "--show=grafana")
	oneLine(t, "dashboard --show=grafana", err, `invalid --show "grafana": use "browser" or "url"`)
}
