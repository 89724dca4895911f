// Command procri is the local cluster's container runtime: a CRI server
// (k8s.io/cri-api runtime v1) on a unix socket for the real kubelet, that
// runs containers as processes of this machine (see package cri).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/sluice-mesh/sluice/test/cluster/cri"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cgroup"
	"github.com/sluice-mesh/sluice/test/cluster/cri/cni"
	"github.com/sluice-mesh/sluice/test/cluster/cri/container"
)

// options are procri's flags.
type options struct {
	socket      string
	stateDir    string
	images      string
	cniConfDir  string
	cniBinDirs  []string
	cniCacheDir string
	logLevel    string
}

const long = `procri is a process container runtime: it implements the Kubernetes CRI
(RuntimeService and ImageService, k8s.io/cri-api v1) on a unix socket, so
that the real kubelet (--container-runtime-endpoint=unix://<socket>) runs
pods on this machine without images or a container engine.

  - A pod sandbox is a holder process owning the pod's network, UTS and IPC
    namespaces, in the cgroup the kubelet asks for (cgroupfs driver), with
    its network set up by the CNI plugins of --cni-conf-dir.
  - A container is a program of this machine started in its pod's
    namespaces with a private mount namespace holding the kubelet's mounts,
    the container's user, groups and capabilities, its own cgroup with its
    limits, and its output in the CRI log format at the kubelet's log path.
  - An image is an entry of the image table (--images), a YAML list mapping
    image references to programs:

        - image: sluice.test/echo:v1          # ":*" matches every tag
          program: /abs/path/to/echo
          args: [--listen, ":8080"]            # default args (Docker CMD)
          env: [KEY=value]
          workingDir: /
          user: "65532:65532"

    The table is re-read when it changes; pulling an unmapped image fails
    with a message saying how to map it.

Sandboxes and containers are recorded under --state-dir: a restarted procri
adopts the holders and containers still running. procri does not implement
the streaming calls (kubectl exec/attach/port-forward); exec probes and
postStart hooks use ExecSync, which it implements.`

func main() {
	// Re-executed as a container's init or exec step, this never returns.
	container.Init()

	o := options{}
	cmd := &cobra.Command{
		Use:           "procri",
		Short:         "A CRI container runtime that runs containers as processes of this machine",
		Long:          long,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "socket", "/run/sluice-cluster/procri.sock", "unix socket to serve the CRI on")
	f.StringVar(&o.stateDir, "state-dir", "/var/lib/sluice-cluster/procri", "directory of procri's sandbox and container records")
	f.StringVar(&o.images, "images", "/etc/sluice-cluster/images.yaml", "image table: YAML list of {image, program, args, env, workingDir, user}")
	f.StringVar(&o.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "directory of the CNI network configuration (conflist)")
	f.StringSliceVar(&o.cniBinDirs, "cni-bin-dir", []string{"/opt/cni/bin"}, "directories of the CNI plugin binaries (comma-separated or repeated)")
	f.StringVar(&o.cniCacheDir, "cni-cache-dir", "/var/lib/cni", "CNI result cache directory")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "procri:", err)
		os.Exit(1)
	}
}

// run serves the CRI until ctx is done, then stops gracefully.
func run(ctx context.Context, o options) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("parse --log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	cg, err := cgroup.New(log)
	if err != nil {
		return fmt.Errorf("detect cgroups: %w", err)
	}
	network, err := cni.New(o.cniConfDir, o.cniBinDirs, o.cniCacheDir, log)
	if err != nil {
		return fmt.Errorf("load CNI network: %w", err)
	}
	srv, err := cri.New(cri.Options{StateDir: o.stateDir, ImagesFile: o.images, CNI: network, Cgroups: cg, Log: log})
	if err != nil {
		return err
	}
	defer srv.Close()

	lis, err := listen(o.socket)
	if err != nil {
		return err
	}
	g := grpc.NewServer(grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(32<<20))
	srv.Register(g)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	log.Info("procri serving", "socket", o.socket, "stateDir", o.stateDir, "images", o.images,
		"cgroups", cg.Mode(), "cniConfDir", o.cniConfDir, "cniBinDirs", strings.Join(o.cniBinDirs, ","))
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", o.socket, err)
	case <-ctx.Done():
	}
	log.Info("procri stopping: containers keep running")
	g.GracefulStop()
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve %s: %w", o.socket, err)
	}
	return nil
}

// listen listens on the unix socket, replacing a stale one.
func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return lis, nil
}
