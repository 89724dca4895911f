package netns

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// builtTool is one BuildTool result, computed once per test process.
type builtTool struct {
	once sync.Once
	path string
	err  error
}

var (
	tools   sync.Map // package path -> *builtTool
	toolDir = sync.OnceValues(makeToolDir)
)

// BuildTool builds the main package pkg of this module (a path relative to the
// module root, such as "./test/cmd/steerpeer"; the root is found with
// `go env GOMOD`) and returns the path of the binary. Each package is built once
// per test process, also when tests call BuildTool in parallel. The binary lives
// in a directory under /tmp that, like the binary, has mode 0755, so that any uid
// (a test proxy's 2102, say) can run it; directories left by dead test processes
// are removed by later calls. It fails t if the build fails.
func BuildTool(t testing.TB, pkg string) string {
	t.Helper()
	v, _ := tools.LoadOrStore(pkg, new(builtTool))
	bt := v.(*builtTool)
	bt.once.Do(func() { bt.path, bt.err = buildTool(pkg) })
	if bt.err != nil {
		t.Fatalf("netns: %v", bt.err)
	}
	return bt.path
}

func buildTool(pkg string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("build %s: go env GOMOD: %w", pkg, err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("build %s: not inside a Go module", pkg)
	}
	dir, err := toolDir()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	name := strings.Trim(filepath.ToSlash(filepath.Clean(pkg)), "./")
	bin := filepath.Join(dir, strings.ReplaceAll(name, "/", "_"))
	cmd := exec.Command(goBin, "build", "-o", bin, pkg)
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", pkg, err, bytes.TrimSpace(out))
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	return bin, nil
}

// makeToolDir removes the tool directories of dead test processes and creates
// /tmp/sluice-tool-<pid>-*, mode 0755.
func makeToolDir() (string, error) {
	old, _ := filepath.Glob("/tmp/sluice-tool-*")
	for _, d := range old {
		f := strings.SplitN(strings.TrimPrefix(filepath.Base(d), "sluice-tool-"), "-", 2)
		pid, err := strconv.Atoi(f[0])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
	dir, err := os.MkdirTemp("/tmp", fmt.Sprintf("sluice-tool-%d-", os.Getpid()))
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}
