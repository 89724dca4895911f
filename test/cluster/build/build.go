// Package build builds the local cluster's programs from their Go modules
// and caches them per component and version: the Kubernetes components from
// k8s.io/kubernetes (required by this module, with replace directives for
// its staging modules), CoreDNS and the CNI plugins with `go install
// module@version` (their own go.mod, no replace directives), and this
// module's own programs (the process runtime, the echo server).
//
// The cache lives outside the repository (DefaultDir) so that a fresh clone
// on a machine that built before starts warm. Nothing is fetched from outside
// the Go module proxy.
package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Pinned versions. KubernetesVersion must match the k8s.io/kubernetes
// requirement and the staging replace directives in go.mod.
const (
	KubernetesVersion = "v1.34.4"
	CoreDNSVersion    = "v1.13.2"
	CNIPluginsVersion = "v1.9.1"
	// PrometheusVersion is github.com/prometheus/prometheus's module
	// version (v0.316.0 is Prometheus 3.16.0). Debian 12's prometheus is
	// built without Kubernetes service discovery, which the Sluice chart's
	// scrape configuration uses, as every Kubernetes install does.
	PrometheusVersion = "v0.316.0"
)

// KubernetesCommands are the Kubernetes programs the cluster runs, each
// built from k8s.io/kubernetes/cmd/<name>.
var KubernetesCommands = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "kubectl"}

// CNIPlugins are the CNI plugins the runtime's network uses, each built from
// github.com/containernetworking/plugins/plugins/<kind>/<name>.
var CNIPlugins = map[string]string{"bridge": "main", "loopback": "main", "host-local": "ipam", "portmap": "meta"}

// DefaultDir is the cache directory: $SLUICE_CLUSTER_CACHE, or
// /var/cache/sluice-cluster.
func DefaultDir() string {
	if d := os.Getenv("SLUICE_CLUSTER_CACHE"); d != "" {
		return d
	}
	return "/var/cache/sluice-cluster"
}

// Cache builds programs into Dir, one subdirectory per component and
// version, and reuses what an earlier build left there.
type Cache struct {
	// Dir is the cache directory (DefaultDir when empty).
	Dir string
	// ModuleDir is the directory of this module's go.mod; the current
	// directory's module when empty (go run and go test run there).
	ModuleDir string
	// Out receives one line per component built, with the time it took
	// (os.Stderr when nil).
	Out io.Writer
	// Log receives details; slog.Default when nil.
	Log *slog.Logger
}

// Binaries are the absolute paths of every program the cluster runs.
type Binaries struct {
	// Kubernetes maps each of KubernetesCommands to its path.
	Kubernetes map[string]string
	// CoreDNS is the coredns program.
	CoreDNS string
	// CNIDir is the directory holding the CNI plugins.
	CNIDir string
	// Prometheus is the prometheus program (promtool is beside it).
	Prometheus string
	// Own maps the base name of each of this module's commands to its path.
	Own map[string]string
}

// All builds (or finds in the cache) everything the cluster runs, and this
// module's commands under ownPkgs (import paths such as
// "github.com/sluice-mesh/sluice/test/cluster/cmd/procri").
func (c Cache) All(ctx context.Context, ownPkgs ...string) (Binaries, error) {
	var b Binaries
	var err error
	if b.Kubernetes, err = c.Kubernetes(ctx); err != nil {
		return b, err
	}
	if b.CoreDNS, err = c.CoreDNS(ctx); err != nil {
		return b, err
	}
	if b.CNIDir, err = c.CNIPlugins(ctx); err != nil {
		return b, err
	}
	if b.Prometheus, err = c.Prometheus(ctx); err != nil {
		return b, err
	}
	if b.Own, err = c.Own(ctx, ownPkgs...); err != nil {
		return b, err
	}
	return b, nil
}

// Kubernetes builds the Kubernetes components at KubernetesVersion, with the
// version stamped as the release build does (kubectl version, the node's
// kubeletVersion and /version report it).
func (c Cache) Kubernetes(ctx context.Context) (map[string]string, error) {
	dir, err := c.cached(ctx, "kubernetes-"+KubernetesVersion, KubernetesCommands, func(ctx context.Context, tmp string) error {
		if err := c.checkModule(ctx); err != nil {
			return err
		}
		args := []string{"build", "-trimpath", "-ldflags", kubeLDFlags(), "-o", tmp + "/"}
		for _, name := range KubernetesCommands {
			args = append(args, "k8s.io/kubernetes/cmd/"+name)
		}
		return c.goCmd(ctx, nil, args...)
	})
	if err != nil {
		return nil, err
	}
	paths := make(map[string]string, len(KubernetesCommands))
	for _, name := range KubernetesCommands {
		paths[name] = filepath.Join(dir, name)
	}
	return paths, nil
}

// CoreDNS builds coredns at CoreDNSVersion from its own module.
func (c Cache) CoreDNS(ctx context.Context) (string, error) {
	dir, err := c.cached(ctx, "coredns-"+CoreDNSVersion, []string{"coredns"}, func(ctx context.Context, tmp string) error {
		return c.goCmd(ctx, []string{"GOBIN=" + tmp}, "install", "-trimpath", "github.com/coredns/coredns@"+CoreDNSVersion)
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "coredns"), nil
}

// Prometheus builds prometheus and promtool at PrometheusVersion from
// their module, with the service discoveries a cluster needs (Kubernetes,
// file, HTTP and static; Prometheus' build tags leave out the clouds'),
// and returns prometheus's path.
func (c Cache) Prometheus(ctx context.Context) (string, error) {
	dir, err := c.cached(ctx, "prometheus-"+PrometheusVersion+"-k8s", []string{"prometheus", "promtool"}, func(ctx context.Context, tmp string) error {
		return c.goCmd(ctx, []string{"GOBIN=" + tmp}, "install", "-trimpath", "-tags", "remove_all_sd,enable_kubernetes_sd",
			"github.com/prometheus/prometheus/cmd/prometheus@"+PrometheusVersion,
			"github.com/prometheus/prometheus/cmd/promtool@"+PrometheusVersion)
	})
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "prometheus"), nil
}

// CNIPlugins builds the CNI plugins at CNIPluginsVersion from their own
// module and returns the directory that holds them.
func (c Cache) CNIPlugins(ctx context.Context) (string, error) {
	names := make([]string, 0, len(CNIPlugins))
	args := []string{"install", "-trimpath"}
	for name, kind := range CNIPlugins {
		names = append(names, name)
		args = append(args, fmt.Sprintf("github.com/containernetworking/plugins/plugins/%s/%s@%s", kind, name, CNIPluginsVersion))
	}
	return c.cached(ctx, "cni-plugins-"+CNIPluginsVersion, names, func(ctx context.Context, tmp string) error {
		return c.goCmd(ctx, []string{"GOBIN=" + tmp}, args...)
	})
}

// Own builds this module's commands (import paths) into the cache's own/
// directory every time: Go's build cache makes an unchanged program a
// link step, and a changed one is never run stale.
func (c Cache) Own(ctx context.Context, pkgs ...string) (map[string]string, error) {
	paths := make(map[string]string, len(pkgs))
	if len(pkgs) == 0 {
		return paths, nil
	}
	dir := filepath.Join(c.dir(), "own")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	unlock, err := c.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.checkModule(ctx); err != nil {
		return nil, err
	}
	if err := c.goCmd(ctx, nil, append([]string{"build", "-trimpath", "-o", dir + "/"}, pkgs...)...); err != nil {
		return nil, err
	}
	for _, p := range pkgs {
		paths[filepath.Base(p)] = filepath.Join(dir, filepath.Base(p))
	}
	return paths, nil
}

// cached returns Dir/<name>, building it with build into a temporary
// directory first when it does not hold every one of files. The complete
// directory is renamed into place, so an interrupted build leaves nothing
// that looks complete.
func (c Cache) cached(ctx context.Context, name string, files []string, build func(ctx context.Context, tmp string) error) (string, error) {
	dir := filepath.Join(c.dir(), name)
	if complete(dir, files) {
		return dir, nil
	}
	unlock, err := c.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	if complete(dir, files) { // built by another process while we waited
		return dir, nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("clear %s: %w", tmp, err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", tmp, err)
	}
	start := time.Now()
	if err := build(ctx, tmp); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("build %s: %w", name, err)
	}
	if !complete(tmp, files) {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("build %s: not every one of %s was produced", name, strings.Join(files, ", "))
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("replace %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("move %s into place: %w", name, err)
	}
	took := time.Since(start).Round(time.Second)
	fmt.Fprintf(c.out(), "built %s in %s (cached in %s)\n", name, took, dir)
	c.log().Info("built", "name", name, "took", took, "dir", dir)
	return dir, nil
}

func complete(dir string, files []string) bool {
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// lock takes an exclusive lock on the cache directory, so two test
// binaries running at once do not build the same thing twice.
func (c Cache) lock() (func(), error) {
	if err := os.MkdirAll(c.dir(), 0o755); err != nil {
		return nil, fmt.Errorf("create cache %s: %w", c.dir(), err)
	}
	f, err := os.OpenFile(filepath.Join(c.dir(), ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open cache lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock cache %s: %w", c.dir(), err)
	}
	return func() { f.Close() }, nil
}

// checkModule makes sure go commands run in this module, whose go.mod
// pins the Kubernetes version.
func (c Cache) checkModule(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "go", "env", "GOMOD")
	cmd.Dir = c.ModuleDir
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if !strings.HasSuffix(gomod, filepath.Join("test", "cluster", "go.mod")) {
		return fmt.Errorf("build must run in the test/cluster module (its go.mod pins Kubernetes %s), not in %q: cd test/cluster or set Cache.ModuleDir", KubernetesVersion, gomod)
	}
	return nil
}

func (c Cache) goCmd(ctx context.Context, env []string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = c.ModuleDir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stdout = io.Discard
	cmd.Stderr = &stderr
	c.log().Debug("go", "args", args)
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 4000 {
			msg = "…" + msg[len(msg)-4000:]
		}
		if errors.Is(ctx.Err(), context.Canceled) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("go %s: %w", args[0], ctx.Err())
		}
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, msg)
	}
	return nil
}

// kubeLDFlags stamps the version as the Kubernetes release build does
// (hack/lib/version.sh), in both places that carry it.
func kubeLDFlags() string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubernetesVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var flags []string
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X "+pkg+".gitVersion="+KubernetesVersion,
			"-X "+pkg+".gitMajor="+major,
			"-X "+pkg+".gitMinor="+minor,
			"-X "+pkg+".gitTreeState=clean",
			"-X "+pkg+".buildDate=1970-01-01T00:00:00Z",
		)
	}
	return strings.Join(flags, " ")
}

func (c Cache) dir() string {
	if c.Dir != "" {
		return c.Dir
	}
	return DefaultDir()
}

func (c Cache) out() io.Writer {
	if c.Out != nil {
		return c.Out
	}
	return os.Stderr
}

func (c Cache) log() *slog.Logger {
	if c.Log != nil {
		return c.Log.With("component", "build")
	}
	return slog.Default().With("component", "build")
}
