package cri

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// maxExecOutput caps each of ExecSync's outputs, as the CRI asks (CVE-2022-1708).
const maxExecOutput = 16 << 20

// Exit codes of a command that cannot run, as runc and shells report them.
const (
	exitCodeCannotExecute = 126
	exitCodeNotFound      = 127
)

// ExecSync runs a command in the container's namespaces with its user,
// capabilities, environment and working directory. A command that cannot
// start answers exit code 127 (not found) or 126 (cannot execute) with the
// reason in stderr, as runc does, so that exec probes fail rather than
// error; a timeout answers DeadlineExceeded, which the kubelet reports as
// a timed-out probe.
func (s *Server) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	if len(req.GetCmd()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "exec: no command")
	}
	s.mu.Lock()
	c, err := s.containerLocked(req.GetContainerId())
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	running := c.state() == runtimeapi.ContainerState_CONTAINER_RUNNING && c.proc != nil
	var pid int
	if running {
		pid = c.proc.PID()
	}
	l := c.rec.Launch
	s.mu.Unlock()
	if !running {
		return nil, status.Errorf(codes.FailedPrecondition, "exec in container %s: %v", c.rec.ID, errNotRunning)
	}
	timeout := time.Duration(req.GetTimeout()) * time.Second
	res, err := container.Exec(ctx, container.ExecSpec{
		PID:        pid,
		Args:       req.GetCmd(),
		Env:        l.Env,
		Dir:        l.Dir,
		UID:        l.UID,
		GID:        l.GID,
		Groups:     l.Groups,
		Caps:       l.Caps,
		NoNewPrivs: l.NoNewPrivs,
		Timeout:    timeout,
	})
	switch {
	case errors.Is(err, container.ErrTimeout):
		return nil, status.Errorf(codes.DeadlineExceeded, "exec %q in container %s: timed out after %s", strings.Join(req.GetCmd(), " "), c.rec.ID, timeout)
	case err != nil && ctx.Err() != nil:
		return nil, status.FromContextError(ctx.Err()).Err()
	case err != nil:
		// Nothing ran: answer as runc does, an exit code and the reason.
		return &runtimeapi.ExecSyncResponse{Stderr: []byte(err.Error() + "\n"), ExitCode: int32(cannotRunCode(err))}, nil
	}
	return &runtimeapi.ExecSyncResponse{
		Stdout:   capOutput(res.Stdout),
		Stderr:   capOutput(res.Stderr),
		ExitCode: int32(res.ExitCode),
	}, nil
}

// cannotRunCode maps an error starting a command to the exit code a shell
// or runc gives it: 127 when the program does not exist, 126 otherwise
// (it exists but cannot be executed, or the exec step failed). The error
// comes from the container's exec step as text, so its message decides.
func cannotRunCode(err error) int {
	msg := err.Error()
	if errors.Is(err, fs.ErrNotExist) || strings.Contains(msg, "executable file not found") || strings.HasSuffix(msg, "no such file or directory") {
		return exitCodeNotFound
	}
	return exitCodeCannotExecute
}

// capOutput truncates an output to maxExecOutput.
func capOutput(b []byte) []byte {
	if len(b) > maxExecOutput {
		return b[:maxExecOutput]
	}
	return b
}
