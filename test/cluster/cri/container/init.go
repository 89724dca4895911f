package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

func init() {
	// A re-executed child keeps its main goroutine on the main thread: the
	// namespaces a sandbox holder unshares must be its main thread's, which
	// /proc/<pid>/ns shows. (An init function's LockOSThread makes main run
	// on the startup thread.)
	if os.Getenv(envMode) != "" {
		runtime.LockOSThread()
	}
}

// Init runs the init, sandbox or exec step and never returns when this
// process was started as one by this package; otherwise it returns at once.
// Call it first thing in main, and in TestMain of tests that use the package.
func Init() {
	mode := os.Getenv(envMode)
	if mode == "" {
		return
	}
	runtime.LockOSThread()
	status := os.NewFile(statusFD, "status")
	// No descriptor reaches the program but 0, 1 and 2: not the spec and
	// status pipes, nor what the runtime inherited without close-on-exec.
	const closeRangeCloexec = 1 << 2 // CLOSE_RANGE_CLOEXEC, linux/close_range.h
	if err := unix.CloseRange(3, math.MaxUint32, closeRangeCloexec); err != nil {
		for fd := 3; fd < 1024; fd++ { // kernels before 5.11
			unix.CloseOnExec(fd)
		}
	}
	err := runChild(mode, status)
	if err == nil {
		err = errors.New("child step returned without exec")
	}
	_, _ = status.WriteString(err.Error())
	os.Exit(1)
}

// runChild runs a child step; it returns only on error (or, for the sandbox
// holder, not at all).
func runChild(mode string, status *os.File) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s step panicked: %v", mode, r)
		}
	}()
	// The program gets the usual umask, not the runtime's.
	unix.Umask(0o022)
	var (
		spec any
		run  func() error
	)
	switch mode {
	case modeInit:
		var s initSpec
		spec, run = &s, func() error { return runInit(s) }
	case modeSandbox:
		var s sandboxSpec
		spec, run = &s, func() error { return runSandbox(s, status) }
	case modeExec:
		var s execSpec
		spec, run = &s, func() error { return runExec(s) }
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	f := os.NewFile(specFD, "spec")
	if err := json.NewDecoder(f).Decode(spec); err != nil {
		return fmt.Errorf("read %s spec: %w", mode, err)
	}
	f.Close()
	return run()
}

// initSpec is what the init step gets from Start.
type initSpec struct {
	StateDir     string
	SandboxPID   int
	Args, Env    []string
	Dir          string
	Creds        creds
	ReadOnlyRoot bool
	Mounts       []Mount
	OOMScoreAdj  int
}

// devices are the host device nodes bind-mounted into a container's /dev.
func devices() []string { return []string{"null", "zero", "full", "random", "urandom", "tty"} }

// tree is a detached copy of a host mount tree (open_tree OPEN_TREE_CLONE)
// to be attached in the container.
type tree struct {
	fd    int
	isDir bool
}

// cloneTree copies the mount tree at source (recursively), detached.
func cloneTree(source string) (tree, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return tree{}, fmt.Errorf("bind %s: %w", source, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return tree{}, fmt.Errorf("stat %s: %w", source, err)
	}
	return tree{fd: fd, isDir: st.Mode&unix.S_IFMT == unix.S_IFDIR}, nil
}

// attach mounts t on target (in the calling thread's root), creating the
// target as a file or directory like the tree's root, and sets its
// propagation recursively.
func (t tree) attach(target string, prop Propagation) error {
	if t.isDir {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("create mount point: %w", err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return fmt.Errorf("create mount point: %w", err)
		}
		f, err := os.OpenFile(target, os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("create mount point: %w", err)
		}
		f.Close()
	}
	if err := unix.MoveMount(t.fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach mount: %w", err)
	}
	var p uint64
	switch prop {
	case Private:
		p = unix.MS_PRIVATE
	case HostToContainer:
		p = unix.MS_SLAVE
	case Bidirectional:
		p = unix.MS_SHARED
	default:
		return fmt.Errorf("set propagation: unknown propagation %d", prop)
	}
	return t.setattr(unix.MountAttr{Propagation: p}, unix.AT_RECURSIVE)
}

// setattr changes the attributes of the tree's mount (flags 0) or of all
// mounts in it (unix.AT_RECURSIVE).
func (t tree) setattr(attr unix.MountAttr, flags uint) error {
	if err := unix.MountSetattr(t.fd, "", unix.AT_EMPTY_PATH|flags, &attr); err != nil {
		return fmt.Errorf("set mount attributes: %w", err)
	}
	return nil
}

// runInit sets up the container in this process and execs the program. It
// works on the locked thread only: the mount namespace and fs it unshares,
// and the namespaces it joins, are this thread's, and exec makes them the
// program's.
func runInit(s initSpec) error {
	// The sandbox's namespaces, opened while the host's /proc is here.
	var joins []nsFile
	if s.SandboxPID != 0 {
		var err error
		if joins, err = openNamespaces(s.SandboxPID, "net", "uts", "ipc"); err != nil {
			return err
		}
	}
	// Go's SysProcAttr.Unshareflags would make every mount private (it
	// does mount --make-rprivate /): unshare here, then make / a slave, so
	// that host mounts still propagate in and nothing propagates out.
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	// Copies of the mount trees the container gets, taken before / turns
	// slave: a copy of a shared mount is then its peer, which a
	// Bidirectional mount needs (the others are made private or slave when
	// attached).
	sys, err := cloneTree("/sys")
	if err != nil {
		return err
	}
	devs := make([]tree, len(devices()))
	for i, d := range devices() {
		if devs[i], err = cloneTree("/dev/" + d); err != nil {
			return err
		}
	}
	mounts := make([]tree, len(s.Mounts))
	for i, m := range s.Mounts {
		if mounts[i], err = cloneTree(m.Source); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.Source, m.Target, err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / a slave mount: %w", err)
	}
	root, err := makeRoot(s.StateDir)
	if err != nil {
		return err
	}
	if err := pivotRoot(root); err != nil {
		return err
	}
	if err := builtinMounts(sys, devs); err != nil {
		return err
	}
	for i, m := range s.Mounts {
		if err := mounts[i].attach(filepath.Clean(m.Target), m.Propagation); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.Source, m.Target, err)
		}
	}
	// Read-only after all are attached, so that mount points can be made
	// inside a read-only mount.
	for i, m := range s.Mounts {
		if !m.ReadOnly {
			continue
		}
		if err := mounts[i].setattr(unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}, 0); err != nil {
			return fmt.Errorf("make mount %s read-only: %w", m.Target, err)
		}
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create working directory: %w", err)
	}
	if s.ReadOnlyRoot {
		if err := unix.MountSetattr(unix.AT_FDCWD, "/", 0, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("make root read-only: %w", err)
		}
	}
	// Lowering it below what the process inherited takes CAP_SYS_RESOURCE,
	// which the runtime may lack: then the inherited value stays (Start
	// logs it).
	err = os.WriteFile("/proc/self/oom_score_adj", []byte(strconv.Itoa(s.OOMScoreAdj)), 0)
	if err != nil && !errors.Is(err, unix.EACCES) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("set oom_score_adj: %w", err)
	}
	if err := setns(joins); err != nil {
		return err
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("change to working directory %s: %w", dir, err)
	}
	return execProgram(s.Args, programEnv(s.Env, s.Creds.UID), s.Creds)
}

// makeRoot mounts the container's root file system and returns its path:
// a tmpfs on stateDir/rootfs-scaffold holds the upper and work directories
// of an overlay whose lower layer is the host's root file system, so that
// mount points and files the container creates never touch the host.
func makeRoot(stateDir string) (string, error) {
	scaffold := filepath.Join(stateDir, "rootfs-scaffold")
	if err := os.MkdirAll(scaffold, 0o700); err != nil {
		return "", fmt.Errorf("create root scaffold: %w", err)
	}
	if err := unix.Mount("tmpfs", scaffold, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return "", fmt.Errorf("mount root scaffold: %w", err)
	}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(scaffold, d), 0o755); err != nil {
			return "", fmt.Errorf("create root scaffold: %w", err)
		}
	}
	// Relative paths in the options: the state directory's path may hold
	// the option separators ',' and ':'.
	if err := unix.Chdir(scaffold); err != nil {
		return "", fmt.Errorf("enter root scaffold: %w", err)
	}
	if err := unix.Mount("overlay", "root", "overlay", 0, "lowerdir=/,upperdir=upper,workdir=work"); err != nil {
		return "", fmt.Errorf("mount root overlay (lowerdir=/): %w", err)
	}
	return filepath.Join(scaffold, "root"), nil
}

// pivotRoot makes root the root of the mount namespace and detaches the
// old one (the host's, a slave: the unmount does not propagate).
func pivotRoot(root string) error {
	oldRoot, err := unix.Open("/", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open old root: %w", err)
	}
	defer unix.Close(oldRoot)
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("enter new root: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	// The old root now sits on top of the new one: leave through it.
	if err := unix.Fchdir(oldRoot); err != nil {
		return fmt.Errorf("enter old root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("enter new root: %w", err)
	}
	return nil
}

// builtinMounts mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and
// /tmp in the (pivoted) root.
func builtinMounts(sys tree, devs []tree) error {
	type fsMount struct {
		target, fstype string
		flags          uintptr
		data           string
	}
	mountFS := func(m fsMount) error {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("create mount point: %w", err)
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
		return nil
	}
	const nosuid, nodev, noexec = unix.MS_NOSUID, unix.MS_NODEV, unix.MS_NOEXEC
	if err := mountFS(fsMount{"/proc", "proc", nosuid | nodev | noexec, ""}); err != nil {
		return err
	}
	if err := sys.attach("/sys", HostToContainer); err != nil {
		return fmt.Errorf("mount /sys: %w", err)
	}
	if err := mountFS(fsMount{"/dev", "tmpfs", nosuid | unix.MS_STRICTATIME, "mode=755,size=65536k"}); err != nil {
		return err
	}
	for i, d := range devices() {
		if err := devs[i].attach("/dev/"+d, Private); err != nil {
			return fmt.Errorf("mount /dev/%s: %w", d, err)
		}
	}
	for _, m := range []fsMount{
		{"/dev/pts", "devpts", nosuid | noexec, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
		{"/dev/shm", "tmpfs", nosuid | nodev | noexec, "mode=1777,size=65536k"},
		{"/run", "tmpfs", nosuid | nodev, "mode=755"},
		{"/tmp", "tmpfs", nosuid | nodev, "mode=1777"},
	} {
		if err := mountFS(m); err != nil {
			return err
		}
	}
	for link, to := range map[string]string{
		"/dev/ptmx":   "pts/ptmx",
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(to, link); err != nil {
			return fmt.Errorf("create %s: %w", link, err)
		}
	}
	return nil
}

// nsFile is an open namespace file of a process.
type nsFile struct {
	name string
	fd   int
	kind int // CLONE_NEW*
}

// openNamespaces opens /proc/<pid>/ns/<name> for each name.
func openNamespaces(pid int, names ...string) ([]nsFile, error) {
	kinds := map[string]int{
		"net": unix.CLONE_NEWNET, "uts": unix.CLONE_NEWUTS,
		"ipc": unix.CLONE_NEWIPC, "mnt": unix.CLONE_NEWNS,
	}
	var out []nsFile
	for _, n := range names {
		p := fmt.Sprintf("/proc/%d/ns/%s", pid, n)
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s namespace of process %d: %w", n, pid, err)
		}
		out = append(out, nsFile{name: n, fd: fd, kind: kinds[n]})
	}
	return out, nil
}

// setns makes the calling thread join the namespaces, in order.
func setns(nss []nsFile) error {
	for _, ns := range nss {
		if err := unix.Setns(ns.fd, ns.kind); err != nil {
			return fmt.Errorf("join %s namespace: %w", ns.name, err)
		}
		unix.Close(ns.fd)
	}
	return nil
}
