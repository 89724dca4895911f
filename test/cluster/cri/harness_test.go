package cri

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/logs"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cni"
	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// Images of the end-to-end tests' table.
const (
	helperImage  = "sluice.test/helper:v1"
	missingImage = "sluice.test/missing:v1"
	missingProg  = "/nonexistent/procri-test/program"
)

// runtimes counts the test runtimes of this process, for unique names.
var runtimes atomic.Int32

// testRuntime is procri served in-process on a temporary socket, with a
// real CNI bridge network and real cgroups, driven through the generated
// CRI clients.
type testRuntime struct {
	t *testing.T
	// base is a directory outside /tmp (containers get a private /tmp)
	// holding the state, the table, the helper program and pod files.
	base       string
	opts       Options
	bridge     string
	subnets    []netip.Prefix
	cgroupRoot string

	srv  *Server
	sock string
	g    *grpc.Server
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
	img  runtimeapi.ImageServiceClient
}

// newTestRuntime builds and starts a runtime; everything it creates is
// removed when the test ends, even on failure.
func newTestRuntime(t *testing.T) *testRuntime {
	t.Helper()
	testenv.RequireRoot(t)
	ctx := t.Context()
	n := (os.Getpid()*7 + int(runtimes.Add(1))) % 250
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	base, err := os.MkdirTemp("/var/tmp", "procri-test-")
	if err != nil {
		t.Fatal(err)
	}
	// Containers run as other users too: they need to reach the helper.
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	r := &testRuntime{
		t:          t,
		base:       base,
		bridge:     fmt.Sprintf("crit%d", n),
		subnets:    []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.250.%d.0/24", n)), netip.MustParsePrefix(fmt.Sprintf("fd00:250:%d::/64", n))},
		cgroupRoot: fmt.Sprintf("/sluice-critest-%d-%d", os.Getpid(), n),
	}
	cg, err := cgroup.New(log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Last: whatever the runtime left behind.
		kctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cg.Kill(kctx, r.cgroupRoot); err != nil {
			t.Errorf("kill leftovers in %s: %v", r.cgroupRoot, err)
		}
		if err := cg.Remove(r.cgroupRoot); err != nil {
			t.Errorf("remove %s: %v", r.cgroupRoot, err)
		}
		// The plugins' iptables rules name the network: none may be left.
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			if _, err := exec.LookPath(tool); err != nil {
				continue
			}
			out, err := exec.Command(tool).Output()
			if err != nil {
				t.Errorf("%s: %v", tool, err)
				continue
			}
			for line := range strings.SplitSeq(string(out), "\n") {
				if strings.Contains(line, "critest-"+r.bridge+"\\\"") {
					t.Errorf("%s rule left: %s", tool, line)
				}
			}
		}
		if l, err := netlink.LinkByName(r.bridge); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete bridge %s: %v", r.bridge, err)
			}
		}
		if err := os.RemoveAll(base); err != nil {
			t.Errorf("remove %s: %v", base, err)
		}
	})

	cniBin, err := build.Cache{}.CNIPlugins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	confDir := filepath.Join(base, "net.d")
	conf, err := cni.BridgeConfList(cni.BridgeOptions{
		Name: "critest-" + r.bridge, Bridge: r.bridge, Subnets: r.subnets, DataDir: filepath.Join(base, "ipam"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-critest.conflist"), conf, 0o644); err != nil {
		t.Fatal(err)
	}
	network, err := cni.New(confDir, []string{cniBin}, filepath.Join(base, "cni-cache"), log)
	if err != nil {
		t.Fatal(err)
	}

	helperPath := filepath.Join(base, "bin", "helper")
	if err := copyExecutable(helperPath); err != nil {
		t.Fatal(err)
	}
	r.opts = Options{
		StateDir:   filepath.Join(base, "state"),
		ImagesFile: filepath.Join(base, "images.yaml"),
		CNI:        network,
		Cgroups:    cg,
		Log:        log,
	}
	table := fmt.Sprintf(`
- image: %s
  program: %s
  args: [serve, "8080"]
  env: [%s=1, FROM_IMAGE=yes, FOO=image]
- image: %s
  program: %s
`, helperImage, helperPath, helperEnv, missingImage, missingProg)
	if err := os.WriteFile(r.opts.ImagesFile, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	r.start()
	t.Cleanup(func() {
		// First: stop and remove every sandbox through the API.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if list, err := r.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, sb := range list.GetItems() {
				if _, err := r.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.GetId()}); err != nil {
					t.Errorf("cleanup: remove sandbox %s: %v", sb.GetId(), err)
				}
			}
		} else {
			t.Errorf("cleanup: list sandboxes: %v", err)
		}
		r.stop()
	})
	return r
}

// start serves a new Server over the runtime's state on a new socket.
func (r *testRuntime) start() {
	t := r.t
	t.Helper()
	srv, err := New(r.opts)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(r.base, fmt.Sprintf("procri-%d.sock", time.Now().UnixNano()))
	lis, err := net.Listen("unix", sock)
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		g.Stop()
		srv.Close()
		t.Fatal(err)
	}
	r.srv, r.sock, r.g, r.conn = srv, sock, g, conn
	r.rt, r.img = runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
}

// stop stops serving and closes the Server; containers keep running.
func (r *testRuntime) stop() {
	_ = r.conn.Close()
	r.g.Stop()
	r.srv.Close()
}

// copyExecutable puts a copy (or hard link) of the test binary at path.
func copyExecutable(path string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.Link(self, path); err == nil {
		return nil
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// testWriter sends the runtime's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// randHex is a random suffix for pod uids.
func randHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sandboxConfig is a pod as the kubelet describes it.
func (r *testRuntime) sandboxConfig(name string, hostNetwork bool) *runtimeapi.PodSandboxConfig {
	uid := name + "-" + randHex()
	mode := runtimeapi.NamespaceMode_POD
	if hostNetwork {
		mode = runtimeapi.NamespaceMode_NODE
	}
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "critest", Uid: uid},
		Hostname:     name,
		LogDirectory: filepath.Join(r.base, "pods", "critest_"+name+"_"+uid),
		DnsConfig: &runtimeapi.DNSConfig{
			Servers: []string{"10.96.0.10"}, Searches: []string{"critest.svc.cluster.local", "svc.cluster.local"}, Options: []string{"ndots:5"},
		},
		Labels:      map[string]string{"app": name, "io.kubernetes.pod.uid": uid},
		Annotations: map[string]string{"critest/note": "kept as is"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: r.cgroupRoot + "/pod" + uid,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
				Network: mode, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD,
			}},
		},
	}
}

// runSandbox runs a sandbox and returns its id.
func (r *testRuntime) runSandbox(cfg *runtimeapi.PodSandboxConfig) string {
	r.t.Helper()
	resp, err := r.rt.RunPodSandbox(r.t.Context(), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		r.t.Fatalf("RunPodSandbox %s: %v", cfg.GetMetadata().GetName(), err)
	}
	return resp.GetPodSandboxId()
}

// containerConfig is a container of the helper image as the kubelet
// describes it.
func containerConfig(sbCfg *runtimeapi.PodSandboxConfig, name string, args ...string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: helperImage, UserSpecifiedImage: helperImage},
		Args:     args,
		LogPath:  name + "/0.log",
		Labels:   map[string]string{"container": name},
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources: &runtimeapi.LinuxContainerResources{CpuShares: 2, OomScoreAdj: 1000},
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: namespaceOptions(sbCfg).GetNetwork(), Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD,
				},
			},
		},
	}
}

// startContainer creates and starts a container and returns its id.
func (r *testRuntime) startContainer(sbID string, sbCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	r.t.Helper()
	ctx := r.t.Context()
	cr, err := r.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: sbCfg})
	if err != nil {
		r.t.Fatalf("CreateContainer %s: %v", cfg.GetMetadata().GetName(), err)
	}
	if _, err := r.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.GetContainerId()}); err != nil {
		r.t.Fatalf("StartContainer %s: %v", cfg.GetMetadata().GetName(), err)
	}
	return cr.GetContainerId()
}

// status is a container's verbose status with its pid.
func (r *testRuntime) status(id string) (*runtimeapi.ContainerStatus, int) {
	r.t.Helper()
	resp, err := r.rt.ContainerStatus(r.t.Context(), &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		r.t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	var info struct{ PID int }
	_ = json.Unmarshal([]byte(resp.GetInfo()["info"]), &info)
	return resp.GetStatus(), info.PID
}

// holderPID is a sandbox's holder pid from its verbose status.
func (r *testRuntime) holderPID(id string) int {
	r.t.Helper()
	resp, err := r.rt.PodSandboxStatus(r.t.Context(), &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		r.t.Fatalf("PodSandboxStatus %s: %v", id, err)
	}
	var info struct{ PID int }
	if err := json.Unmarshal([]byte(resp.GetInfo()["info"]), &info); err != nil || info.PID == 0 {
		r.t.Fatalf("sandbox info %q: %v", resp.GetInfo(), err)
	}
	return info.PID
}

// waitExited waits (with a hang guard) until a container has exited.
func (r *testRuntime) waitExited(id string) *runtimeapi.ContainerStatus {
	r.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st, _ := r.status(id)
		if st.GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("container %s still %s after a minute", id, st.GetState())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog waits (with a hang guard) until a container's log, read with the
// kubelet's reader, holds want on stdout.
func (r *testRuntime) waitLog(path, want string) (stdout, stderr string) {
	r.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		stdout, stderr = readLog(r.t, path)
		if strings.Contains(stdout, want) {
			return stdout, stderr
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("log %s never showed %q: stdout %q stderr %q", path, want, stdout, stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readLog reads a CRI log file with the kubelet's log reader.
func readLog(t *testing.T, path string) (stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	err := logs.ReadLogs(t.Context(), nil, path, "", logs.NewLogOptions(&v1.PodLogOptions{}, time.Now()), nil, &o, &e)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read log %s: %v", path, err)
	}
	return o.String(), e.String()
}

// exec runs a command in a container with ExecSync.
func (r *testRuntime) exec(id string, timeout int64, cmd ...string) (*runtimeapi.ExecSyncResponse, error) {
	return r.rt.ExecSync(r.t.Context(), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: timeout})
}

// mustExec runs a command that must exit 0 and returns its stdout.
func (r *testRuntime) mustExec(id string, cmd ...string) string {
	r.t.Helper()
	resp, err := r.exec(id, 30, cmd...)
	if err != nil {
		r.t.Fatalf("exec %q: %v", cmd, err)
	}
	if resp.GetExitCode() != 0 {
		r.t.Fatalf("exec %q: exit %d, stderr %q", cmd, resp.GetExitCode(), resp.GetStderr())
	}
	return string(resp.GetStdout())
}

// nsInode is the inode of a process's namespace file.
func nsInode(t *testing.T, pid int, ns string) string {
	t.Helper()
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
	if err != nil {
		t.Fatalf("namespace %s of %d: %v", ns, pid, err)
	}
	return l
}

// procStatusField is a field of /proc/<pid>/status.
func procStatusField(t *testing.T, pid int, field string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}
