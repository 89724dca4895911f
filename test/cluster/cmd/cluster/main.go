// Command cluster runs the local Kubernetes of package cluster: one node on
// this machine, with the upstream components built from their Go modules,
// Debian's etcd, and the process container runtime procri.
//
//	cluster up                  start (or complete) the cluster; prints the kubeconfig
//	cluster down                stop it and remove everything it left, even after a crash
//	cluster status              the daemons, then `kubectl get nodes,pods -A`
//	cluster kubeconfig          print the admin kubeconfig's path
//	cluster build               build (or find in the cache) every program
//	cluster leftovers           what down removes and is still there
//	cluster kubectl -- ARGS     run the built kubectl with the admin kubeconfig
//	cluster image IMAGE PROGRAM [-- ARGS]
//	                            map an image reference to a program of this machine
//
// Run it as root from test/cluster (go run ./cmd/cluster up): the programs
// are built in this module.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sluice-mesh/sluice/test/cluster/build"
	"github.com/sluice-mesh/sluice/test/cluster/cluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmd := newRoot(os.Stdout, os.Stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

// options are the flags every command shares.
type options struct {
	dir, cacheDir string
	verbose       bool
}

func (o *options) config(stderr io.Writer) cluster.Config {
	cfg := cluster.Config{Dir: o.dir, Out: stderr}
	cfg.Cache.Dir = o.cacheDir
	if o.verbose {
		cfg.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:   "cluster",
		Short: "A real Kubernetes on this machine, for Sluice's end-to-end tests and demo",
		Long: `cluster runs a one-node Kubernetes v` + strings.TrimPrefix(build.KubernetesVersion, "v") + ` on this machine: etcd (Debian's
etcd-server), kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet
and kube-proxy built from k8s.io/kubernetes, CoreDNS, and procri, a container
runtime that runs containers as processes of this machine's programs (see
test/cluster/README.md). State, logs and pid files live under --dir; the admin
kubeconfig is <dir>/kubeconfig. It must run as root, from the test/cluster
module (go run ./cmd/cluster ...).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&o.dir, "dir", cluster.DefaultDir(), "state directory (env SLUICE_CLUSTER_DIR)")
	root.PersistentFlags().StringVar(&o.cacheDir, "cache-dir", build.DefaultDir(), "build cache (env SLUICE_CLUSTER_CACHE)")
	root.PersistentFlags().BoolVarP(&o.verbose, "verbose", "v", false, "log details to stderr")

	root.AddCommand(&cobra.Command{
		Use:   "up",
		Short: "Start the cluster (what of it is not running) and wait until it is Ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			unlock, err := lockMachine(cmd.Context(), stderr)
			if err != nil {
				return err
			}
			defer unlock()
			c, err := cluster.Up(cmd.Context(), o.config(stderr))
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "kubeconfig: %s\n", c.Kubeconfig())
			fmt.Fprintf(stdout, "$ kubectl --kubeconfig %s get nodes,pods -A\n", c.Kubeconfig())
			return kubectl(cmd.Context(), o, stdout, stderr, "get", "nodes,pods", "-A", "-o", "wide")
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "down",
		Short: "Stop the cluster and remove everything it left on this machine",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			unlock, err := lockMachine(cmd.Context(), stderr)
			if err != nil {
				return err
			}
			defer unlock()
			cfg := o.config(stderr)
			if err := cluster.Down(cmd.Context(), cfg); err != nil {
				return err
			}
			left, err := cluster.Leftovers(cfg)
			if err != nil {
				return err
			}
			if len(left) > 0 {
				return fmt.Errorf("down left:\n  %s", strings.Join(left, "\n  "))
			}
			fmt.Fprintln(stdout, "cluster down; nothing left")
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show the daemons, then the nodes and pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			apiserver := false
			for _, d := range cluster.Status(o.config(stderr)) {
				state := "not running"
				if d.Running {
					state = fmt.Sprintf("running, pid %d", d.PID)
					apiserver = apiserver || d.Name == "kube-apiserver"
				}
				fmt.Fprintf(stdout, "%-24s %-20s log %s\n", d.Name, state, d.Log)
			}
			if !apiserver {
				return nil
			}
			fmt.Fprintln(stdout)
			return kubectl(cmd.Context(), o, stdout, stderr, "get", "nodes,pods", "-A", "-o", "wide")
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "kubeconfig",
		Short: "Print the admin kubeconfig's path",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(stdout, filepath.Join(o.dir, "kubeconfig"))
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "build",
		Short: "Build (or find in the cache) every program the cluster runs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := o.config(stderr)
			cfg.Cache.Out = stderr
			b, err := cfg.Cache.All(cmd.Context(), cluster.OwnPrograms...)
			if err != nil {
				return err
			}
			for _, name := range build.KubernetesCommands {
				fmt.Fprintln(stdout, b.Kubernetes[name])
			}
			fmt.Fprintln(stdout, b.CoreDNS)
			fmt.Fprintln(stdout, b.CNIDir+"/")
			for _, p := range b.Own {
				fmt.Fprintln(stdout, p)
			}
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "leftovers",
		Short: "List what down removes and is still on this machine",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			left, err := cluster.Leftovers(o.config(stderr))
			for _, l := range left {
				fmt.Fprintln(stdout, l)
			}
			return err
		},
	})
	root.AddCommand(newCmdImage(o, stdout))
	root.AddCommand(&cobra.Command{
		Use:                   "kubectl -- ARGS...",
		Short:                 "Run the built kubectl with the admin kubeconfig",
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return kubectl(cmd.Context(), o, stdout, stderr, args...)
		},
	})
	return root
}

// lockMachine takes the machine's cluster lock (cluster.LockMachine), which
// tests hold while their cluster runs, saying so when it has to wait.
func lockMachine(ctx context.Context, stderr io.Writer) (func(), error) {
	waiting := time.AfterFunc(time.Second, func() {
		fmt.Fprintf(stderr, "waiting for %s: a test's cluster runs\n", cluster.LockPath)
	})
	defer waiting.Stop()
	return cluster.LockMachine(ctx)
}

// kubectl runs the cached kubectl (building it if needed) with the admin
// kubeconfig.
func kubectl(ctx context.Context, o *options, stdout, stderr io.Writer, args ...string) error {
	cache := build.Cache{Dir: o.cacheDir, Out: stderr}
	bins, err := cache.Kubernetes(ctx)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bins["kubectl"], append([]string{"--kubeconfig", filepath.Join(o.dir, "kubeconfig")}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	return cmd.Run()
}

// newCmdImage maps an image reference to a program in the running
// cluster's image table.
func newCmdImage(o *options, stdout io.Writer) *cobra.Command {
	var m cluster.ImageMapping
	cmd := &cobra.Command{
		Use:   "image IMAGE PROGRAM [-- ARGS...]",
		Short: "Map an image reference to a program of this machine in the running cluster",
		Long: `image adds an entry to the running cluster's image table (<dir>/images.yaml),
replacing one for the same image: pods whose containers use IMAGE then run
PROGRAM, with ARGS as the image's default arguments. IMAGE may end in ":*" to
match every tag. The container runtime reads the table again when it changes.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			m.Image, m.Program = args[0], args[1]
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				if dash != 2 {
					return fmt.Errorf("image takes IMAGE PROGRAM, then -- before the arguments")
				}
				m.Args = args[2:]
			} else if len(args) > 2 {
				return fmt.Errorf("image takes IMAGE PROGRAM; put -- before the program's arguments")
			}
			if !filepath.IsAbs(m.Program) {
				return fmt.Errorf("program %q must be an absolute path", m.Program)
			}
			if st, err := os.Stat(m.Program); err != nil {
				return fmt.Errorf("program: %w", err)
			} else if st.IsDir() || st.Mode()&0o111 == 0 {
				return fmt.Errorf("program %s is not an executable file", m.Program)
			}
			if err := cluster.MapImage(o.config(os.Stderr), m); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s -> %s\n", m.Image, m.Program)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&m.Env, "env", nil, "default environment variable KEY=value (repeatable)")
	f.StringVar(&m.User, "user", "", `default user, "uid" or "uid:gid"`)
	f.StringVar(&m.WorkingDir, "workdir", "", "default working directory")
	return cmd
}
