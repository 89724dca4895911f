package container_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// inNamespaces runs f on a thread that joined pid's net and UTS namespaces,
// and returns the thread to its own after (a locked thread that ends its
// goroutine may be the main thread, which Go keeps).
func inNamespaces(t *testing.T, pid int, f func()) {
	t.Helper()
	kinds := []struct {
		name string
		kind int
	}{{"net", unix.CLONE_NEWNET}, {"uts", unix.CLONE_NEWUTS}}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		var restore []int
		err := func() error {
			for _, ns := range kinds {
				own, err := unix.Open("/proc/thread-self/ns/"+ns.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					return err
				}
				restore = append(restore, own)
				fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, ns.name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					return err
				}
				err = unix.Setns(fd, ns.kind)
				unix.Close(fd)
				if err != nil {
					return err
				}
			}
			f()
			return nil
		}()
		for i, fd := range restore {
			if e := unix.Setns(fd, kinds[i].kind); e != nil {
				// Stay locked: the thread ends with the goroutine.
				errc <- errors.Join(err, fmt.Errorf("return to own %s namespace: %w", kinds[i].name, e))
				return
			}
			unix.Close(fd)
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in namespaces of %d: %v", pid, err)
	}
}

func TestSandbox(t *testing.T) {
	tests := []struct {
		name                   string
		spec                   container.SandboxSpec
		newNet, newUTS, newIPC bool
		stop                   syscall.Signal
	}{
		{"own namespaces", container.SandboxSpec{Hostname: "pod-a"}, true, true, true, syscall.SIGTERM},
		{"host network", container.SandboxSpec{HostNetwork: true, Hostname: "ignored"}, false, false, true, syscall.SIGINT},
		{"host IPC", container.SandboxSpec{HostIPC: true, Hostname: "pod-b"}, true, true, false, syscall.SIGTERM},
		{"host network and IPC", container.SandboxSpec{HostNetwork: true, HostIPC: true}, false, false, false, syscall.SIGTERM},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			setup(t)
			hostNet, hostUTS, hostIPC := nsLink(t, 0, "net"), nsLink(t, 0, "uts"), nsLink(t, 0, "ipc")
			placed := 0
			tc.spec.Cgroup = func(pid int) error {
				placed = pid
				// Called before the holder unshares.
				if got := nsLink(t, pid, "net"); got != hostNet {
					t.Errorf("at Cgroup the holder is already in net namespace %s", got)
				}
				return nil
			}
			p := startSandbox(t, tc.spec)
			if placed != p.PID() {
				t.Errorf("Cgroup called with pid %d, want %d", placed, p.PID())
			}
			for _, ns := range []struct {
				name, host string
				isNew      bool
			}{{"net", hostNet, tc.newNet}, {"uts", hostUTS, tc.newUTS}, {"ipc", hostIPC, tc.newIPC}} {
				if got := nsLink(t, p.PID(), ns.name); (got != ns.host) != ns.isNew {
					t.Errorf("%s namespace %s (host %s): new = %v, want %v", ns.name, got, ns.host, got != ns.host, ns.isNew)
				}
			}
			hostName, _ := os.Hostname()
			wantName := hostName
			if tc.newUTS {
				wantName = tc.spec.Hostname
			}
			inNamespaces(t, p.PID(), func() {
				var u unix.Utsname
				if err := unix.Uname(&u); err != nil {
					t.Error(err)
				}
				if got := unix.ByteSliceToString(u.Nodename[:]); got != wantName {
					t.Errorf("hostname %q, want %q", got, wantName)
				}
				lo, err := net.InterfaceByName("lo")
				if err != nil {
					t.Error(err)
				} else if lo.Flags&net.FlagUp == 0 {
					t.Errorf("lo is down: %v", lo.Flags)
				}
			})
			if err := p.Signal(tc.stop); err != nil {
				t.Fatal(err)
			}
			if st := wait(t, p); st.Code != 0 || st.Signal != 0 || st.At.IsZero() {
				t.Errorf("after %v the holder exited with %+v, want code 0", tc.stop, st)
			}
			if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
				t.Errorf("Signal after exit = %v, want os.ErrProcessDone", err)
			}
		})
	}
}

// factsScript prints what the container sees as key=value lines on stdout
// and one line on stderr. $T is the directory of the test's mounts.
const factsScript = `
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "groups=$(id -G)"
while IFS=: read -r k v; do case "$k" in Cap*|NoNewPrivs) echo "$k=$(echo $v)";; esac; done </proc/self/status
echo "hostname=$(cat /proc/sys/kernel/hostname)"
echo "netns=$(readlink /proc/self/ns/net)"
echo "cwd=$(pwd)"
echo "foo=$FOO"
echo "path=$PATH"
echo "home=$HOME"
echo "file=$(cat $T/file)"
echo "dir=$(ls $T/dir | tr '\n' ,)"
echo "viarun=$(cat /run/$SLUICE_TEST_TAG/file)"
echo "oom=$(cat /proc/self/oom_score_adj)"
try() { if (: >>"$1") 2>/tmp/.err; then echo "$2=ok"; else echo "$2=$(sed 's/.*: //' /tmp/.err)"; fi; }
try /rootfile rootwrite
try $T/file rofile
try $T/dir/fromcontainer dirwrite
try /tmp/$SLUICE_TEST_TAG tmpwrite
echo "tmp=$(ls /tmp | tr '\n' ,)"
echo "devnull=$(echo x >/dev/null && echo ok)"
echo "devpts=$(test -c /dev/pts/ptmx && test -L /dev/ptmx && echo ok)"
echo "shm=$(touch /dev/shm/x && echo ok)"
echo "stdout-only"
echo "stderr-line" >&2
`

func TestContainer(t *testing.T) {
	defaultCaps := "00000000a80425fb" // containerd's (and Docker's) default set
	tests := []struct {
		name    string
		sandbox container.SandboxSpec
		spec    container.Spec
		want    map[string]string
	}{{
		name:    "unprivileged user in own namespaces",
		sandbox: container.SandboxSpec{Hostname: "pod-facts"},
		spec: container.Spec{
			UID: 1000, GID: 1001, Groups: []uint32{5, 100},
			Caps:       []string{"CAP_NET_BIND_SERVICE", "kill"},
			NoNewPrivs: true, OOMScoreAdj: 500,
			Env: []string{"FOO=bar"},
			Dir: "/work/dir", // created inside the container only
		},
		want: map[string]string{
			"uid": "1000", "gid": "1001", "groups": "1001 5 100",
			"CapEff": "0000000000000420", "CapPrm": "0000000000000420", "CapInh": "0000000000000420",
			"CapBnd": "0000000000000420", "CapAmb": "0000000000000420", "NoNewPrivs": "1",
			"hostname": "pod-facts", "cwd": "/work/dir", "foo": "bar", "path": container.DefaultPath,
			"oom": "500", "rootwrite": "Permission denied",
		},
	}, {
		name:    "root with read-only root in host network",
		sandbox: container.SandboxSpec{HostNetwork: true},
		spec: container.Spec{
			Caps: container.DefaultCaps(), ReadOnlyRoot: true,
			Env: []string{"FOO=baz", "PATH=/bin:/usr/bin"},
		},
		want: map[string]string{
			"uid": "0", "gid": "0", "groups": "0",
			"CapEff": defaultCaps, "CapPrm": defaultCaps, "CapBnd": defaultCaps, "CapAmb": "0000000000000000",
			"NoNewPrivs": "0", "cwd": "/", "foo": "baz", "path": "/bin:/usr/bin", "home": "/root",
			"oom": "0", "rootwrite": "Read-only file system",
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tag := setup(t)
			// Mounts at a path that does not exist on the host.
			target := "/" + tag
			host := t.TempDir()
			writeFile(t, filepath.Join(host, "file"), "file-content", 0o666)
			writeFile(t, filepath.Join(host, "dir", "a.txt"), "a", 0o644)
			if err := os.Chmod(filepath.Join(host, "dir"), 0o777); err != nil {
				t.Fatal(err)
			}
			sb := startSandbox(t, tc.sandbox)
			stdout, stderr := newOutput(), newOutput()
			s := tc.spec
			s.SandboxPID = sb.PID()
			s.Args = []string{"sh", "-c", factsScript}
			s.Env = append(s.Env, "T="+target)
			s.Mounts = []container.Mount{
				{Source: filepath.Join(host, "file"), Target: target + "/file", ReadOnly: true},
				{Source: filepath.Join(host, "dir"), Target: target + "/dir"},
				// Debian's /var/run is a symlink to /run: the target must
				// resolve in the container (to its /run), not on the host.
				{Source: filepath.Join(host, "file"), Target: "/var/run/" + tag + "/file"},
			}
			// The overlay's options must cope with their separators.
			s.StateDir = filepath.Join(t.TempDir(), "state,with:separators")
			if err := os.Mkdir(s.StateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			s.Stdout, s.Stderr = stdout, stderr
			p := start(t, tag, s)
			if st := wait(t, p); st.Code != 0 {
				t.Errorf("exit %+v, want 0; stderr %q", st, stderr.String())
			}
			got := facts(stdout.String())
			want := map[string]string{
				"netns": nsLink(t, sb.PID(), "net"), "file": "file-content", "dir": "a.txt,", "viarun": "file-content",
				"rofile": "Read-only file system", "dirwrite": "ok", "tmpwrite": "ok", "tmp": tag + ",",
				"devnull": "ok", "devpts": "ok", "shm": "ok",
			}
			for k, v := range tc.want {
				want[k] = v
			}
			if l, _ := os.Readlink("/var/run"); l != "/run" && l != "../run" {
				delete(want, "viarun") // no symlink to resolve on this host
			}
			if tc.sandbox.HostNetwork {
				want["hostname"], _ = os.Hostname()
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			if strings.Contains(stdout.String(), "stderr-line") || stderr.String() != "stderr-line\n" {
				t.Errorf("streams mixed: stdout %q, stderr %q", stdout.String(), stderr.String())
			}
			// Nothing the container did shows on the host but the write
			// through its read-write mount.
			for _, p := range []string{target, "/work/dir", "/rootfile", "/tmp/" + tag, "/run/" + tag, "/var/run/" + tag} {
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s exists on the host (%v)", p, err)
				}
			}
			if _, err := os.Stat(filepath.Join(host, "dir", "fromcontainer")); err != nil {
				t.Errorf("write through the read-write mount: %v", err)
			}
		})
	}
}

// TestDescriptors checks that a container gets stdin, stdout and stderr
// only, though this process has a descriptor without close-on-exec.
func TestDescriptors(t *testing.T) {
	tag := setup(t)
	stray, err := unix.Open("/dev/null", unix.O_RDONLY, 0) // inheritable
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(stray)
	sb := startSandbox(t, container.SandboxSpec{})
	out := newOutput()
	// ls's own directory descriptor is 3.
	p := start(t, tag, container.Spec{SandboxPID: sb.PID(), Args: []string{"ls", "/proc/self/fd"}, Stdout: out, Stderr: out})
	if st := wait(t, p); st.Code != 0 || out.String() != "0\n1\n2\n3\n" {
		t.Errorf("container descriptors %q (exit %+v), want 0 to 3", out.String(), st)
	}
	res, err := container.Exec(context.Background(), container.ExecSpec{PID: sb.PID(), Args: []string{"ls", "/proc/self/fd"}})
	if err != nil || string(res.Stdout) != "0\n1\n2\n3\n" {
		t.Errorf("exec descriptors %q (%v), want 0 to 3", res.Stdout, err)
	}
}

func TestExitAndSignals(t *testing.T) {
	tests := []struct {
		name     string
		script   string
		signal   syscall.Signal // sent once "ready" is printed
		code     int
		sig      syscall.Signal
		inOutput string
	}{
		{name: "exit 0", script: "exit 0", code: 0},
		{name: "exit 3", script: "echo bye; exit 3", code: 3, inOutput: "bye"},
		{name: "SIGKILL", script: "echo ready; exec sleep 1000", signal: syscall.SIGKILL, code: 128 + 9, sig: syscall.SIGKILL},
		{name: "SIGTERM not handled", script: "echo ready; exec sleep 1000", signal: syscall.SIGTERM, code: 128 + 15, sig: syscall.SIGTERM},
		{
			name: "SIGTERM handled",
			// ready once the child is sleep: dash's forked child would
			// lose a TERM that came before its exec.
			script: `trap 'kill $pid; echo got-term; exit 7' TERM; sleep 1000 & pid=$!
				until [ "$(cat /proc/$pid/comm)" = sleep ]; do :; done; echo ready; wait`,
			signal: syscall.SIGTERM, code: 7, inOutput: "got-term",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tag := setup(t)
			sb := startSandbox(t, container.SandboxSpec{})
			out := newOutput()
			p := start(t, tag, container.Spec{
				SandboxPID: sb.PID(), Args: []string{"/bin/sh", "-c", tc.script},
				Caps: container.DefaultCaps(), Stdout: out,
			})
			if tc.signal != 0 {
				out.waitFor(t, p, "ready")
				if err := p.Signal(tc.signal); err != nil {
					t.Fatal(err)
				}
			}
			st := wait(t, p)
			if st.Code != tc.code || st.Signal != tc.sig {
				t.Errorf("exit %+v, want code %d signal %d", st, tc.code, tc.sig)
			}
			if !strings.Contains(out.String(), tc.inOutput) {
				t.Errorf("output %q, want %q in it", out.String(), tc.inOutput)

			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	var gone int // the pid of a process that exited
	if cmd := exec.Command("true"); cmd.Run() == nil {
		gone = cmd.Process.Pid
	}
	tests := []struct {
		name string
		spec func(s *container.Spec, tag string)
		want string
	}{
		{"missing program", func(s *container.Spec, tag string) { s.Args = []string{"/usr/bin/" + tag} },
			`exec "/usr/bin/%s": no such file or directory`},
		{"program not in PATH", func(s *container.Spec, tag string) { s.Args = []string{tag} },
			`exec "%s": executable file not found in $PATH`},
		{"program not in the container's PATH", func(s *container.Spec, tag string) { s.Env = []string{"PATH=/nonexistent"} },
			`exec "true": executable file not found in $PATH`},
		{"unknown capability", func(s *container.Spec, tag string) { s.Caps = []string{"CAP_FLY"} },
			`unknown capability "CAP_FLY"`},
		{"missing mount source", func(s *container.Spec, tag string) {
			s.Mounts = []container.Mount{{Source: "/nonexistent/" + tag, Target: "/x"}}
		}, `mount /nonexistent/%s on /x: bind /nonexistent/%[1]s: no such file or directory`},
		{"relative mount target", func(s *container.Spec, tag string) {
			s.Mounts = []container.Mount{{Source: "/etc", Target: "x"}}
		}, `must be absolute paths`},
		{"file on a directory", func(s *container.Spec, tag string) {
			s.Mounts = []container.Mount{{Source: "/etc/hostname", Target: "/etc"}}
		}, `mount /etc/hostname on /etc: create mount point: open /etc: is a directory`},
		{"sandbox gone", func(s *container.Spec, tag string) { s.SandboxPID = gone },
			fmt.Sprintf("open net namespace of process %d: no such file or directory", gone)},
		{"cgroup fails", func(s *container.Spec, tag string) {
			s.Cgroup = func(pid int) error {
				// Called while the init waits: the program has not run.
				exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
				self, _ := os.Executable()
				return fmt.Errorf("no cgroup for the init: %v", exe == self)
			}
		}, `no cgroup for the init: true`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tag := setup(t)
			s := container.Spec{
				ID: tag, StateDir: t.TempDir(), Args: []string{"true"},
				Env: []string{"SLUICE_TEST_TAG=" + tag}, Stdout: newOutput(), Stderr: newOutput(),
			}
			tc.spec(&s, tag)
			p, err := container.Start(s)
			if err == nil {
				stopAtCleanup(t, p)
				t.Fatal("Start succeeded")
			}
			want := tc.want
			if strings.Contains(want, "%") {
				want = fmt.Sprintf(want, tag)
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q, want %q in it", err, want)
			}
			if p != nil {
				t.Errorf("Start returned a process with its error")
			}
		})
	}
}

func TestExec(t *testing.T) {
	tag := setup(t)
	data := t.TempDir()
	writeFile(t, filepath.Join(data, "in-volume"), "volume", 0o644)
	sb := startSandbox(t, container.SandboxSpec{Hostname: "pod-exec"})
	cgroup := testCgroups(t, tag)
	out := newOutput()
	p := start(t, tag, container.Spec{
		SandboxPID: sb.PID(), Cgroup: cgroup,
		Args:   []string{"sh", "-c", "echo secret >/tmp/only-here; echo ready; exec sleep 1000"},
		Caps:   container.DefaultCaps(),
		Mounts: []container.Mount{{Source: data, Target: "/data"}},
		Stdout: out, OOMScoreAdj: 123,
	})
	out.waitFor(t, p, "ready")

	tests := []struct {
		name   string
		spec   container.ExecSpec
		stdout string
		stderr string
		code   int
	}{
		{name: "file only in the container", spec: container.ExecSpec{Args: []string{"cat", "/tmp/only-here", "/data/in-volume"}}, stdout: "secret\nvolume"},
		{name: "user", spec: container.ExecSpec{Args: []string{"sh", "-c", "echo $(id -u) $(id -g) $(id -G)"}, UID: 1000, GID: 1001, Groups: []uint32{7}}, stdout: "1000 1001 1001 7\n"},
		{name: "capabilities", spec: container.ExecSpec{Args: []string{"grep", "CapEff", "/proc/self/status"}, UID: 1000, Caps: []string{"NET_RAW"}}, stdout: "CapEff:\t0000000000002000\n"},
		{name: "exit code and streams", spec: container.ExecSpec{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 5"}}, stdout: "out\n", stderr: "err\n", code: 5},
		{name: "stdin", spec: container.ExecSpec{Args: []string{"cat"}, Stdin: []byte("hello")}, stdout: "hello"},
		{name: "dir and env", spec: container.ExecSpec{Args: []string{"sh", "-c", "echo $(pwd) $FOO"}, Dir: "/data", Env: []string{"FOO=bar"}}, stdout: "/data bar\n"},
		{name: "namespaces", spec: container.ExecSpec{Args: []string{"sh", "-c", "cat /proc/sys/kernel/hostname /proc/self/oom_score_adj; readlink /proc/self/ns/net"}},
			stdout: "pod-exec\n123\n" + nsLink(t, sb.PID(), "net") + "\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.PID = p.PID()
			tc.spec.Env = append(tc.spec.Env, "SLUICE_TEST_TAG="+tag)
			res, err := container.Exec(context.Background(), tc.spec)
			if err != nil {
				t.Fatalf("Exec: %v", err)
			}
			if string(res.Stdout) != tc.stdout || string(res.Stderr) != tc.stderr || res.ExitCode != tc.code {
				t.Errorf("Exec = %q, %q, %d; want %q, %q, %d", res.Stdout, res.Stderr, res.ExitCode, tc.stdout, tc.stderr, tc.code)
			}
		})
	}

	t.Run("cgroups", func(t *testing.T) {
		want, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.PID()))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(want), tag) {
			t.Fatalf("the container is not in the test's cgroups: %s", want)
		}
		res, err := container.Exec(context.Background(), container.ExecSpec{PID: p.PID(), Args: []string{"cat", "/proc/self/cgroup"}})
		if err != nil || string(res.Stdout) != string(want) {
			t.Errorf("exec in cgroups\n%s(%v), want the container's\n%s", res.Stdout, err, want)
		}
	})
	t.Run("missing program", func(t *testing.T) {
		_, err := container.Exec(context.Background(), container.ExecSpec{PID: p.PID(), Args: []string{"nope-" + tag}})
		if want := fmt.Sprintf(`exec "nope-%s": executable file not found in $PATH`, tag); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Exec error %v, want %q in it", err, want)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		res, err := container.Exec(context.Background(), container.ExecSpec{
			PID: p.PID(), Args: []string{"sh", "-c", "echo started; sleep 1000; echo never"},
			Env: []string{"SLUICE_TEST_TAG=" + tag}, Timeout: 200 * time.Millisecond,
		})
		if !errors.Is(err, container.ErrTimeout) {
			t.Fatalf("Exec error %v, want ErrTimeout", err)
		}
		if res.ExitCode != 128+9 {
			t.Errorf("exit code %d after the timeout, want %d", res.ExitCode, 128+9)
		}
		// The sleep, in the killed process group, is gone too (setup checks).
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := container.Exec(ctx, container.ExecSpec{PID: p.PID(), Args: []string{"true"}}); !errors.Is(err, context.Canceled) {
			t.Errorf("Exec error %v, want context.Canceled", err)
		}
	})
	if _, err := os.Stat("/tmp/only-here"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/tmp/only-here exists on the host")
	}
}

// TestPropagation mounts a shared tmpfs on the host and binds it into a
// container three times, once per propagation mode.
func TestPropagation(t *testing.T) {
	tag := setup(t)
	shared := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", shared, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(shared, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", shared, err)
		}
	})
	if err := unix.Mount("", shared, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"fromhost", "fromcontainer", "fromslave"} {
		if err := os.Mkdir(filepath.Join(shared, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sb := startSandbox(t, container.SandboxSpec{})
	out := newOutput()
	p := start(t, tag, container.Spec{
		SandboxPID: sb.PID(), Args: []string{"sh", "-c", "echo ready; exec sleep 1000"},
		Caps: []string{"ALL"}, Stdout: out,
		Mounts: []container.Mount{
			{Source: shared, Target: "/m/slave", Propagation: container.HostToContainer},
			{Source: shared, Target: "/m/private", Propagation: container.Private},
			{Source: shared, Target: "/m/bidi", Propagation: container.Bidirectional},
		},
	})
	out.waitFor(t, p, "ready")
	run := func(script string) string {
		t.Helper()
		res, err := container.Exec(context.Background(), container.ExecSpec{
			PID: p.PID(), Args: []string{"sh", "-c", script}, Caps: []string{"ALL"},
			Env: []string{"SLUICE_TEST_TAG=" + tag},
		})
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("Exec %q = %+v, %v", script, res, err)
		}
		return string(res.Stdout)
	}

	// Host to container.
	if err := unix.Mount("tmpfs", filepath.Join(shared, "fromhost"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(shared, "fromhost", "marker"), "host", 0o644)
	got := run("cat /m/slave/fromhost/marker; echo; cat /m/bidi/fromhost/marker; echo; ls /m/private/fromhost")
	if got != "host\nhost\n" {
		t.Errorf("host mount seen in the container as %q, want it in slave and bidi, not private", got)
	}

	// Container to host: only through the Bidirectional mount.
	run(`mount -t tmpfs tmpfs /m/bidi/fromcontainer && echo c >/m/bidi/fromcontainer/marker &&
		mount -t tmpfs tmpfs /m/slave/fromslave && echo s >/m/slave/fromslave/marker`)
	if b, err := os.ReadFile(filepath.Join(shared, "fromcontainer", "marker")); err != nil || string(b) != "c\n" {
		t.Errorf("mount from the Bidirectional mount on the host: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(shared, "fromslave", "marker")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount from the HostToContainer mount reached the host (%v)", err)
	}
}
