package benchkit

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Host describes the machine: CPU count and model, kernel.
func Host() string {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), kernel %s", runtime.NumCPU(), model, unix.ByteSliceToString(uts.Release[:]))
}

// LoadAvg returns the first three fields of /proc/loadavg.
func LoadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// GitHead returns the short commit of HEAD, noting uncommitted changes
// under paths (repository-relative, e.g. "proxy").
func GitHead(paths ...string) string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown commit"
	}
	s := strings.TrimSpace(string(out))
	args := []string{"status", "--porcelain", "--"}
	for _, p := range paths {
		args = append(args, ":/"+p)
	}
	if st, _ := exec.Command("git", args...).Output(); len(st) > 0 {
		s += ", with uncommitted changes to them"
	}
	return s
}
