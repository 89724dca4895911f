package cri

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// load reads what an earlier procri recorded under the state directory. A
// holder still running is adopted and its sandbox stays as recorded (a
// READY sandbox whose holder is gone becomes NOTREADY); a container still
// running is adopted and watched until it exits; one whose process is gone
// becomes EXITED with exit code 255 and reason Unknown.
func (s *Server) load() error {
	var pf pulledFile
	switch err := readJSON(filepath.Join(s.opts.StateDir, imagesFile), &pf); {
	case err == nil:
		for ref, id := range pf.Pulled {
			s.pulled[ref] = id
		}
	case !errors.Is(err, os.ErrNotExist):
		s.log.Warn("pulled images forgotten", "err", err)
	}
	skip := func(kind string) func(id string, err error) {
		return func(id string, err error) {
			s.log.Warn("unreadable record left alone", "kind", kind, "id", id, "err", err)
		}
	}
	if err := readDirRecords(filepath.Join(s.opts.StateDir, sandboxesDir), sandboxFile, s.loadSandbox, skip("sandbox")); err != nil {
		return err
	}
	return readDirRecords(filepath.Join(s.opts.StateDir, containersDir), containerFile, s.loadContainer, skip("container"))
}

// loadSandbox reads one sandbox record and adopts its holder.
func (s *Server) loadSandbox(id, path string) error {
	sb := &sandbox{config: &runtimeapi.PodSandboxConfig{}, dir: filepath.Dir(path)}
	if err := readJSON(path, &sb.rec); err != nil {
		return err
	}
	if sb.rec.ID != id {
		return fmt.Errorf("record of %s is in the directory of %s", sb.rec.ID, id)
	}
	if err := unmarshalProto(sb.rec.Config, sb.config); err != nil {
		return err
	}
	if sb.rec.HolderPID != 0 {
		a, err := adopt(sb.rec.HolderPID, sb.rec.HolderStart, s.stop)
		switch {
		case err == nil:
			sb.holder = a
			go s.watchHolder(sb, a)
		case errors.Is(err, errGone):
		default:
			s.log.Warn("cannot watch sandbox holder", "sandbox", id, "pid", sb.rec.HolderPID, "err", err)
		}
	}
	if sb.ready() && sb.holder == nil {
		s.log.Warn("pod sandbox holder exited while procri was down", "sandbox", id)
		sb.rec.State = sandboxStateName(runtimeapi.PodSandboxState_SANDBOX_NOTREADY)
		if err := sb.save(); err != nil {
			return err
		}
	}
	s.sandboxes[id] = sb
	s.log.Info("pod sandbox loaded", "sandbox", id, "state", sb.rec.State, "holder", sb.rec.HolderPID)
	return nil
}

// loadContainer reads one container record and adopts its process.
func (s *Server) loadContainer(id, path string) error {
	c := &ctr{config: &runtimeapi.ContainerConfig{}, resources: &runtimeapi.LinuxContainerResources{}, dir: filepath.Dir(path)}
	if err := readJSON(path, &c.rec); err != nil {
		return err
	}
	if c.rec.ID != id {
		return fmt.Errorf("record of %s is in the directory of %s", c.rec.ID, id)
	}
	if err := unmarshalProto(c.rec.Config, c.config); err != nil {
		return err
	}
	if err := unmarshalProto(c.rec.Resources, c.resources); err != nil {
		return err
	}
	if c.state() == runtimeapi.ContainerState_CONTAINER_RUNNING {
		a, err := adopt(c.rec.PID, c.rec.PIDStart, s.stop)
		switch {
		case err == nil:
			c.proc, c.exited = a, make(chan struct{})
			go s.watchContainer(c, a)
		default:
			if !errors.Is(err, errGone) {
				s.log.Warn("cannot watch container", "container", id, "pid", c.rec.PID, "err", err)
			}
			c.rec.State = containerStateName(runtimeapi.ContainerState_CONTAINER_EXITED)
			c.rec.FinishedAt = time.Now().UnixNano()
			c.rec.ExitCode, c.rec.Reason = exitCodeUnknown, reasonUnknown
			c.rec.Message = "procri restarted while the container ran"
			if err := c.save(); err != nil {
				return err
			}
		}
	}
	s.containers[id] = c
	s.log.Info("container loaded", "container", id, "state", c.rec.State, "pid", c.rec.PID)
	return nil
}
