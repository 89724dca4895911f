package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
	"github.com/sluice-mesh/sluice/test/cluster/cri/crilog"
)

// Container exit reasons, as containerd reports them.
const (
	reasonCompleted  = "Completed"
	reasonError      = "Error"
	reasonOOMKilled  = "OOMKilled"
	reasonStartError = "StartError"
	reasonUnknown    = "Unknown"
	// exitCodeUnknown is the exit code of a container whose exit status
	// was lost (procri restarted while it ran).
	exitCodeUnknown = 255
	// exitCodeStartError is the exit code of a container that could not
	// start.
	exitCodeStartError = 128
)

// ctr is a container.
type ctr struct {
	// op serializes the container's Start, Stop, Remove and Update.
	op sync.Mutex
	// config is immutable.
	config *runtimeapi.ContainerConfig
	dir    string

	// The rest is guarded by Server.mu.
	rec       containerRecord
	resources *runtimeapi.LinuxContainerResources
	// proc is the running process, nil before start.
	proc proc
	// exited is closed once the exit is recorded; nil before start.
	exited chan struct{}
	// out is the log while procri copies the output into it.
	out *logOutput
}

// logOutput is a container's log file and the streams its output goes to.
type logOutput struct {
	f       *crilog.File
	streams []io.WriteCloser
}

// writers are the stdout and stderr writers (discarding without a log).
func (o *logOutput) writers() (stdout, stderr io.Writer) {
	if o == nil {
		return io.Discard, io.Discard
	}
	return o.streams[0], o.streams[1]
}

// close flushes the streams' partial lines and closes the file.
func (o *logOutput) close() {
	if o == nil {
		return
	}
	for _, w := range o.streams {
		_ = w.Close()
	}
	_ = o.f.Close()
}

// state is the container's state; s.mu must be held.
func (c *ctr) state() runtimeapi.ContainerState { return parseContainerState(c.rec.State) }

// save persists the record; s.mu must be held.
func (c *ctr) save() error {
	res, err := marshalProto(c.resources)
	if err != nil {
		return err
	}
	c.rec.Resources = res
	return writeJSON(filepath.Join(c.dir, containerFile), c.rec)
}

// getContainer finds a container by id or unique id prefix.
func (s *Server) getContainer(id string) (*ctr, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.containerLocked(id)
}

// containerLocked is getContainer with s.mu held.
func (s *Server) containerLocked(id string) (*ctr, error) {
	return lookupID(s.containers, "container", id)
}

// CreateContainer validates the config, resolves the image and records the
// container; unsupported fields fail with a message saying what procri
// does not do.
func (s *Server) CreateContainer(_ context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	sb, err := s.getSandbox(req.GetPodSandboxId())
	if err != nil {
		return nil, err
	}
	cfg := req.GetConfig()
	name := cfg.GetMetadata().GetName()
	if err := validateContainer(cfg, sb.config); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "create container %s: %v", name, err)
	}
	img, err := s.resolveForContainer(cfg.GetImage().GetImage())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "create container %s: %v", name, err)
	}
	l, err := containerLaunch(cfg, sb.config, sb.dir, img)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "create container %s: %v", name, err)
	}

	id := newID()
	c := &ctr{
		config:    proto.Clone(cfg).(*runtimeapi.ContainerConfig),
		dir:       filepath.Join(s.opts.StateDir, containersDir, id),
		resources: proto.Clone(cfg.GetLinux().GetResources()).(*runtimeapi.LinuxContainerResources),
		rec: containerRecord{
			ID:        id,
			SandboxID: sb.rec.ID,
			ImageRef:  img.ref,
			ImageID:   img.id,
			CreatedAt: time.Now().UnixNano(),
			State:     containerStateName(runtimeapi.ContainerState_CONTAINER_CREATED),
			Launch:    l,
		},
	}
	if c.resources == nil {
		c.resources = &runtimeapi.LinuxContainerResources{}
	}
	if cfg.GetLogPath() != "" && sb.config.GetLogDirectory() != "" {
		c.rec.LogPath = filepath.Join(sb.config.GetLogDirectory(), cfg.GetLogPath())
	}
	if c.rec.Config, err = marshalProto(cfg); err != nil {
		return nil, status.Errorf(codes.Internal, "create container %s: %v", name, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if !sb.ready() {
		return nil, status.Errorf(codes.FailedPrecondition, "create container %s: pod sandbox %s is not ready", name, sb.rec.ID)
	}
	for _, other := range s.sandboxContainers(sb.rec.ID) {
		m := other.config.GetMetadata()
		if m.GetName() == name && m.GetAttempt() == cfg.GetMetadata().GetAttempt() {
			return nil, status.Errorf(codes.AlreadyExists, "create container %s: container %s already has name %s attempt %d in pod sandbox %s", name, other.rec.ID, name, m.GetAttempt(), sb.rec.ID)
		}
	}
	c.rec.Cgroup = sb.rec.CgroupParent + "/" + id
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "create container %s: %v", name, err)
	}
	if err := c.save(); err != nil {
		_ = os.RemoveAll(c.dir)
		return nil, status.Errorf(codes.Internal, "create container %s: %v", name, err)
	}
	s.containers[id] = c
	s.log.Info("container created", "container", id, "name", name, "sandbox", sb.rec.ID, "image", img.ref, "args", l.Args)
	return &runtimeapi.CreateContainerResponse{ContainerId: id}, nil
}

// StartContainer creates the container's cgroup with its limits, opens its
// log and starts its program in the sandbox's namespaces. A start that
// fails leaves the container EXITED with reason StartError and the error
// as message, as containerd does.
func (s *Server) StartContainer(_ context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	c, err := s.getContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	c.op.Lock()
	defer c.op.Unlock()
	s.mu.Lock()
	st := c.state()
	sb := s.sandboxes[c.rec.SandboxID]
	var holder proc
	ready := false
	if sb != nil {
		holder, ready = sb.holder, sb.ready()
	}
	s.mu.Unlock()
	if st != runtimeapi.ContainerState_CONTAINER_CREATED {
		return nil, status.Errorf(codes.FailedPrecondition, "start container %s: it is %s, not CREATED", c.rec.ID, st)
	}
	if !ready || holder == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "start container %s: its pod sandbox %s is not ready", c.rec.ID, c.rec.SandboxID)
	}
	log := s.log.With("container", c.rec.ID, "name", c.config.GetMetadata().GetName())
	p, out, oomBase, err := s.startProcess(c, holder.PID(), log)
	if err != nil {
		s.mu.Lock()
		c.rec.State = containerStateName(runtimeapi.ContainerState_CONTAINER_EXITED)
		c.rec.FinishedAt = time.Now().UnixNano()
		c.rec.ExitCode, c.rec.Reason, c.rec.Message = exitCodeStartError, reasonStartError, err.Error()
		if serr := c.save(); serr != nil {
			log.Error("record container", "err", serr)
		}
		s.mu.Unlock()
		log.Warn("container failed to start", "err", err)
		return nil, status.Errorf(codes.Unknown, "start container %s: %v", c.config.GetMetadata().GetName(), err)
	}
	start, _ := procStartTime(p.PID())
	s.mu.Lock()
	c.proc, c.out = childProc{p}, out
	c.rec.OOMKillsAtStart = oomBase
	c.exited = make(chan struct{})
	c.rec.PID, c.rec.PIDStart = p.PID(), start
	c.rec.StartedAt = time.Now().UnixNano()
	c.rec.State = containerStateName(runtimeapi.ContainerState_CONTAINER_RUNNING)
	err = c.save()
	s.mu.Unlock()
	go s.watchContainer(c, c.proc)
	if err != nil {
		log.Error("record container", "err", err)
	}
	log.Info("container started", "pid", p.PID(), "cgroup", c.rec.Cgroup)
	return &runtimeapi.StartContainerResponse{}, nil
}

// startProcess creates the container's cgroup and log and starts its
// program; it returns the process, its log and the cgroup's OOM kill count
// before the start. On failure nothing is left behind but the log file.
func (s *Server) startProcess(c *ctr, sandboxPID int, log *slog.Logger) (*container.Process, *logOutput, uint64, error) {
	s.mu.Lock()
	res := cgroupResources(c.resources)
	l := c.rec.Launch
	s.mu.Unlock()
	cg := c.rec.Cgroup
	if err := s.opts.Cgroups.Create(cg, res); err != nil {
		return nil, nil, 0, fmt.Errorf("create cgroup %s: %w", cg, err)
	}
	var oomBase uint64
	if st, err := s.opts.Cgroups.Stats(cg); err == nil {
		oomBase = st.OOMKills
	}
	var out *logOutput
	if c.rec.LogPath != "" {
		f, err := crilog.Open(c.rec.LogPath)
		if err != nil {
			_ = s.opts.Cgroups.Remove(cg)
			return nil, nil, 0, fmt.Errorf("open log %s: %w", c.rec.LogPath, err)
		}
		out = &logOutput{f: f, streams: []io.WriteCloser{f.Stream("stdout"), f.Stream("stderr")}}
	}
	stdout, stderr := out.writers()
	p, err := container.Start(container.Spec{
		ID:           c.rec.ID,
		StateDir:     c.dir,
		SandboxPID:   sandboxPID,
		Args:         l.Args,
		Env:          l.Env,
		Dir:          l.Dir,
		UID:          l.UID,
		GID:          l.GID,
		Groups:       l.Groups,
		Caps:         l.Caps,
		NoNewPrivs:   l.NoNewPrivs,
		ReadOnlyRoot: l.ReadOnlyRoot,
		Mounts:       l.Mounts,
		OOMScoreAdj:  l.OOMScoreAdj,
		Stdout:       stdout,
		Stderr:       stderr,
		Cgroup:       func(pid int) error { return s.opts.Cgroups.Add(cg, pid) },
		Log:          log,
	})
	if err != nil {
		out.close()
		ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
		defer cancel()
		_ = s.opts.Cgroups.Kill(ctx, cg)
		_ = s.opts.Cgroups.Remove(cg)
		return nil, nil, 0, err
	}
	return p, out, oomBase, nil
}

// exitReason is containerd's reason for an exit.
func exitReason(code int, oom bool) string {
	switch {
	case oom:
		return reasonOOMKilled
	case code == 0:
		return reasonCompleted
	}
	return reasonError
}

// watchContainer records the container's exit: it kills what is left in
// its cgroup, tells OOM kills from the cgroup's counter and closes the log.
func (s *Server) watchContainer(c *ctr, p proc) {
	select {
	case <-p.Done():
	case <-s.stop:
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
	defer cancel()
	if err := s.opts.Cgroups.Kill(ctx, c.rec.Cgroup); err != nil {
		s.log.Warn("kill what is left of an exited container", "container", c.rec.ID, "err", err)
	}
	st, known := p.Exit()
	oom := false
	if stats, err := s.opts.Cgroups.Stats(c.rec.Cgroup); err == nil {
		oom = stats.OOMKills > c.rec.OOMKillsAtStart
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Done means the output was copied: flush the partial lines.
	c.out.close()
	c.out = nil
	if s.closed {
		return
	}
	at := st.At
	if at.IsZero() {
		at = time.Now()
	}
	c.rec.State = containerStateName(runtimeapi.ContainerState_CONTAINER_EXITED)
	c.rec.FinishedAt = at.UnixNano()
	if known {
		c.rec.ExitCode = int32(st.Code)
		c.rec.Reason = exitReason(st.Code, oom)
	} else {
		c.rec.ExitCode, c.rec.Reason = exitCodeUnknown, reasonUnknown
		c.rec.Message = "procri restarted while the container ran: its exit status is unknown"
		if oom {
			c.rec.Reason = reasonOOMKilled
		}
	}
	if err := c.save(); err != nil {
		s.log.Error("record container", "container", c.rec.ID, "err", err)
	}
	close(c.exited)
	s.log.Info("container exited", "container", c.rec.ID, "code", c.rec.ExitCode, "reason", c.rec.Reason)
}

// StopContainer sends the stop signal (SIGTERM unless the container sets
// another), waits up to the timeout, then kills everything in the
// container's cgroup. Stopping a container that does not run succeeds.
func (s *Server) StopContainer(ctx context.Context, req *runtimeapi.StopContainerRequest) (*runtimeapi.StopContainerResponse, error) {
	c, err := s.getContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if err := s.stopContainer(ctx, c, time.Duration(req.GetTimeout())*time.Second); err != nil {
		return nil, status.Errorf(codes.Unknown, "stop container %s: %v", c.rec.ID, err)
	}
	return &runtimeapi.StopContainerResponse{}, nil
}

// killContainer stops c at once (SIGKILL to its cgroup).
func (s *Server) killContainer(ctx context.Context, c *ctr) error {
	return s.stopContainer(ctx, c, 0)
}

// stopContainer is StopContainer on a found container.
func (s *Server) stopContainer(ctx context.Context, c *ctr, timeout time.Duration) error {
	c.op.Lock()
	defer c.op.Unlock()
	s.mu.Lock()
	p, exited, st := c.proc, c.exited, c.state()
	sig := syscall.Signal(c.rec.Launch.StopSignal)
	s.mu.Unlock()
	if st != runtimeapi.ContainerState_CONTAINER_RUNNING || p == nil {
		return nil
	}
	if sig == 0 {
		sig = unix.SIGTERM
	}
	if timeout > 0 {
		if err := p.Signal(sig); err != nil {
			s.log.Warn("send stop signal", "container", c.rec.ID, "signal", sig, "err", err)
		}
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-exited:
			return nil
		case <-t.C:
			s.log.Info("container ignored its stop signal: killing it", "container", c.rec.ID, "signal", sig, "timeout", timeout)
		case <-ctx.Done():
			return fmt.Errorf("wait for exit after %s: %w", sig, ctx.Err())
		}
	}
	_ = p.Signal(unix.SIGKILL)
	kctx, cancel := context.WithTimeout(ctx, killTimeout)
	defer cancel()
	if err := s.opts.Cgroups.Kill(kctx, c.rec.Cgroup); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", c.rec.Cgroup, err)
	}
	select {
	case <-exited:
		return nil
	case <-kctx.Done():
		return fmt.Errorf("wait for exit after SIGKILL: %w", kctx.Err())
	}
}

// RemoveContainer kills the container if it runs and removes its cgroup,
// directory and record (its log file is the kubelet's to remove). Removing
// an unknown container succeeds.
func (s *Server) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	c, err := s.getContainer(req.GetContainerId())
	if status.Code(err) == codes.NotFound {
		return &runtimeapi.RemoveContainerResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := s.removeContainer(ctx, c); err != nil {
		return nil, status.Errorf(codes.Unknown, "remove container %s: %v", c.rec.ID, err)
	}
	return &runtimeapi.RemoveContainerResponse{}, nil
}

// removeContainer is RemoveContainer on a found container.
func (s *Server) removeContainer(ctx context.Context, c *ctr) error {
	if err := s.killContainer(ctx, c); err != nil {
		return err
	}
	c.op.Lock()
	defer c.op.Unlock()
	if err := s.opts.Cgroups.Remove(c.rec.Cgroup); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", c.rec.Cgroup, err)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("remove state: %w", err)
	}
	s.mu.Lock()
	delete(s.containers, c.rec.ID)
	delete(s.cpu, c.rec.Cgroup)
	s.mu.Unlock()
	s.log.Info("container removed", "container", c.rec.ID)
	return nil
}

// imageSpec is the image spec a container reports: its normalized
// reference, as containerd reports the image's first tag.
func (c *ctr) imageSpec() *runtimeapi.ImageSpec {
	return &runtimeapi.ImageSpec{
		Image:              c.rec.ImageRef,
		Annotations:        c.config.GetImage().GetAnnotations(),
		UserSpecifiedImage: c.config.GetImage().GetUserSpecifiedImage(),
	}
}

// containerStatus is the CRI status of c; s.mu must be held.
func (c *ctr) containerStatus() *runtimeapi.ContainerStatus {
	sig := runtimeapi.Signal_SIGTERM
	if c.config.GetStopSignal() != runtimeapi.Signal_RUNTIME_DEFAULT {
		sig = c.config.GetStopSignal()
	}
	groups := make([]int64, len(c.rec.Launch.Groups))
	for i, g := range c.rec.Launch.Groups {
		groups[i] = int64(g)
	}
	return &runtimeapi.ContainerStatus{
		Id:          c.rec.ID,
		Metadata:    c.config.GetMetadata(),
		State:       c.state(),
		CreatedAt:   c.rec.CreatedAt,
		StartedAt:   c.rec.StartedAt,
		FinishedAt:  c.rec.FinishedAt,
		ExitCode:    c.rec.ExitCode,
		Image:       c.imageSpec(),
		ImageRef:    c.rec.ImageID,
		ImageId:     c.rec.ImageID,
		Reason:      c.rec.Reason,
		Message:     c.rec.Message,
		Labels:      c.config.GetLabels(),
		Annotations: c.config.GetAnnotations(),
		Mounts:      c.config.GetMounts(),
		LogPath:     c.rec.LogPath,
		Resources:   &runtimeapi.ContainerResources{Linux: proto.Clone(c.resources).(*runtimeapi.LinuxContainerResources)},
		User: &runtimeapi.ContainerUser{Linux: &runtimeapi.LinuxContainerUser{
			Uid: int64(c.rec.Launch.UID), Gid: int64(c.rec.Launch.GID), SupplementalGroups: groups,
		}},
		StopSignal: sig,
	}
}

// ContainerStatus answers the container's state, times, exit code and
// reason, image, labels, annotations, mounts, log path, resources and user.
func (s *Server) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.containerLocked(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: c.containerStatus()}
	if req.GetVerbose() {
		info, _ := json.Marshal(map[string]any{
			"pid":      c.rec.PID,
			"sandbox":  c.rec.SandboxID,
			"cgroup":   c.rec.Cgroup,
			"launch":   c.rec.Launch,
			"stateDir": c.dir,
		})
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

// ListContainers lists the containers matching the filter (id or id
// prefix, state, sandbox id or prefix, labels).
func (s *Server) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	f := req.GetFilter()
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &runtimeapi.ListContainersResponse{}
	for _, id := range sortedKeys(s.containers) {
		c := s.containers[id]
		if !matchID(id, f.GetId()) || !matchID(c.rec.SandboxID, f.GetPodSandboxId()) ||
			(f.GetState() != nil && f.GetState().GetState() != c.state()) || !matchLabels(c.config.GetLabels(), f.GetLabelSelector()) {
			continue
		}
		resp.Containers = append(resp.Containers, &runtimeapi.Container{
			Id:           id,
			PodSandboxId: c.rec.SandboxID,
			Metadata:     c.config.GetMetadata(),
			Image:        c.imageSpec(),
			ImageRef:     c.rec.ImageID,
			ImageId:      c.rec.ImageID,
			State:        c.state(),
			CreatedAt:    c.rec.CreatedAt,
			Labels:       c.config.GetLabels(),
			Annotations:  c.config.GetAnnotations(),
		})
	}
	return resp, nil
}

// UpdateContainerResources records the new resources and applies them to
// the cgroup of a running container.
func (s *Server) UpdateContainerResources(_ context.Context, req *runtimeapi.UpdateContainerResourcesRequest) (*runtimeapi.UpdateContainerResourcesResponse, error) {
	c, err := s.getContainer(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if req.GetWindows() != nil {
		return nil, status.Errorf(codes.InvalidArgument, "update container %s: procri runs Linux processes only: the update has Windows resources", c.rec.ID)
	}
	res := req.GetLinux()
	if res == nil {
		return &runtimeapi.UpdateContainerResourcesResponse{}, nil
	}
	for _, h := range res.GetHugepageLimits() {
		if h.GetLimit() > 0 {
			return nil, status.Errorf(codes.InvalidArgument, "update container %s: hugepage limit %s=%d is not supported by procri", c.rec.ID, h.GetPageSize(), h.GetLimit())
		}
	}
	if len(res.GetUnified()) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "update container %s: unified (cgroup v2) resources are not supported by procri", c.rec.ID)
	}
	c.op.Lock()
	defer c.op.Unlock()
	s.mu.Lock()
	running := c.state() == runtimeapi.ContainerState_CONTAINER_RUNNING
	s.mu.Unlock()
	if running {
		if err := s.opts.Cgroups.Update(c.rec.Cgroup, cgroupResources(res)); err != nil {
			return nil, status.Errorf(codes.Unknown, "update container %s: %v", c.rec.ID, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.resources = proto.Clone(res).(*runtimeapi.LinuxContainerResources)
	if err := c.save(); err != nil {
		return nil, status.Errorf(codes.Internal, "update container %s: %v", c.rec.ID, err)
	}
	return &runtimeapi.UpdateContainerResourcesResponse{}, nil
}

// ReopenContainerLog reopens the log file of a running container (after
// the kubelet rotated it).
func (s *Server) ReopenContainerLog(_ context.Context, req *runtimeapi.ReopenContainerLogRequest) (*runtimeapi.ReopenContainerLogResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.containerLocked(req.GetContainerId())
	if err != nil {
		return nil, err
	}
	if c.state() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return nil, status.Errorf(codes.FailedPrecondition, "reopen log of container %s: it is not running", c.rec.ID)
	}
	if c.out == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "reopen log of container %s: procri restarted since the container started, so its output is no longer collected", c.rec.ID)
	}
	if err := c.out.f.Reopen(); err != nil {
		return nil, status.Errorf(codes.Unknown, "reopen log of container %s: %v", c.rec.ID, err)
	}
	return &runtimeapi.ReopenContainerLogResponse{}, nil
}

// errNotRunning says an exec target does not run.
var errNotRunning = errors.New("container is not running")
