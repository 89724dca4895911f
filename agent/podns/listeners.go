package podns

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Listener is a listening TCP socket of a process in the namespace,
// duplicated into this process: the caller owns FD and closes it.
type Listener struct {
	FD     int
	Family int // unix.AF_INET or unix.AF_INET6
	PID    int // the process it was taken from
}

const tcpListen = "0A"

// TakeListeners finds the listening TCP sockets on port in the namespace
// and duplicates each into this process with pidfd_getfd (Linux 5.6; needs
// CAP_SYS_PTRACE over the owner). It walks the owners' descriptors through
// pidfd_getfd rather than /proc/PID/fd, which would need CAP_DAC_READ_SEARCH.
func (ns *NS) TakeListeners(port uint16) ([]Listener, error) {
	pids := ns.Pids()
	if len(pids) == 0 {
		return nil, nil
	}
	want := map[uint64]int{}
	for file, fam := range map[string]int{"tcp": unix.AF_INET, "tcp6": unix.AF_INET6} {
		inodes, err := listenInodes(fmt.Sprintf("/proc/%d/net/%s", pids[0], file), port)
		if err != nil {
			return nil, err
		}
		for _, ino := range inodes {
			want[ino] = fam
		}
	}
	var out []Listener
	var errs []error
	for _, pid := range pids {
		if len(want) == 0 {
			break
		}
		got, err := takeSockets(pid, want)
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, got...)
	}
	if len(want) > 0 && len(errs) > 0 {
		return out, fmt.Errorf("take listeners on port %d: %w", port, errors.Join(errs...))
	}
	return out, nil
}

// takeSockets duplicates the descriptors of pid that are sockets with an
// inode in want, removing each one found from want.
func takeSockets(pid int, want map[uint64]int) ([]Listener, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	limit := fdLimit(pid)
	var out []Listener
	for fd := 0; fd < limit && len(want) > 0; fd++ {
		nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
		if err != nil {
			if errors.Is(err, unix.EBADF) {
				continue
			}
			closeAll(out)
			return nil, fmt.Errorf("pidfd_getfd %d/%d: %w", pid, fd, err)
		}
		var st unix.Stat_t
		if unix.Fstat(nfd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
			if fam, ok := want[st.Ino]; ok {
				out = append(out, Listener{FD: nfd, Family: fam, PID: pid})
				delete(want, st.Ino)
				continue
			}
		}
		unix.Close(nfd)
	}
	return out, nil
}

// fdLimit is the size of pid's descriptor table (FDSize in its status).
func fdLimit(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "FDSize:"); ok {
				if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					return n
				}
			}
		}
	}
	return 1024
}

func closeAll(ls []Listener) {
	for _, l := range ls {
		unix.Close(l.FD)
	}
}

// listenInodes reads a /proc/net/tcp{,6} table for LISTEN sockets on port.
func listenInodes(path string, port uint16) ([]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	var out []uint64
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != tcpListen {
			continue
		}
		_, p, ok := strings.Cut(fields[1], ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(p, 16, 16)
		if err != nil || uint16(n) != port {
			continue
		}
		ino, err := strconv.ParseUint(fields[9], 10, 64)
		if err == nil && ino != 0 {
			out = append(out, ino)
		}
	}
	return out, sc.Err()
}
