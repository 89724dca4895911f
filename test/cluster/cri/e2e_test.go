package cri

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestPodLifecycle drives a pod through everything the kubelet does with
// it: sandbox, pull, create, start, status, logs, exec, stop (SIGTERM
// honoured and ignored), exit codes, listing, removal.
func TestPodLifecycle(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()

	// The runtime reports ready, with the cgroupfs driver.
	st, err := r.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.GetStatus().GetConditions() {
		if !c.GetStatus() {
			t.Errorf("condition %s false: %s %s", c.GetType(), c.GetReason(), c.GetMessage())
		}
	}
	if rc, err := r.rt.RuntimeConfig(ctx, &runtimeapi.RuntimeConfigRequest{}); err != nil || rc.GetLinux().GetCgroupDriver() != runtimeapi.CgroupDriver_CGROUPFS {
		t.Errorf("RuntimeConfig = %v, %v", rc, err)
	}
	if v, err := r.rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil || v.GetRuntimeName() != "procri" || v.GetRuntimeApiVersion() != "v1" {
		t.Errorf("Version = %v, %v", v, err)
	}

	// Sandbox.
	sbCfg := r.sandboxConfig("web", false)
	sbID := r.runSandbox(sbCfg)
	sbStatus, err := r.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	if err != nil {
		t.Fatal(err)
	}
	sbs := sbStatus.GetStatus()
	if sbs.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || sbs.GetCreatedAt() == 0 ||
		sbs.GetMetadata().GetUid() != sbCfg.GetMetadata().GetUid() || sbs.GetAnnotations()["critest/note"] != "kept as is" ||
		sbs.GetLabels()["app"] != "web" || sbs.GetLinux().GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_POD {
		t.Errorf("sandbox status = %v", sbs)
	}
	ip4, err := netip.ParseAddr(sbs.GetNetwork().GetIp())
	if err != nil || !r.subnets[0].Contains(ip4) {
		t.Errorf("sandbox IP %q not in %s", sbs.GetNetwork().GetIp(), r.subnets[0])
	}
	if ips := sbs.GetNetwork().GetAdditionalIps(); len(ips) != 1 || !r.subnets[1].Contains(netip.MustParseAddr(ips[0].GetIp())) {
		t.Errorf("sandbox additional IPs %v, want one in %s", ips, r.subnets[1])
	}
	holder := r.holderPID(sbID)
	if nsInode(t, holder, "net") == nsInode(t, os.Getpid(), "net") {
		t.Error("the sandbox holder is in the host's network namespace")
	}

	// Pull.
	pull, err := r.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: helperImage}, SandboxConfig: sbCfg})
	if err != nil {
		t.Fatal(err)
	}
	imageID := pull.GetImageRef()

	// A host directory mounted read-only.
	data := filepath.Join(r.base, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "hello"), []byte("hello from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A server container, created as the kubelet does: the image given by
	// the id the pull answered.
	cfg := containerConfig(sbCfg, "server")
	cfg.Image = &runtimeapi.ImageSpec{Image: imageID, UserSpecifiedImage: helperImage}
	cfg.Envs = []*runtimeapi.KeyValue{{Key: "FOO", Value: "bar"}}
	// The service account token directory: /var/run is a symlink to /run
	// on Debian, and /run is the container's own.
	token := filepath.Join(r.base, "token")
	if err := os.MkdirAll(token, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(token, "token"), []byte("secret-token"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Mounts = []*runtimeapi.Mount{
		{HostPath: data, ContainerPath: "/data", Readonly: true},
		{HostPath: token, ContainerPath: "/var/run/secrets/kubernetes.io/serviceaccount", Readonly: true},
	}
	cfg.Annotations = map[string]string{"io.kubernetes.container.hash": "1234"}
	cfg.Linux.SecurityContext.RunAsUser = &runtimeapi.Int64Value{Value: 1234}
	cfg.Linux.SecurityContext.RunAsGroup = &runtimeapi.Int64Value{Value: 5678}
	cfg.Linux.SecurityContext.SupplementalGroups = []int64{4242}
	cfg.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{DropCapabilities: []string{"ALL"}, AddCapabilities: []string{"NET_BIND_SERVICE"}}
	cfg.Linux.SecurityContext.NoNewPrivs = true
	cr, err := r.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: sbCfg})
	if err != nil {
		t.Fatal(err)
	}
	server := cr.GetContainerId()
	if st, _ := r.status(server); st.GetState() != runtimeapi.ContainerState_CONTAINER_CREATED {
		t.Errorf("after create: %s", st.GetState())
	}
	if _, err := r.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: server}); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(sbCfg.GetLogDirectory(), "server/0.log")
	r.waitLog(logPath, "serving on")

	cs, pid := r.status(server)
	if cs.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || cs.GetStartedAt() == 0 || cs.GetFinishedAt() != 0 ||
		cs.GetImage().GetImage() != helperImage || cs.GetImageRef() != imageID || cs.GetImageId() != imageID ||
		cs.GetLogPath() != logPath || cs.GetLabels()["container"] != "server" || cs.GetAnnotations()["io.kubernetes.container.hash"] != "1234" ||
		len(cs.GetMounts()) != 2 || cs.GetUser().GetLinux().GetUid() != 1234 || cs.GetResources().GetLinux().GetCpuShares() != 2 {
		t.Errorf("running status = %v", cs)
	}
	// Facts from the process itself.
	if got, want := nsInode(t, pid, "net"), nsInode(t, holder, "net"); got != want {
		t.Errorf("container net namespace %s, holder's %s", got, want)
	}
	if got, want := nsInode(t, pid, "uts"), nsInode(t, holder, "uts"); got != want {
		t.Errorf("container UTS namespace %s, holder's %s", got, want)
	}
	if nsInode(t, pid, "mnt") == nsInode(t, os.Getpid(), "mnt") {
		t.Error("the container shares the host's mount namespace")
	}
	if got := procStatusField(t, pid, "Uid"); got != "1234 1234 1234 1234" {
		t.Errorf("Uid: %s", got)
	}
	if got := procStatusField(t, pid, "Gid"); got != "5678 5678 5678 5678" {
		t.Errorf("Gid: %s", got)
	}
	if got := procStatusField(t, pid, "Groups"); got != "4242" {
		t.Errorf("Groups: %s", got)
	}
	// CAP_NET_BIND_SERVICE alone is bit 10.
	if got := procStatusField(t, pid, "CapEff"); got != "0000000000000400" {
		t.Errorf("CapEff: %s, want only CAP_NET_BIND_SERVICE", got)
	}
	if got := procStatusField(t, pid, "CapBnd"); got != "0000000000000400" {
		t.Errorf("CapBnd: %s, want only CAP_NET_BIND_SERVICE", got)
	}
	if got := procStatusField(t, pid, "NoNewPrivs"); got != "1" {
		t.Errorf("NoNewPrivs: %s", got)
	}
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid)); err != nil || strings.TrimSpace(string(data)) != "1000" {
		t.Errorf("oom_score_adj = %q, %v", data, err)
	}
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	env := strings.Split(string(environ), "\x00")
	for _, want := range []string{"FOO=bar", "FROM_IMAGE=yes", "HOSTNAME=web"} {
		if !slices.Contains(env, want) {
			t.Errorf("environment %q lacks %s", env, want)
		}
	}
	cgroups, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if want := sbCfg.GetLinux().GetCgroupParent() + "/" + server; !strings.Contains(string(cgroups), want) {
		t.Errorf("/proc/%d/cgroup = %s, want %s", pid, cgroups, want)
	}

	// Exec: the container's view, user, mounts.
	if got := r.mustExec(server, "/bin/sh", "-c", "echo $FOO; id -u; id -g; hostname; cat /data/hello; cat /etc/resolv.conf; cat /etc/hostname"); !strings.Contains(got, "bar\n1234\n5678\nweb\nhello from the host\n") ||
		!strings.Contains(got, "nameserver 10.96.0.10") || !strings.Contains(got, "search critest.svc.cluster.local svc.cluster.local") ||
		!strings.Contains(got, "options ndots:5") {
		t.Errorf("exec output %q", got)
	}
	if got := r.mustExec(server, "/bin/cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"); got != "secret-token" {
		t.Errorf("token in the container = %q", got)
	}
	if resp, err := r.exec(server, 10, "/bin/sh", "-c", "echo nope > /data/file"); err != nil || resp.GetExitCode() == 0 {
		t.Errorf("writing to a read-only mount: %v, %v", resp, err)
	}
	if resp, err := r.exec(server, 10, "/bin/sh", "-c", "echo out; echo err >&2; exit 3"); err != nil || resp.GetExitCode() != 3 ||
		string(resp.GetStdout()) != "out\n" || string(resp.GetStderr()) != "err\n" {
		t.Errorf("exec exit 3 = %v, %v", resp, err)
	}
	if resp, err := r.exec(server, 10, "no-such-command"); err != nil || resp.GetExitCode() != 127 || !strings.Contains(string(resp.GetStderr()), "no-such-command") {
		t.Errorf("exec of a missing command = %v, %v; want exit 127 with the reason in stderr", resp, err)
	}
	if _, err := r.exec(server, 1, "/bin/sleep", "30"); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("exec past its timeout = %v, want DeadlineExceeded", err)
	}

	// A privileged container with a read-only root that ignores SIGTERM,
	// and two that exit on their own.
	stubbornCfg := containerConfig(sbCfg, "stubborn", "ignore-term")
	stubbornCfg.Linux.SecurityContext.Privileged = true
	stubbornCfg.Linux.SecurityContext.ReadonlyRootfs = true
	stubborn := r.startContainer(sbID, sbCfg, stubbornCfg)
	r.waitLog(filepath.Join(sbCfg.GetLogDirectory(), "stubborn/0.log"), "ignoring SIGTERM")
	_, stubbornPID := r.status(stubborn)
	if got, want := procStatusField(t, stubbornPID, "CapEff"), procStatusField(t, os.Getpid(), "CapEff"); got != want {
		t.Errorf("privileged container CapEff %s, want every capability (%s)", got, want)
	}
	if resp, err := r.exec(stubborn, 10, "/bin/sh", "-c", "echo x > /etc/procri-test"); err != nil || resp.GetExitCode() == 0 {
		t.Errorf("writing to a read-only root: %v, %v", resp, err)
	}
	if got := r.mustExec(stubborn, "/bin/sh", "-c", "echo x > /tmp/ok && cat /tmp/ok"); got != "x\n" {
		t.Errorf("writing to /tmp under a read-only root: %q", got)
	}
	failing := r.startContainer(sbID, sbCfg, containerConfig(sbCfg, "failing", "exit", "3"))
	done := r.startContainer(sbID, sbCfg, containerConfig(sbCfg, "done", "exit", "0"))

	fst := r.waitExited(failing)
	if fst.GetExitCode() != 3 || fst.GetReason() != "Error" || fst.GetFinishedAt() < fst.GetStartedAt() {
		t.Errorf("failing container status = %v", fst)
	}
	out, errOut := readLog(t, filepath.Join(sbCfg.GetLogDirectory(), "failing/0.log"))
	if out != "to stdout\n" || errOut != "to stderr\n" {
		t.Errorf("failing container log: stdout %q stderr %q", out, errOut)
	}
	if dst := r.waitExited(done); dst.GetExitCode() != 0 || dst.GetReason() != "Completed" {
		t.Errorf("done container status = %v", dst)
	}

	// The streaming calls say procri does not do them.
	if _, err := r.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: server, Cmd: []string{"sh"}}); status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "procri does not implement Exec") {
		t.Errorf("Exec = %v", err)
	}

	// Listing with filters.
	list := func(f *runtimeapi.ContainerFilter) []string {
		t.Helper()
		resp, err := r.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, c := range resp.GetContainers() {
			ids = append(ids, c.GetId())
		}
		slices.Sort(ids)
		return ids
	}
	sorted := func(ids ...string) []string { slices.Sort(ids); return ids }
	for _, tc := range []struct {
		name   string
		filter *runtimeapi.ContainerFilter
		want   []string
	}{
		{"all", nil, sorted(server, stubborn, failing, done)},
		{"sandbox", &runtimeapi.ContainerFilter{PodSandboxId: sbID}, sorted(server, stubborn, failing, done)},
		{"other sandbox", &runtimeapi.ContainerFilter{PodSandboxId: "0000"}, nil},
		{"running", &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}, sorted(server, stubborn)},
		{"exited", &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_EXITED}}, sorted(failing, done)},
		{"label", &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"container": "stubborn"}}, []string{stubborn}},
		{"id prefix", &runtimeapi.ContainerFilter{Id: failing[:12]}, []string{failing}},
	} {
		if got := list(tc.filter); !slices.Equal(got, tc.want) {
			t.Errorf("ListContainers %s = %v, want %v", tc.name, got, tc.want)
		}
	}

	// Resources update: recorded and applied to the cgroup.
	if _, err := r.rt.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{
		ContainerId: server, Linux: &runtimeapi.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 256 << 20},
	}); err != nil {
		t.Fatal(err)
	}
	if cs, _ := r.status(server); cs.GetResources().GetLinux().GetCpuShares() != 512 || cs.GetResources().GetLinux().GetMemoryLimitInBytes() != 256<<20 {
		t.Errorf("resources after update = %v", cs.GetResources())
	}
	if got := memoryLimit(t, pid); got != 256<<20 {
		t.Errorf("memory limit of the container's cgroup = %d, want %d", got, 256<<20)
	}

	// Log rotation as the kubelet does it: rename, then reopen.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.rt.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: server}); err != nil {
		t.Fatal(err)
	}

	// Stop: SIGTERM honoured.
	if _, err := r.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: server, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	if sst, _ := r.status(server); sst.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || sst.GetExitCode() != 0 || sst.GetReason() != "Completed" {
		t.Errorf("server after stop = %v", sst)
	}
	if out, _ := readLog(t, logPath); out != "got SIGTERM, exiting\n" {
		t.Errorf("server log after rotation and stop: %q", out)
	}
	if out, _ := readLog(t, logPath+".1"); !strings.Contains(out, "serving on") || strings.Contains(out, "SIGTERM") {
		t.Errorf("rotated server log: %q", out)
	}
	if _, err := r.rt.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: server}); err == nil {
		t.Error("reopening the log of an exited container succeeded")
	}
	// Stop: SIGTERM ignored, SIGKILL after the timeout.
	if _, err := r.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: stubborn, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if sst, _ := r.status(stubborn); sst.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || sst.GetExitCode() != 137 || sst.GetReason() != "Error" {
		t.Errorf("stubborn after stop = %v", sst)
	}
	// Stopping again is fine.
	if _, err := r.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: stubborn, Timeout: 1}); err != nil {
		t.Errorf("second stop: %v", err)
	}
	if _, err := r.exec(server, 1, "true"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("exec in an exited container = %v", err)
	}

	// Remove.
	if _, err := r.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: server}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: server}); status.Code(err) != codes.NotFound {
		t.Errorf("status of a removed container = %v, want NotFound", err)
	}
	if _, err := r.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: server}); err != nil {
		t.Errorf("removing a removed container: %v", err)
	}
	if got := list(nil); !slices.Equal(got, sorted(stubborn, failing, done)) {
		t.Errorf("after remove: %v", got)
	}

	// Sandbox stop and removal.
	if _, err := r.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Errorf("second StopPodSandbox: %v", err)
	}
	ready := &runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}}
	if l, err := r.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: ready}); err != nil || len(l.GetItems()) != 0 {
		t.Errorf("ready sandboxes after stop: %v, %v", l, err)
	}
	notReady := &runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}, LabelSelector: map[string]string{"app": "web"}}
	if l, err := r.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: notReady}); err != nil || len(l.GetItems()) != 1 || l.GetItems()[0].GetId() != sbID {
		t.Errorf("not ready sandboxes after stop: %v, %v", l, err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", holder)); err == nil {
		if st, ok := procStartTime(holder); ok {
			t.Errorf("holder %d still runs after stop (start %d)", holder, st)
		}
	}
	if _, err := r.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Errorf("removing a removed sandbox: %v", err)
	}
	if got := list(nil); len(got) != 0 {
		t.Errorf("containers after the sandbox's removal: %v", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(r.opts.StateDir, containersDir)); len(entries) != 0 {
		t.Errorf("container state left: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(r.opts.StateDir, sandboxesDir, sbID)); !os.IsNotExist(err) {
		t.Errorf("sandbox directory left: %v", err)
	}
	if pids, err := r.opts.Cgroups.Pids(sbCfg.GetLinux().GetCgroupParent()); err != nil || len(pids) != 0 {
		t.Errorf("processes left in the pod cgroup: %v, %v", pids, err)
	}
	if v2 := r.opts.Cgroups.V2Path(sbCfg.GetLinux().GetCgroupParent()); v2 != "" {
		if _, err := os.Stat(v2); !os.IsNotExist(err) {
			t.Errorf("pod cgroup %s left: %v", v2, err)
		}
	}
}

// TestImageErrors checks the messages of an unmapped image and of a
// program that does not exist.
func TestImageErrors(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()

	_, err := r.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "busybox:1.36"}})
	if err == nil {
		t.Fatal("pulling an unmapped image succeeded")
	}
	for _, want := range []string{"docker.io/library/busybox:1.36", r.opts.ImagesFile, "program:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("unmapped image message %q lacks %q", err, want)
		}
	}
	if st, err := r.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "busybox:1.36"}}); err != nil || st.GetImage() != nil {
		t.Errorf("ImageStatus of an unknown image = %v, %v; want an empty answer", st, err)
	}

	_, err = r.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: missingImage}})
	if err == nil || !strings.Contains(err.Error(), missingProg) {
		t.Errorf("pulling an image whose program is missing = %v, want the program named", err)
	}

	sbCfg := r.sandboxConfig("img", true)
	sbID := r.runSandbox(sbCfg)
	cfg := containerConfig(sbCfg, "unmapped")
	cfg.Image = &runtimeapi.ImageSpec{Image: "busybox:1.36"}
	_, err = r.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: sbCfg})
	if err == nil || !strings.Contains(err.Error(), "busybox") {
		t.Errorf("creating a container of an unmapped image = %v", err)
	}

	// A command that does not exist: the start fails, saying so, and the
	// container is EXITED with reason StartError.
	cfg = containerConfig(sbCfg, "nocmd")
	cfg.Command = []string{"/nonexistent/command"}
	cr, err := r.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: sbCfg})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cr.GetContainerId()})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/command") {
		t.Errorf("starting a missing command = %v, want an error naming it", err)
	}
	st, _ := r.status(cr.GetContainerId())
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetReason() != "StartError" || !strings.Contains(st.GetMessage(), "/nonexistent/command") {
		t.Errorf("status after a failed start = %v", st)
	}

	// Unsupported fields fail creation with what procri does not do.
	cfg = containerConfig(sbCfg, "devices")
	cfg.Devices = []*runtimeapi.Device{{HostPath: "/dev/null", ContainerPath: "/dev/x", Permissions: "rw"}}
	_, err = r.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: sbCfg})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "devices are not supported") {
		t.Errorf("creating a container with devices = %v", err)
	}
}

// TestPodsReachEachOther runs two pods and connects from one to the other
// over both of its IPs.
func TestPodsReachEachOther(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()
	aCfg, bCfg := r.sandboxConfig("pod-a", false), r.sandboxConfig("pod-b", false)
	hostPort := 31000 + int32(r.subnets[0].Addr().As4()[2])
	bCfg.PortMappings = []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 8080, HostPort: hostPort}}
	a, b := r.runSandbox(aCfg), r.runSandbox(bCfg)
	client := r.startContainer(a, aCfg, containerConfig(aCfg, "client"))
	r.startContainer(b, bCfg, containerConfig(bCfg, "server"))
	r.waitLog(filepath.Join(bCfg.GetLogDirectory(), "server/0.log"), "serving on")
	r.waitLog(filepath.Join(aCfg.GetLogDirectory(), "client/0.log"), "serving on")

	st, err := r.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: b})
	if err != nil {
		t.Fatal(err)
	}
	ips := []string{st.GetStatus().GetNetwork().GetIp()}
	for _, ip := range st.GetStatus().GetNetwork().GetAdditionalIps() {
		ips = append(ips, ip.GetIp())
	}
	if len(ips) != 2 {
		t.Fatalf("pod-b IPs %v, want IPv4 and IPv6", ips)
	}
	helper := filepath.Join(r.base, "bin", "helper")
	for _, ip := range ips {
		addr := netip.AddrPortFrom(netip.MustParseAddr(ip), 8080).String()
		if got := r.mustExec(client, helper, "fetch", addr); got != "hello from pod-b\n" {
			t.Errorf("fetch %s from pod-a = %q", addr, got)
		}
	}

	// pod-b's host port, from the host to its address on the bridge.
	gw := r.subnets[0].Addr().Next()
	conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(gw, uint16(hostPort)).String(), 10*time.Second)
	if err != nil {
		t.Fatalf("dial host port %d: %v", hostPort, err)
	}
	defer conn.Close()
	if got, err := io.ReadAll(conn); err != nil || string(got) != "hello from pod-b\n" {
		t.Errorf("host port %d answered %q, %v", hostPort, got, err)
	}
}

// TestHostNetworkSandbox runs a host-network pod: no IPs of its own, its
// containers in the host's network namespace.
func TestHostNetworkSandbox(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()
	cfg := r.sandboxConfig("hostnet", true)
	hostname, _ := os.Hostname()
	cfg.Hostname = hostname
	id := r.runSandbox(cfg)
	st, err := r.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || st.GetStatus().GetNetwork().GetIp() != "" ||
		st.GetStatus().GetLinux().GetNamespaces().GetOptions().GetNetwork() != runtimeapi.NamespaceMode_NODE {
		t.Errorf("host-network sandbox status = %v", st.GetStatus())
	}
	ccfg := containerConfig(cfg, "agent", "ignore-term")
	c := r.startContainer(id, cfg, ccfg)
	r.waitLog(filepath.Join(cfg.GetLogDirectory(), "agent/0.log"), "ignoring SIGTERM")
	_, pid := r.status(c)
	if got, want := nsInode(t, pid, "net"), nsInode(t, os.Getpid(), "net"); got != want {
		t.Errorf("host-network container in net namespace %s, host's is %s", got, want)
	}
	if got := strings.TrimSpace(r.mustExec(c, "/bin/hostname")); got != hostname {
		t.Errorf("hostname in a host-network pod = %q, want %q", got, hostname)
	}
}

// TestRestart restarts procri (a new Server over the same state): the
// running sandbox and container are adopted and keep working, a container
// that died meanwhile is EXITED with reason Unknown, and one that dies
// after the restart is noticed.
func TestRestart(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()
	sbCfg := r.sandboxConfig("survivor", false)
	sbID := r.runSandbox(sbCfg)
	keep := r.startContainer(sbID, sbCfg, containerConfig(sbCfg, "keep", "ignore-term"))
	lost := r.startContainer(sbID, sbCfg, containerConfig(sbCfg, "lost", "ignore-term"))
	later := r.startContainer(sbID, sbCfg, containerConfig(sbCfg, "later", "ignore-term"))
	for _, name := range []string{"keep", "lost", "later"} {
		r.waitLog(filepath.Join(sbCfg.GetLogDirectory(), name+"/0.log"), "ignoring SIGTERM")
	}
	_, keepPID := r.status(keep)
	_, lostPID := r.status(lost)
	_, laterPID := r.status(later)
	sbBefore, err := r.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	if err != nil {
		t.Fatal(err)
	}

	r.stop()
	if err := killAndWait(lostPID); err != nil {
		t.Fatal(err)
	}
	r.start()

	sbAfter, err := r.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID})
	if err != nil {
		t.Fatal(err)
	}
	if sbAfter.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || sbAfter.GetStatus().GetNetwork().GetIp() != sbBefore.GetStatus().GetNetwork().GetIp() {
		t.Errorf("sandbox after restart = %v, before %v", sbAfter.GetStatus(), sbBefore.GetStatus())
	}
	if st, pid := r.status(keep); st.GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING || pid != keepPID {
		t.Errorf("kept container after restart: %s pid %d (was %d)", st.GetState(), pid, keepPID)
	}
	if got := r.mustExec(keep, "/bin/sh", "-c", "echo $FROM_IMAGE"); got != "yes\n" {
		t.Errorf("exec in an adopted container = %q", got)
	}
	st, _ := r.status(lost)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 255 || st.GetReason() != "Unknown" ||
		st.GetMessage() != "procri restarted while the container ran" {
		t.Errorf("container that died while procri was down = %v", st)
	}
	if err := killAndWait(laterPID); err != nil {
		t.Fatal(err)
	}
	if st := r.waitExited(later); st.GetExitCode() != 255 || st.GetReason() != "Unknown" {
		t.Errorf("adopted container that died = %v", st)
	}

	// The adopted container stops as any other (SIGKILL after the timeout).
	if _, err := r.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: keep, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if st, _ := r.status(keep); st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("adopted container after stop: %v", st)
	}
	if _, err := r.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
		t.Fatal(err)
	}
}

// killAndWait kills a process and waits (hang guard) until it is gone.
func killAndWait(pid int) error {
	start, ok := procStartTime(pid)
	if !ok {
		return fmt.Errorf("process %d is not running", pid)
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	if err := p.Kill(); err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	deadline := time.Now().Add(time.Minute)
	for sameProcess(pid, start) {
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d still runs a minute after SIGKILL", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// TestStats checks container and pod stats from the cgroups, and that a
// container killed by the cgroup OOM killer is reported OOMKilled.
func TestStats(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()
	sbCfg := r.sandboxConfig("busy", false)
	sbID := r.runSandbox(sbCfg)
	burn := r.startContainer(sbID, sbCfg, containerConfig(sbCfg, "burn", "burn"))
	r.waitLog(filepath.Join(sbCfg.GetLogDirectory(), "burn/0.log"), "burning")

	cs, err := r.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: burn})
	if err != nil {
		t.Fatal(err)
	}
	s := cs.GetStats()
	if s.GetAttributes().GetId() != burn || s.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 || s.GetCpu().GetUsageNanoCores().GetValue() == 0 ||
		s.GetMemory().GetWorkingSetBytes().GetValue() < 16<<20 || s.GetMemory().GetUsageBytes().GetValue() == 0 ||
		s.GetWritableLayer().GetFsId().GetMountpoint() != r.opts.StateDir {
		t.Errorf("container stats = %v", s)
	}
	list, err := r.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{PodSandboxId: sbID}})
	if err != nil || len(list.GetStats()) != 1 || list.GetStats()[0].GetCpu().GetUsageNanoCores().GetValue() == 0 {
		t.Errorf("ListContainerStats = %v, %v", list, err)
	}
	ps, err := r.rt.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: sbID})
	if err != nil {
		t.Fatal(err)
	}
	pl := ps.GetStats().GetLinux()
	if pl.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 || pl.GetMemory().GetWorkingSetBytes().GetValue() == 0 ||
		pl.GetProcess().GetProcessCount().GetValue() < 2 || len(pl.GetContainers()) != 1 || pl.GetNetwork().GetDefaultInterface().GetName() != "eth0" {
		t.Errorf("pod stats = %v", ps.GetStats())
	}
	if l, err := r.rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{}); err != nil || len(l.GetStats()) != 1 {
		t.Errorf("ListPodSandboxStats = %v, %v", l, err)
	}

	// 64 MiB of memory, 512 MiB wanted.
	cfg := containerConfig(sbCfg, "hungry", "alloc", "512")
	cfg.Linux.Resources.MemoryLimitInBytes = 64 << 20
	hungry := r.startContainer(sbID, sbCfg, cfg)
	if st := r.waitExited(hungry); st.GetReason() != "OOMKilled" || st.GetExitCode() != 137 {
		t.Errorf("container over its memory limit = %v", st)
	}
}

// memoryLimit reads the memory limit of a process's cgroup: from the v1
// memory hierarchy, else from cgroup v2.
func memoryLimit(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	var v1, v2 string
	for line := range strings.SplitSeq(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case slices.Contains(strings.Split(parts[1], ","), "memory"):
			v1 = filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes")
		case parts[0] == "0":
			v2 = filepath.Join("/sys/fs/cgroup", parts[2], "memory.max")
		}
	}
	file := v1
	if file == "" {
		file = v2
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("read memory limit: %v", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("memory limit %q: %v", b, err)
	}
	return n
}

// TestSandboxSysctlsAndRollback sets a namespaced sysctl in a pod, and
// checks that sandboxes whose setup fails (a sysctl that cannot be set, no
// network configuration) leave nothing behind and say which step failed.
func TestSandboxSysctlsAndRollback(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()
	host, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.sandboxConfig("sysctl", false)
	cfg.Linux.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "80"}
	id := r.runSandbox(cfg)
	c := r.startContainer(id, cfg, containerConfig(cfg, "app"))
	r.waitLog(filepath.Join(cfg.GetLogDirectory(), "app/0.log"), "serving on")
	if got := r.mustExec(c, "/bin/cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"); got != "80\n" {
		t.Errorf("sysctl in the pod = %q, want 80", got)
	}
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); string(now) != string(host) {
		t.Errorf("the host's sysctl changed from %q to %q", host, now)
	}

	leftovers := func(cfg *runtimeapi.PodSandboxConfig) {
		t.Helper()
		list, err := r.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"app": cfg.GetMetadata().GetName()}}})
		if err != nil || len(list.GetItems()) != 0 {
			t.Errorf("sandboxes listed after a failed run: %v, %v", list, err)
		}
		if pids, err := r.opts.Cgroups.Pids(cfg.GetLinux().GetCgroupParent()); err != nil || len(pids) != 0 {
			t.Errorf("processes left in the pod cgroup: %v, %v", pids, err)
		}
		entries, _ := os.ReadDir(filepath.Join(r.opts.StateDir, sandboxesDir))
		if len(entries) != 1 {
			t.Errorf("sandbox directories: %v, want only the running sandbox's", entries)
		}
	}
	bad := r.sandboxConfig("badsysctl", false)
	bad.Linux.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "not-a-number"}
	_, err = r.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: bad})
	if err == nil || !strings.Contains(err.Error(), "set sysctls") {
		t.Errorf("RunPodSandbox with a bad sysctl = %v, want the failed step named", err)
	}
	leftovers(bad)

	// Without a network configuration, the CNI step fails.
	conf := filepath.Join(r.base, "net.d", "10-critest.conflist")
	if err := os.Rename(conf, conf+".off"); err != nil {
		t.Fatal(err)
	}
	nonet := r.sandboxConfig("nonet", false)
	_, err = r.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: nonet})
	if err == nil || !strings.Contains(err.Error(), "set up network (CNI)") {
		t.Errorf("RunPodSandbox without a network = %v, want the failed step named", err)
	}
	if st, err := r.rt.Status(ctx, &runtimeapi.StatusRequest{}); err != nil || st.GetStatus().GetConditions()[1].GetStatus() {
		t.Errorf("Status without a network configuration = %v, %v; want NetworkReady false", st, err)
	}
	if err := os.Rename(conf+".off", conf); err != nil {
		t.Fatal(err)
	}
	leftovers(nonet)

	// A sysctl that is not namespaced is refused before anything starts.
	vm := r.sandboxConfig("vm", false)
	vm.Linux.Sysctls = map[string]string{"vm.swappiness": "10"}
	if _, err := r.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: vm}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "vm.swappiness") {
		t.Errorf("RunPodSandbox with vm.swappiness = %v", err)
	}
}
