// Package kube gives the main module's end-to-end tests the local Kubernetes
// cluster of test/cluster (a module of its own, driven here through its
// `cluster` command): it takes the machine's cluster lock, brings the
// cluster up or reuses the running one, maps image references to programs
// built from this module, and brings the cluster down at the end when it
// started it.
package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// LockPath is the machine's cluster lock; it must equal test/cluster's
// cluster.LockPath (the two modules do not import each other).
const LockPath = "/run/lock/sluice-cluster.lock"

// lockFDEnv passes the held lock to the cluster command (test/cluster's
// cluster.LockFDEnv).
const lockFDEnv = "SLUICE_CLUSTER_LOCK_FD"

// KeepEnv, when "1", leaves a cluster this package started running at the
// end (for a quicker next run while developing).
const KeepEnv = "SLUICE_E2E_KEEP_CLUSTER"

// Cluster is the running local cluster, held by one test process.
type Cluster struct {
	// Kubeconfig is the admin kubeconfig's path.
	Kubeconfig string
	// REST is the admin client configuration.
	REST *rest.Config
	// Client and Dynamic are admin clients.
	Client  kubernetes.Interface
	Dynamic dynamic.Interface

	out     io.Writer
	root    string // the main module's root
	cli     string // the built cluster command
	lock    *os.File
	started bool // Up started the API server (it was not running)
}

// Up takes the machine's cluster lock (waiting while another test run
// holds it), builds test/cluster's cluster command, and brings the cluster
// up. Progress goes to out. Call Down when done, also after a failure.
func Up(ctx context.Context, out io.Writer) (*Cluster, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	c := &Cluster{out: out, root: root}
	if err := c.takeLock(ctx); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.lock.Close()
		}
	}()
	dir, err := os.MkdirTemp("", "sluice-kube-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	c.cli = filepath.Join(os.TempDir(), fmt.Sprintf("sluice-cluster-cli-%d", os.Getpid()))
	build := exec.CommandContext(ctx, "go", "build", "-o", c.cli, "./cmd/cluster")
	build.Dir = filepath.Join(root, "test", "cluster")
	if b, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build test/cluster's cluster command: %w: %s", err, bytes.TrimSpace(b))
	}
	running, err := c.apiServerRunning(ctx)
	if err != nil {
		return nil, err
	}
	c.started = !running
	start := time.Now()
	b, err := c.run(ctx, "up")
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "kube: cluster up in %s\n", time.Since(start).Round(100*time.Millisecond))
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "kubeconfig: "); ok {
			c.Kubeconfig = p
		}
	}
	if c.Kubeconfig == "" {
		return nil, fmt.Errorf("cluster up printed no kubeconfig:\n%s", b)
	}
	if c.REST, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return nil, fmt.Errorf("load %s: %w", c.Kubeconfig, err)
	}
	c.REST.QPS, c.REST.Burst = 50, 100
	if c.Client, err = kubernetes.NewForConfig(c.REST); err != nil {
		return nil, err
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.REST); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// Down brings the cluster down when Up started it (unless KeepEnv is set),
// checks that nothing is left, and releases the lock.
func (c *Cluster) Down(ctx context.Context) error {
	defer os.Remove(c.cli)
	defer c.lock.Close()
	if !c.started {
		fmt.Fprintln(c.out, "kube: the cluster ran before these tests: leaving it up")
		return nil
	}
	if os.Getenv(KeepEnv) == "1" {
		fmt.Fprintf(c.out, "kube: %s=1: leaving the cluster up\n", KeepEnv)
		return nil
	}
	_, err := c.run(ctx, "down")
	return err
}

// MapImage maps image (a reference; ":*" matches every tag) to program, an
// absolute path every user can run, with args as its default arguments.
func (c *Cluster) MapImage(ctx context.Context, image, program string, args ...string) error {
	a := []string{"image", image, program}
	if len(args) > 0 {
		a = append(append(a, "--"), args...)
	}
	_, err := c.run(ctx, a...)
	return err
}

// Kubectl runs the cluster's kubectl with the admin kubeconfig and returns
// its standard output; an error carries its standard error.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.run(ctx, append([]string{"kubectl", "--"}, args...)...)
}

// Logs returns the tail of the named daemon's log (kubelet, procri, ...).
func (c *Cluster) Logs(daemon string, maxBytes int64) string {
	dir := filepath.Join(stateDir(), "logs")
	f, err := os.Open(filepath.Join(dir, daemon+".log"))
	if err != nil {
		return fmt.Sprintf("(no log of %s: %v)", daemon, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > maxBytes {
		f.Seek(st.Size()-maxBytes, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// stateDir is the cluster's state root, as test/cluster's DefaultDir.
func stateDir() string {
	if d := os.Getenv("SLUICE_CLUSTER_DIR"); d != "" {
		return d
	}
	return "/var/lib/sluice-cluster"
}

// run runs the cluster command with the lock passed on.
func (c *Cluster) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.cli, args...)
	cmd.Dir = filepath.Join(c.root, "test", "cluster")
	cmd.ExtraFiles = []*os.File{c.lock} // descriptor 3
	cmd.Env = append(os.Environ(), lockFDEnv+"=3")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = io.MultiWriter(&stderr, &linePrefixer{w: c.out, prefix: "cluster: "})
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("cluster %s: %w: %s", strings.Join(args, " "), err, lastLines(stderr.String(), 20))
	}
	return stdout.Bytes(), nil
}

func (c *Cluster) apiServerRunning(ctx context.Context) (bool, error) {
	b, err := c.run(ctx, "status")
	if err != nil {
		return false, err
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "kube-apiserver" && f[1] == "running," {
			return true, nil
		}
	}
	return false, nil
}

func (c *Cluster) takeLock(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(LockPath), 0o755); err != nil {
		return fmt.Errorf("lock cluster: %w", err)
	}
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("lock cluster: %w", err)
	}
	said := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("lock cluster %s: %w", LockPath, err)
		}
		if !said {
			fmt.Fprintf(c.out, "kube: waiting for %s: another test run's cluster\n", LockPath)
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return fmt.Errorf("lock cluster %s (held by another test run): %w", LockPath, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	c.lock = f
	return nil
}

// moduleRoot finds the main module's root from the working directory.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// linePrefixer writes each complete line to w with a prefix.
type linePrefixer struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *linePrefixer) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}
