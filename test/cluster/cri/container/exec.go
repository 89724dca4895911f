package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ExecSpec is a command to run inside a running container (CRI ExecSync:
// exec probes, postStart hooks).
type ExecSpec struct {
	PID        int      // a process of the container: the command joins its mount, net, UTS and IPC namespaces
	Args       []string // argv; Args[0] is looked up in PATH (from Env, else DefaultPath) inside the container
	Env        []string // KEY=value
	Dir        string   // working directory ("/" when empty)
	UID, GID   uint32
	Groups     []uint32
	Caps       []string
	NoNewPrivs bool
	Stdin      []byte
	Timeout    time.Duration // 0: none; on expiry the command (its process group) is killed and ErrTimeout returned
}

// ExecResult is the outcome of a command that ran.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int // 128+signal when killed by a signal
}

// ErrTimeout is returned (wrapped) by Exec when the command ran past its
// timeout.
var ErrTimeout = errors.New("exec timed out")

// maxExecOutput bounds what Exec keeps of each output stream (the kubelet
// caps ExecSync output at 16 MiB too).
const maxExecOutput = 16 << 20

// execSpec is what the exec step gets from Exec.
type execSpec struct {
	PID       int
	Args, Env []string
	Dir       string
	Creds     creds
}

// Exec runs a command inside a running container and waits for it. An
// error means the command could not be run (it names why, e.g. `exec
// "nope": executable file not found in $PATH`), timed out (ErrTimeout) or
// ctx ended (then the result holds what it wrote until it was killed); a
// command that ran and failed is a result with its exit code.
// The command joins PID's cgroups (in every hierarchy mounted in the
// caller's mount namespace) before it runs, like containerd's exec
// processes: it counts against the container's limits and dies with it.
func Exec(ctx context.Context, s ExecSpec) (ExecResult, error) {
	if len(s.Args) == 0 {
		return ExecResult{}, errors.New("exec in container: no command")
	}
	c, err := newCreds(s.UID, s.GID, s.Groups, s.Caps, s.NoNewPrivs)
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in container: %w", err)
	}
	runCtx := ctx
	if s.Timeout > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeout(ctx, s.Timeout)
		defer cancel()
	}
	stdout := &limitedBuffer{max: maxExecOutput}
	stderr := &limitedBuffer{max: maxExecOutput}
	cmd, err := launch(child{
		mode:   modeExec,
		spec:   execSpec{PID: s.PID, Args: s.Args, Env: s.Env, Dir: s.Dir, Creds: c},
		stdin:  bytes.NewReader(s.Stdin),
		stdout: stdout,
		stderr: stderr,
		ctx:    runCtx,
	})
	var res ExecResult
	if err == nil {
		_ = cmd.Wait() // the exit status is all there is to know
		res = ExecResult{
			Stdout:   stdout.Bytes(),
			Stderr:   stderr.Bytes(),
			ExitCode: exitStatus(cmd.ProcessState).Code,
		}
	}
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("exec %q in container: %w", s.Args[0], ctx.Err())
	case runCtx.Err() != nil:
		return res, fmt.Errorf("exec %q in container: after %v: %w", s.Args[0], s.Timeout, ErrTimeout)
	case err != nil:
		return ExecResult{}, fmt.Errorf("exec in container: %w", err)
	}
	return res, nil
}

// runExec is the exec step: it joins the container's namespaces on this
// thread and execs the command.
func runExec(s execSpec) error {
	// setns to a mount namespace fails (EINVAL) while the thread shares its
	// fs_struct (root, cwd) with the other threads of this process.
	if err := unix.Unshare(unix.CLONE_FS); err != nil {
		return fmt.Errorf("unshare fs: %w", err)
	}
	nss, err := openNamespaces(s.PID, "ipc", "uts", "net", "mnt")
	if err != nil {
		return err
	}
	if err := joinCgroups(s.PID); err != nil {
		return err
	}
	// The container's oom_score_adj, so that the kernel picks the same way.
	if adj, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", s.PID)); err == nil {
		if _, err := strconv.Atoi(strings.TrimSpace(string(adj))); err == nil {
			_ = os.WriteFile("/proc/self/oom_score_adj", adj, 0)
		}
	}
	// Joining the mount namespace moves root and cwd to the container's.
	if err := setns(nss); err != nil {
		return err
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("change to working directory %s: %w", dir, err)
	}
	return execProgram(s.Args, programEnv(s.Env, s.Creds.UID), s.Creds)
}

// joinCgroups moves this process into pid's cgroup in every cgroup
// hierarchy mounted in this mount namespace (v1 controllers, named v1
// hierarchies, v2).
func joinCgroups(pid int) error {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return fmt.Errorf("read cgroups of process %d: %w", pid, err)
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return err
	}
	self := []byte(strconv.Itoa(os.Getpid()))
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		// hierarchy-id:controllers:path; v2 is "0::path".
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, m := range mounts {
			if !m.serves(parts[1]) {
				continue
			}
			rel, ok := strings.CutPrefix(parts[2], m.root)
			if !ok || (rel != "" && rel[0] != '/') {
				continue // not visible through this mount
			}
			procs := filepath.Join(m.point, rel, "cgroup.procs")
			if err := os.WriteFile(procs, self, 0); err != nil {
				return fmt.Errorf("join cgroup of process %d: %w", pid, err)
			}
			break
		}
	}
	return nil
}

// cgroupMount is a mounted cgroup hierarchy.
type cgroupMount struct {
	point, root string
	v2          bool
	options     []string // super options: controllers, name=...
}

// serves reports whether the mount is the hierarchy of a /proc/<pid>/cgroup
// line's controllers field ("" for v2).
func (m cgroupMount) serves(controllers string) bool {
	if controllers == "" {
		return m.v2
	}
	if m.v2 {
		return false
	}
	for _, c := range strings.Split(controllers, ",") {
		if !slices.Contains(m.options, c) {
			return false
		}
	}
	return true
}

// cgroupMounts lists the cgroup mounts of this mount namespace.
func cgroupMounts() ([]cgroupMount, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var out []cgroupMount
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root point options [optional...] - fstype source super-options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || (g[0] != "cgroup" && g[0] != "cgroup2") {
			continue
		}
		root := strings.TrimSuffix(unescapeMount(f[3]), "/")
		out = append(out, cgroupMount{
			point: unescapeMount(f[4]), root: root,
			v2: g[0] == "cgroup2", options: strings.Split(g[2], ","),
		})
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// limitedBuffer keeps the first max bytes written to it and drops the rest.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
