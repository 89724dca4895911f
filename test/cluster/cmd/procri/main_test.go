package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cni"
	"github.com/sluice-mesh/sluice/test/cluster/internal/testenv"
)

// buildProcri builds this command into dir.
func buildProcri(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "procri")
	out, err := exec.CommandContext(t.Context(), "go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestHelp(t *testing.T) {
	testenv.RequireCommand(t, "go")
	bin := buildProcri(t, t.TempDir())
	out, err := exec.CommandContext(t.Context(), bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("procri --help: %v\n%s", err, out)
	}
	for _, want := range []string{"container runtime", "image table", "--socket", "--state-dir", "--images", "--cni-conf-dir", "--cni-bin-dir", "--cni-cache-dir", "--log-level", "ExecSync"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--help does not mention %q:\n%s", want, out)
		}
	}
}

// procri is a running procri process.
type procri struct {
	cmd  *exec.Cmd
	done chan error
	rt   runtimeapi.RuntimeServiceClient
	conn *grpc.ClientConn
}

// TestRestartKeepsContainers runs procri as a process, starts a pod, stops
// procri with SIGTERM and starts it again: the container kept running and
// the new procri knows it.
func TestRestartKeepsContainers(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "go")
	ctx := t.Context()
	base, err := os.MkdirTemp("/var/tmp", "procri-cmd-test-")
	if err != nil {
		t.Fatal(err)
	}
	cgroupRoot := fmt.Sprintf("/sluice-critest-cmd-%d", os.Getpid())
	cg, err := cgroup.New(slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cg.Kill(kctx, cgroupRoot); err != nil {
			t.Errorf("kill leftovers: %v", err)
		}
		if err := cg.Remove(cgroupRoot); err != nil {
			t.Errorf("remove %s: %v", cgroupRoot, err)
		}
		_ = os.RemoveAll(base)
	})
	bin := buildProcri(t, base)
	cniBin, err := build.Cache{}.CNIPlugins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	confDir := filepath.Join(base, "net.d")
	conf, err := cni.BridgeConfList(cni.BridgeOptions{
		Name: "critest-cmd", Bridge: fmt.Sprintf("critc%d", os.Getpid()%100000),
		Subnets: []netip.Prefix{netip.MustParsePrefix("10.250.251.0/24")}, DataDir: filepath.Join(base, "ipam"),
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
	images := filepath.Join(base, "images.yaml")
	if err := os.WriteFile(images, []byte("- {image: sluice.test/sleep:v1, program: /bin/sleep, args: ['1000']}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(base, "procri.sock")
	// current is the procri running; at the end the sandbox is removed
	// through it, then it is killed.
	var (
		current *procri
		sandbox string
	)
	t.Cleanup(func() {
		if current == nil {
			return
		}
		if sandbox != "" {
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := current.rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
				t.Errorf("cleanup: remove sandbox: %v", err)
			}
		}
		_ = current.conn.Close()
		_ = current.cmd.Process.Kill()
		<-current.done
	})
	start := func() *procri {
		t.Helper()
		cmd := exec.Command(bin, "--socket", socket, "--state-dir", filepath.Join(base, "state"), "--images", images,
			"--cni-conf-dir", confDir, "--cni-bin-dir", cniBin, "--cni-cache-dir", filepath.Join(base, "cni-cache"), "--log-level", "debug")
		cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &procri{cmd: cmd, done: make(chan error, 1)}
		go func() { p.done <- cmd.Wait() }()
		current = p
		conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		p.conn, p.rt = conn, runtimeapi.NewRuntimeServiceClient(conn)
		// Wait (hang guard) until it answers.
		deadline := time.Now().Add(time.Minute)
		for {
			v, err := p.rt.Version(ctx, &runtimeapi.VersionRequest{})
			if err == nil {
				if v.GetRuntimeName() != "procri" {
					t.Fatalf("Version = %v", v)
				}
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("procri does not answer: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stop := func(p *procri) {
		t.Helper()
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-p.done:
			p.done <- err
			_ = p.conn.Close()
			if err != nil {
				t.Fatalf("procri after SIGTERM: %v", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("procri still runs a minute after SIGTERM")
		}
	}

	p := start()
	uid := fmt.Sprintf("uid-%d", os.Getpid())
	sbCfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "sleeper", Namespace: "critest", Uid: uid},
		LogDirectory: filepath.Join(base, "pods", uid),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: cgroupRoot + "/pod" + uid,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_CONTAINER,
			}},
		},
	}
	sb, err := p.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg})
	if err != nil {
		t.Fatal(err)
	}
	sandbox = sb.GetPodSandboxId()
	cr, err := p.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.GetPodSandboxId(), SandboxConfig: sbCfg, Config: &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "sleep"},
		Image:    &runtimeapi.ImageSpec{Image: "sluice.test/sleep:v1"},
		LogPath:  "sleep/0.log",
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := cr.GetContainerId()
	if _, err := p.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	pidOf := func(p *procri) (runtimeapi.ContainerState, int) {
		t.Helper()
		resp, err := p.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
		if err != nil {
			t.Fatal(err)
		}
		var info struct{ PID int }
		_ = json.Unmarshal([]byte(resp.GetInfo()["info"]), &info)
		return resp.GetStatus().GetState(), info.PID
	}
	_, pid := pidOf(p)

	stop(p)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("the container died with procri: %v", err)
	}
	p = start()
	if st, got := pidOf(p); st != runtimeapi.ContainerState_CONTAINER_RUNNING || got != pid {
		t.Errorf("after the restart: %s pid %d, want RUNNING pid %d", st, got, pid)
	}
	if _, err := p.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 10}); err != nil {
		t.Fatal(err)
	}
	if st, _ := pidOf(p); st != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("after stop: %s", st)
	}
}

// testWriter sends procri's output to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
