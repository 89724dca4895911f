package container

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// capNames returns the capability names by number (linux/capability.h).
func capNames() []string {
	return []string{
		"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL",
		"SETGID", "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE",
		"NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
		"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
		"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME",
		"SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
		"SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
		"BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
	}
}

// capMask returns the bit mask of the named capabilities ("CAP_X" or "X",
// any case) and whether "ALL" is among them.
func capMask(caps []string) (mask uint64, all bool, err error) {
	names := capNames()
	for _, c := range caps {
		n := strings.TrimPrefix(strings.ToUpper(c), "CAP_")
		if n == "ALL" {
			all = true
			continue
		}
		i := indexOf(names, n)
		if i < 0 {
			return 0, false, fmt.Errorf("parse capabilities: unknown capability %q", c)
		}
		mask |= 1 << i
	}
	return mask, all, nil
}

// capList names the capabilities of mask.
func capList(mask uint64) string {
	var out []string
	for i, n := range capNames() {
		if mask&(1<<i) != 0 {
			out = append(out, "CAP_"+n)
			mask &^= 1 << i
		}
	}
	for i := range 64 {
		if mask&(1<<i) != 0 {
			out = append(out, strconv.Itoa(i))
		}
	}
	return strings.Join(out, ",")
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// creds are the credentials and capabilities a program is exec'ed with.
type creds struct {
	UID, GID   uint32
	Groups     []uint32
	Caps       uint64 // bit mask
	AllCaps    bool   // Caps is every capability this process has
	NoNewPrivs bool
}

func newCreds(uid, gid uint32, groups []uint32, caps []string, noNewPrivs bool) (creds, error) {
	mask, all, err := capMask(caps)
	if err != nil {
		return creds{}, err
	}
	return creds{UID: uid, GID: gid, Groups: groups, Caps: mask, AllCaps: all, NoNewPrivs: noNewPrivs}, nil
}

// apply sets the calling thread's credentials and capabilities: it must
// run on a locked OS thread right before exec, which makes them the
// program's (the other threads of this Go process keep theirs and die with
// the exec). The raw syscalls matter: Go's syscall.Setuid and friends
// change every thread.
func (c creds) apply() error {
	lastCap, err := lastCap()
	if err != nil {
		return err
	}
	have, err := permittedCaps()
	if err != nil {
		return err
	}
	if c.AllCaps {
		c.Caps = have
	}
	if missing := c.Caps &^ have; missing != 0 {
		return fmt.Errorf("set capabilities: the runtime does not have %s itself", capList(missing))
	}
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set keepcaps: %w", err)
	}
	for i := 0; i <= lastCap; i++ {
		if c.Caps&(1<<i) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(i), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d from the bounding set: %w", i, err)
		}
	}
	var groups unsafe.Pointer
	if len(c.Groups) > 0 {
		groups = unsafe.Pointer(&c.Groups[0])
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(c.Groups)), uintptr(groups), 0); e != 0 {
		return fmt.Errorf("setgroups %v: %w", c.Groups, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(c.GID), uintptr(c.GID), uintptr(c.GID)); e != 0 {
		return fmt.Errorf("setgid %d: %w", c.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(c.UID), uintptr(c.UID), uintptr(c.UID)); e != 0 {
		return fmt.Errorf("setuid %d: %w", c.UID, e)
	}
	lo, hi := uint32(c.Caps), uint32(c.Caps>>32)
	data := [2]unix.CapUserData{
		{Effective: lo, Permitted: lo, Inheritable: lo},
		{Effective: hi, Permitted: hi, Inheritable: hi},
	}
	if err := unix.Capset(&unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}, &data[0]); err != nil {
		return fmt.Errorf("set capabilities %#x: %w", c.Caps, err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if c.UID != 0 {
		// Without ambient capabilities a non-root program loses them all at
		// exec (root gets its permitted set from the bounding set).
		for i := 0; i <= lastCap; i++ {
			if c.Caps&(1<<i) == 0 {
				continue
			}
			if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(i), 0, 0); err != nil {
				return fmt.Errorf("raise ambient capability %d: %w", i, err)
			}
		}
	}
	if c.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("set no_new_privs: %w", err)
		}
	}
	return nil
}

// permittedCaps returns the calling thread's permitted capabilities.
func permittedCaps() (uint64, error) {
	var data [2]unix.CapUserData
	if err := unix.Capget(&unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}, &data[0]); err != nil {
		return 0, fmt.Errorf("get capabilities: %w", err)
	}
	return uint64(data[1].Permitted)<<32 | uint64(data[0].Permitted), nil
}

// lastCap returns the highest capability number the kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read last capability: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse last capability: %w", err)
	}
	return min(n, 63), nil
}

// programEnv returns env with PATH and HOME set when missing, as the
// program sees them: call it inside the container's root.
func programEnv(env []string, uid uint32) []string {
	out := append([]string(nil), env...)
	if _, ok := lookupEnv(out, "PATH"); !ok {
		out = append(out, "PATH="+DefaultPath)
	}
	if _, ok := lookupEnv(out, "HOME"); !ok {
		out = append(out, "HOME="+homeOf(uid))
	}
	return out
}

func lookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// homeOf returns uid's home directory from /etc/passwd, or "/".
func homeOf(uid uint32) string {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return "/"
	}
	defer f.Close()
	want := strconv.FormatUint(uint64(uid), 10)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 6 && fields[2] == want && fields[5] != "" {
			return fields[5]
		}
	}
	return "/"
}

// lookPath finds the program file for argv0 in the PATH of env, in the
// calling thread's root.
func lookPath(argv0 string, env []string) (string, error) {
	if strings.Contains(argv0, "/") {
		return argv0, nil
	}
	pathEnv, _ := lookupEnv(env, "PATH")
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + argv0
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec %q: executable file not found in $PATH", argv0)
}

// execProgram replaces this process with the program, run with creds: it
// must run on the locked OS thread that is set up for the program.
func execProgram(args, env []string, c creds) error {
	file, err := lookPath(args[0], env)
	if err != nil {
		return err
	}
	if err := c.apply(); err != nil {
		return err
	}
	if err := unix.Exec(file, args, env); err != nil {
		return fmt.Errorf("exec %q: %w", file, err)
	}
	return nil
}
