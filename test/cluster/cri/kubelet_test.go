package cri

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
	utilexec "k8s.io/utils/exec"
)

// TestKubeletClient drives procri through the kubelet's own CRI client
// (k8s.io/cri-client), which checks the answers the way the kubelet does
// and turns ExecSync answers into the errors its exec prober reads.
func TestKubeletClient(t *testing.T) {
	r := newTestRuntime(t)
	ctx := t.Context()
	rs, err := remote.NewRemoteRuntimeService("unix://"+r.sock, 10*time.Second, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	is, err := remote.NewRemoteImageService("unix://"+r.sock, 10*time.Second, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := rs.Version(ctx, "0.1.0"); err != nil || v.GetRuntimeName() != RuntimeName {
		t.Fatalf("Version = %v, %v", v, err)
	}
	if st, err := rs.Status(ctx, false); err != nil || len(st.GetStatus().GetConditions()) != 2 {
		t.Fatalf("Status = %v, %v", st, err)
	}

	sbCfg := r.sandboxConfig("kubelet", false)
	sbID, err := rs.RunPodSandbox(ctx, sbCfg, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs.PodSandboxStatus(ctx, sbID, false); err != nil {
		t.Errorf("PodSandboxStatus: %v", err)
	}
	if img, err := is.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: helperImage}, false); err != nil || img.GetImage() != nil {
		t.Errorf("ImageStatus before the pull = %v, %v", img, err)
	}
	ref, err := is.PullImage(ctx, &runtimeapi.ImageSpec{Image: helperImage}, nil, sbCfg)
	if err != nil {
		t.Fatal(err)
	}
	if img, err := is.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: ref}, false); err != nil || img.GetImage().GetId() != ref {
		t.Errorf("ImageStatus by the pulled ref = %v, %v", img, err)
	}
	cfg := containerConfig(sbCfg, "app")
	cfg.Image = &runtimeapi.ImageSpec{Image: ref, UserSpecifiedImage: helperImage}
	id, err := rs.CreateContainer(ctx, sbID, cfg, sbCfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	r.waitLog(filepath.Join(sbCfg.GetLogDirectory(), "app/0.log"), "serving on")
	if _, err := rs.ContainerStatus(ctx, id, false); err != nil {
		t.Errorf("ContainerStatus: %v", err)
	}
	if l, err := rs.ListContainers(ctx, &runtimeapi.ContainerFilter{PodSandboxId: sbID}); err != nil || len(l) != 1 {
		t.Errorf("ListContainers = %v, %v", l, err)
	}

	// What the exec prober sees: success, an exit error with the code
	// (a failed probe), a timed-out command.
	if out, _, err := rs.ExecSync(ctx, id, []string{"/bin/echo", "ok"}, 10*time.Second); err != nil || string(out) != "ok\n" {
		t.Errorf("ExecSync echo = %q, %v", out, err)
	}
	for _, tc := range []struct {
		cmd  []string
		code int
	}{
		{[]string{"/bin/sh", "-c", "exit 3"}, 3},
		{[]string{"no-such-probe"}, 127},
	} {
		_, _, err := rs.ExecSync(ctx, id, tc.cmd, 10*time.Second)
		var exitErr utilexec.ExitError
		if !errors.As(err, &exitErr) || exitErr.ExitStatus() != tc.code {
			t.Errorf("ExecSync %q = %v, want an exit error with code %d", tc.cmd, err, tc.code)
		}
	}
	if _, _, err := rs.ExecSync(ctx, id, []string{"/bin/sleep", "30"}, time.Second); !errors.Is(err, remote.ErrCommandTimedOut) {
		t.Errorf("ExecSync past its timeout = %v, want ErrCommandTimedOut", err)
	}

	if err := rs.StopContainer(ctx, id, 10); err != nil {
		t.Fatal(err)
	}
	if err := rs.RemoveContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := rs.StopPodSandbox(ctx, sbID); err != nil {
		t.Fatal(err)
	}
	if err := rs.RemovePodSandbox(ctx, sbID); err != nil {
		t.Fatal(err)
	}
}
