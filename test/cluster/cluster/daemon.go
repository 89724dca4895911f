package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-mesh/sluice/test/cluster/pki"
)

// daemon is one long-running program of the cluster.
type daemon struct {
	// name names its log (<Dir>/logs/<name>.log) and pid file
	// (<Dir>/run/<name>.pid).
	name string
	path string
	args []string
	// env is added to this process's environment.
	env []string
	// files are read into the spec: a changed configuration file restarts
	// the daemon as a changed flag does.
	files []string
	// ready returns nil once the daemon serves.
	ready func(ctx context.Context) error
	// timeout bounds the wait for ready after a start.
	timeout time.Duration
}

// daemonState is <Dir>/run/<name>.json: which process runs the daemon and
// with what spec. The pid alone is in <name>.pid for people and scripts.
type daemonState struct {
	PID int `json:"pid"`
	// Start is the process's start time (field 22 of /proc/<pid>/stat),
	// which tells a recycled pid from ours.
	Start uint64 `json:"start"`
	// Spec is the hash of the program, its arguments, environment and
	// configuration files.
	Spec string   `json:"spec"`
	Args []string `json:"args"`
}

// daemons starts and stops daemons with files under a layout.
type daemons struct {
	l   layout
	log *slog.Logger
}

// spec hashes what the daemon runs: a change restarts it.
func (d *daemon) spec() (string, error) {
	h := sha256.New()
	id, err := programID(d.path)
	if err != nil {
		return "", fmt.Errorf("identify %s program: %w", d.name, err)
	}
	fmt.Fprintf(h, "%s %s\n", d.path, id)
	for _, a := range d.args {
		fmt.Fprintf(h, "arg %q\n", a)
	}
	for _, e := range d.env {
		fmt.Fprintf(h, "env %q\n", e)
	}
	for _, f := range d.files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("read %s configuration: %w", d.name, err)
		}
		fmt.Fprintf(h, "file %s %d\n", f, len(data))
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// programID identifies a program's content: its Go or GNU build ID (go
// build touches an up-to-date binary, so its modification time changes on
// every build while the ID does not), or its inode, size and modification
// time when it has neither.
func programID(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if f, err := elf.Open(path); err == nil {
		defer f.Close()
		for _, note := range []string{".note.go.buildid", ".note.gnu.build-id"} {
			if sec := f.Section(note); sec != nil {
				if data, err := sec.Data(); err == nil {
					return fmt.Sprintf("%s %x", note, data), nil
				}
			}
		}
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("file %d %d %d", st.Ino, fi.Size(), fi.ModTime().UnixNano()), nil
}

// running returns the state of the daemon's process when it is alive.
func (ds daemons) running(name string) (daemonState, bool) {
	var st daemonState
	data, err := os.ReadFile(filepath.Join(ds.l.run(), name+".json"))
	if err != nil || json.Unmarshal(data, &st) != nil || st.PID <= 0 {
		return st, false
	}
	start, state, err := procStat(st.PID)
	return st, err == nil && start == st.Start && state != 'Z'
}

// ensure leaves the daemon running if it runs with the same spec and is
// ready, and (re)starts it otherwise, then waits until it is ready. It
// reports what it did.
func (ds daemons) ensure(ctx context.Context, d *daemon) (reused bool, err error) {
	spec, err := d.spec()
	if err != nil {
		return false, err
	}
	if st, ok := ds.running(d.name); ok {
		if st.Spec == spec {
			probeCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err := d.ready(probeCtx)
			cancel()
			if err == nil {
				return true, nil
			}
			ds.log.Info("running but not ready: restarting", "daemon", d.name, "err", err)
		} else {
			ds.log.Info("spec changed: restarting", "daemon", d.name)
		}
		if err := ds.stop(ctx, d.name, 15*time.Second); err != nil {
			return false, err
		}
	}
	pid, err := ds.start(d, spec)
	if err != nil {
		return false, err
	}
	return false, ds.waitReady(ctx, d, pid)
}

// start runs the daemon detached: a session and process group of its own,
// stdin from /dev/null, stdout and stderr appended to its log.
func (ds daemons) start(d *daemon, spec string) (int, error) {
	for _, dir := range []string{ds.l.logs(), ds.l.run()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return 0, fmt.Errorf("start %s: %w", d.name, err)
		}
	}
	logf, err := os.OpenFile(ds.l.logFile(d.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("start %s: open log: %w", d.name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s sluice-cluster starts %s %s\n", time.Now().UTC().Format(time.RFC3339), d.path, strings.Join(d.args, " "))
	cmd := exec.Command(d.path, d.args...)
	cmd.Env = append(os.Environ(), d.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = ds.l.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", d.name, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it exits while this process lives; it outlives this
	// process otherwise (reparented to init).
	go cmd.Wait() //nolint:errcheck // the exit is seen through /proc and the log
	start, _, err := procStat(pid)
	if err != nil {
		return 0, fmt.Errorf("start %s: %s exited at once; log %s:\n%s", d.name, d.path, ds.l.logFile(d.name), tail(ds.l.logFile(d.name), 20))
	}
	st := daemonState{PID: pid, Start: start, Spec: spec, Args: append([]string{d.path}, d.args...)}
	data, _ := json.MarshalIndent(st, "", "  ")
	if err := pki.WriteFile(filepath.Join(ds.l.run(), d.name+".json"), data, 0o644); err != nil {
		return 0, err
	}
	if err := pki.WriteFile(filepath.Join(ds.l.run(), d.name+".pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return 0, err
	}
	ds.log.Info("started", "daemon", d.name, "pid", pid)
	return pid, nil
}

// waitReady polls d.ready until it succeeds, the daemon exits, or its
// timeout passes; the error names the daemon and ends with its log's tail.
func (ds daemons) waitReady(ctx context.Context, d *daemon, pid int) error {
	timeout := d.timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if _, state, err := procStat(pid); err != nil || state == 'Z' {
			return fmt.Errorf("%s exited while starting (last probe: %v); last lines of %s:\n%s", d.name, last, ds.l.logFile(d.name), tail(ds.l.logFile(d.name), 30))
		}
		probeCtx, probeCancel := context.WithTimeout(ctx, 5*time.Second)
		last = d.ready(probeCtx)
		probeCancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not become ready within %s: %v; last lines of %s:\n%s", d.name, timeout, last, ds.l.logFile(d.name), tail(ds.l.logFile(d.name), 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM to the daemon's process group and SIGKILL after
// grace, and removes its pid files. A daemon not running is stopped.
func (ds daemons) stop(ctx context.Context, name string, grace time.Duration) error {
	st, ok := ds.running(name)
	if ok {
		start := time.Now()
		if err := killWait(ctx, st.PID, st.Start, grace); err != nil {
			return fmt.Errorf("stop %s: %w", name, err)
		}
		ds.log.Info("stopped", "daemon", name, "pid", st.PID, "took", time.Since(start))
	}
	for _, ext := range []string{".json", ".pid"} {
		if err := os.Remove(filepath.Join(ds.l.run(), name+ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stop %s: %w", name, err)
		}
	}
	return nil
}

// killWait sends SIGTERM to pid (and its process group, which a detached
// daemon leads), SIGKILL after grace, and waits until it is gone. start
// guards against a recycled pid.
func killWait(ctx context.Context, pid int, start uint64, grace time.Duration) error {
	gone := func() bool {
		s, state, err := procStat(pid)
		return err != nil || s != start || state == 'Z'
	}
	signal := func(sig syscall.Signal) {
		if gone() {
			return
		}
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid == pid {
			syscall.Kill(-pid, sig)
		}
		syscall.Kill(pid, sig)
	}
	signal(syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	killed := false
	for !gone() {
		if !killed && time.Now().After(deadline) {
			signal(syscall.SIGKILL)
			killed = true
			deadline = time.Now().Add(10 * time.Second)
		} else if killed && time.Now().After(deadline) {
			return fmt.Errorf("process %d survived SIGKILL for 10s", pid)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// procStat returns a process's start time and state from /proc/<pid>/stat.
func procStat(pid int) (start uint64, state byte, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 20 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields))
	}
	start, err = strconv.ParseUint(fields[19], 10, 64) // field 22
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return start, fields[0][0], nil
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	defer f.Close()
	const max = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	data, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i, l := range lines {
		if len(l) > 400 {
			lines[i] = l[:400] + "…"
		}
	}
	return "  " + strings.Join(lines, "\n  ")
}

// DaemonStatus is the state of one of the cluster's daemons.
type DaemonStatus struct {
	// Name is the daemon's name (etcd, kube-apiserver, ..., kubelet,
	// kube-proxy); its log is Log.
	Name, Log string
	// PID is its process when Running.
	PID     int
	Running bool
}

// Status lists the cluster's daemons in start order from their pid files.
func Status(cfg Config) []DaemonStatus {
	l := layout{dir: cfg.dir()}
	ds := daemons{l: l, log: cfg.log()}
	order := stopOrder(clusterNodes())
	var out []DaemonStatus
	for i := len(order) - 1; i >= 0; i-- {
		st, ok := ds.running(order[i])
		s := DaemonStatus{Name: order[i], Log: l.logFile(order[i]), Running: ok}
		if ok {
			s.PID = st.PID
		}
		out = append(out, s)
	}
	return out
}
