package cluster

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProgramID: a rebuilt but unchanged program (go build touches it)
// keeps its id; another program has another.
func TestProgramID(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(t.TempDir(), "prog")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, data, 0o755); err != nil {
		t.Fatal(err)
	}
	before, err := programID(prog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(before, "build") {
		t.Errorf("a Go test binary's id %q is not its build id", before)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(prog, later, later); err != nil {
		t.Fatal(err)
	}
	if after, _ := programID(prog); after != before {
		t.Errorf("touching the program changed its id: %q -> %q", before, after)
	}
	sh, err := programID("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if sh == before {
		t.Errorf("/bin/sh and the test binary share the id %q", sh)
	}
}

// TestDaemonLifecycle starts a daemon, reuses it while its spec is the
// same, restarts it when its configuration file changes, reports a
// program that exits at once with its log, and stops it.
func TestDaemonLifecycle(t *testing.T) {
	l := layout{dir: t.TempDir()}
	ds := daemons{l: l, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // hang guard
	defer cancel()
	conf := l.path("conf")
	if err := os.WriteFile(conf, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{name: "sleeper", path: sleep, args: []string{"1000"}, files: []string{conf},
		ready: func(context.Context) error { return nil }}
	t.Cleanup(func() { ds.stop(context.Background(), "sleeper", time.Second) })

	if reused, err := ds.ensure(ctx, d); err != nil || reused {
		t.Fatalf("first ensure: reused %t, err %v", reused, err)
	}
	first, ok := ds.running("sleeper")
	if !ok {
		t.Fatal("not running after ensure")
	}
	if pid, _ := os.ReadFile(l.path("run", "sleeper.pid")); strings.TrimSpace(string(pid)) == "" {
		t.Error("no pid file")
	}
	if reused, err := ds.ensure(ctx, d); err != nil || !reused {
		t.Fatalf("second ensure: reused %t, err %v", reused, err)
	}
	if err := os.WriteFile(conf, []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if reused, err := ds.ensure(ctx, d); err != nil || reused {
		t.Fatalf("ensure after a configuration change: reused %t, err %v", reused, err)
	}
	second, ok := ds.running("sleeper")
	if !ok || second.PID == first.PID {
		t.Fatalf("not restarted: pid %d, then %d (running %t)", first.PID, second.PID, ok)
	}
	if _, state, err := procStat(first.PID); err == nil && state != 'Z' {
		t.Errorf("the first process %d still runs", first.PID)
	}
	if err := ds.stop(ctx, "sleeper", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, ok := ds.running("sleeper"); ok {
		t.Error("running after stop")
	}

	failing := &daemon{name: "failing", path: "/bin/sh", args: []string{"-c", "echo cannot bind; exit 3"},
		ready: func(context.Context) error { return context.DeadlineExceeded }}
	_, err = ds.ensure(ctx, failing)
	if err == nil || !strings.Contains(err.Error(), "failing exited while starting") || !strings.Contains(err.Error(), "cannot bind") {
		t.Errorf("error of a daemon that exits at once: %v; want its name and its log's tail", err)
	}
}

func TestDaemonProcUses(t *testing.T) {
	tests := []struct {
		args []string
		dir  string
		want bool
	}{
		{[]string{"kubelet", "--root-dir=/var/lib/sluice-cluster/kubelet"}, "/var/lib/sluice-cluster", true},
		{[]string{"etcd", "--data-dir=/var/lib/sluice-cluster"}, "/var/lib/sluice-cluster", true},
		{[]string{"procri", "/var/lib/sluice-cluster/run/procri.sock"}, "/var/lib/sluice-cluster", true},
		{[]string{"kubelet", "--root-dir=/var/lib/sluice-cluster2/kubelet"}, "/var/lib/sluice-cluster", false},
		{[]string{"kubelet", "--root-dir=/var/lib/kubelet"}, "/var/lib/sluice-cluster", false},
		{[]string{"/tmp/x/sluice-cluster/kubelet"}, "/tmp/x/sluice-cluster", false}, // the program itself is not an argument
	}
	for _, tt := range tests {
		if got := (daemonProc{args: tt.args}).uses(tt.dir); got != tt.want {
			t.Errorf("%q uses %s: %t, want %t", tt.args, tt.dir, got, tt.want)
		}
	}
}
