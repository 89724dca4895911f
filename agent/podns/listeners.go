package podns

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Listener is a listening TCP socket of a process in the namespace.
type Listener struct {
	PID    int
	FD     int
	Family int // unix.AF_INET or unix.AF_INET6
	Inode  uint64
}

const tcpListen = "0A"

// Listeners finds the listening TCP sockets on port in the namespace and a
// process file descriptor for each.
func (ns *NS) Listeners(port uint16) ([]Listener, error) {
	pids := ns.Pids()
	if len(pids) == 0 {
		return nil, nil
	}
	families := map[uint64]int{}
	for file, fam := range map[string]int{"tcp": unix.AF_INET, "tcp6": unix.AF_INET6} {
		inodes, err := listenInodes(fmt.Sprintf("/proc/%d/net/%s", pids[0], file), port)
		if err != nil {
			return nil, err
		}
		for _, ino := range inodes {
			families[ino] = fam
		}
	}
	if len(families) == 0 {
		return nil, nil
	}
	var out []Listener
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, e := range fds {
			target, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), e.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			fam, ok := families[ino]
			if !ok {
				continue
			}
			fd, _ := strconv.Atoi(e.Name())
			out = append(out, Listener{PID: pid, FD: fd, Family: fam, Inode: ino})
			delete(families, ino)
		}
	}
	return out, nil
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

// TakeFD duplicates file descriptor fd of process pid into this process
// (pidfd_getfd, Linux 5.6; needs CAP_SYS_PTRACE over the process).
func TakeFD(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd %d/%d: %w", pid, fd, err)
	}
	return nfd, nil
}
