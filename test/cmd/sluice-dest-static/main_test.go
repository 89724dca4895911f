package main

import (
	"bufio"
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluice-mesh/sluice/proxy/discovery"
)

const hang = 20 * time.Second

// TestMain runs the command itself when the test starts its own binary as
// the program under test.
func TestMain(m *testing.M) {
	if os.Getenv("SLUICE_DEST_STATIC_RUN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs the command with args and returns it and the address it
// printed. It is killed in t.Cleanup if still running.
func start(t *testing.T, stderr *syncBuffer, args ...string) (*exec.Cmd, netip.AddrPort) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "SLUICE_DEST_STATIC_RUN=1")
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Scan()
		line <- sc.Text()
		for sc.Scan() {
		}
	}()
	select {
	case l := <-line:
		a, ok := strings.CutPrefix(l, "READY ")
		addr, err := netip.ParseAddrPort(a)
		if !ok || err != nil {
			t.Fatalf("first line %q, want READY <addr>; stderr:\n%s", l, stderr)
		}
		return cmd, addr
	case <-time.After(hang):
		t.Fatalf("no READY line; stderr:\n%s", stderr)
	}
	return nil, netip.AddrPort{}
}

func waitFor(t *testing.T, w *discovery.Watch, what string, cond func(discovery.Snapshot) bool) {
	t.Helper()
	timeout := time.After(hang)
	for {
		ch := w.Changed()
		if cond(w.Snapshot()) {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("waited for %s; last snapshot %+v", what, w.Snapshot())
		}
	}
}

func addrs(s discovery.Snapshot) []string {
	var as []string
	for _, e := range s.Endpoints {
		as = append(as, e.Addr.String())
	}
	return as
}

func TestServesFileAndReloadsOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "table.json")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"paths": {"web.default.svc.cluster.local:8080": [
		{"addr": "10.0.0.2:8080", "weight": 1, "labels": {"pod": "web-1", "namespace": "default", "service": "web"}, "h2": true,
		 "identity": "web.default.serviceaccount.identity.sluice.cluster.local"}],
		"empty.default.svc.cluster.local:80": []}}`)
	stderr := &syncBuffer{}
	cmd, addr := start(t, stderr, "-listen", "127.0.0.1:0", "-config", file)

	cc, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := discovery.NewClient(cc, discovery.Options{})
	defer c.Close()
	web := c.Watch("web.default.svc.cluster.local:8080")
	defer web.Release()
	empty := c.Watch("empty.default.svc.cluster.local:80")
	defer empty.Release()

	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	s, err := web.Wait(ctx)
	want := discovery.Endpoint{
		Addr: netip.MustParseAddrPort("10.0.0.2:8080"), Weight: 1, H2: true,
		Labels:   map[string]string{"pod": "web-1", "namespace": "default", "service": "web"},
		Identity: "web.default.serviceaccount.identity.sluice.cluster.local",
	}
	if err != nil || s.State != discovery.Found || !slices.EqualFunc(s.Endpoints, []discovery.Endpoint{want}, discovery.Endpoint.Equal) {
		t.Fatalf("web = %+v, %v; want %+v", s, err, want)
	}
	if s, err := empty.Wait(ctx); err != nil || s.State != discovery.NoEndpoints {
		t.Fatalf("empty = %+v, %v; want no endpoints", s, err)
	}

	// A broken file is reported and changes nothing.
	write(`{"paths": {"web.default.svc.cluster.local:8080": [{"addr": "nope"}]}}`)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(hang)
	for !strings.Contains(stderr.String(), "reload failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload failure logged; stderr:\n%s", stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := addrs(web.Snapshot()); !slices.Equal(got, []string{"10.0.0.2:8080"}) {
		t.Fatalf("web after a failed reload = %v", got)
	}

	write(`{"paths": {"web.default.svc.cluster.local:8080": [{"addr": "10.0.0.3:8080"}, {"addr": "[2001:db8::4]:8080", "opaque": true}]}}`)
	cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, web, "the reloaded endpoints", func(s discovery.Snapshot) bool {
		return slices.Equal(addrs(s), []string{"10.0.0.3:8080", "[2001:db8::4]:8080"})
	})
	waitFor(t, empty, "the dropped path", func(s discovery.Snapshot) bool { return s.State == discovery.NotFound })

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v; stderr:\n%s", err, stderr)
	}
}

func TestUsageAndBadInvocations(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"paths": {}} x`), 0o644)
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"help", []string{"--help"}, 0, "Usage: sluice-dest-static", ""},
		{"no config", nil, 2, "", "need -config FILE"},
		{"unknown flag", []string{"-x"}, 2, "", "flag provided but not defined"},
		{"bad listen", []string{"-listen", "localhost", "-config", bad}, 2, "", "parse -listen"},
		{"missing file", []string{"-config", filepath.Join(dir, "none.json")}, 1, "", "read config"},
		{"bad file", []string{"-config", bad}, 1, "", "text after the JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != tt.code {
				t.Errorf("exit code %d, want %d; stderr %s", code, tt.code, &errb)
			}
			if !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errb.String(), tt.stderr) {
				t.Errorf("stdout %q, stderr %q; want %q and %q in them", &out, &errb, tt.stdout, tt.stderr)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		json string
		err  string // "" = valid
		n    int    // endpoints of path "p"
	}{
		{"valid", `{"paths": {"p": [{"addr": "10.0.0.1:80"}, {"addr": "[::ffff:10.0.0.2]:80", "weight": 3}]}}`, "", 2},
		{"empty list", `{"paths": {"p": []}}`, "", 0},
		{"no paths", `{}`, `no "paths"`, 0},
		{"unknown field", `{"paths": {"p": [{"adr": "10.0.0.1:80"}]}}`, "unknown field", 0},
		{"port 0", `{"paths": {"p": [{"addr": "10.0.0.1:0"}]}}`, "invalid addr", 0},
		{"name", `{"paths": {"p": [{"addr": "web:80"}]}}`, "invalid addr", 0},
		{"duplicate", `{"paths": {"p": [{"addr": "10.0.0.1:80"}, {"addr": "[::ffff:10.0.0.1]:80"}]}}`, "duplicate addr", 0},
		{"h2 and opaque", `{"paths": {"p": [{"addr": "10.0.0.1:80", "h2": true, "opaque": true}]}}`, "both h2 and opaque", 0},
		{"empty path", `{"paths": {"": []}}`, "empty path", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table, err := parseConfig([]byte(tt.json))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseConfig = %v, want an error with %q", err, tt.err)
				}
				return
			}
			if err != nil || len(table["p"]) != tt.n {
				t.Fatalf("parseConfig = %v, %v; want %d endpoints for p", table, err, tt.n)
			}
		})
	}
}
