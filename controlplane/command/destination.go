package command

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"k8s.io/klog/v2"

	pb "github.com/sluice-mesh/sluice/controlplane/api/destination"
	"github.com/sluice-mesh/sluice/controlplane/destination"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

func init() { subcommands = append(subcommands, newCmdDestination) }

// destinationOptions are the destination service's flags.
type destinationOptions struct {
	*commonOptions
	addr                  string
	clusterDomain         string
	trustDomain           string
	controlPlaneNamespace string
	queueCapacity         int
	syncTimeout           time.Duration
}

func newCmdDestination() *cobra.Command {
	o := &destinationOptions{
		commonOptions:         newCommonOptions(meshmeta.DestinationAdminPort),
		addr:                  fmt.Sprintf(":%d", meshmeta.DestinationPort),
		clusterDomain:         destination.DefaultClusterDomain,
		trustDomain:           meshmeta.DefaultTrustDomain,
		controlPlaneNamespace: meshmeta.DefaultNamespace,
		queueCapacity:         destination.DefaultQueueCapacity,
		syncTimeout:           2 * time.Minute,
	}
	cmd := &cobra.Command{
		Use:   "destination",
		Short: "Serve the destination API: service discovery for proxies (gRPC sluice.destination.Destination)",
		Long: `destination resolves what proxies ask for (a service name and port, short names
completed with the caller's namespace, a service's cluster IP and port, or a pod
IP and port) into endpoints, and streams their changes: each endpoint with its
weight, metric labels (namespace, service, pod, serviceaccount, owner such as
deployment), the TLS identity of meshed pods and a protocol hint.

It watches Services, EndpointSlices, Pods, ReplicaSets and Jobs in every
namespace; its Kubernetes identity needs get, list and watch on them. /ready
answers 200 once those caches are filled; until then streams are refused with
UNAVAILABLE. On SIGTERM it ends open streams with UNAVAILABLE, so that proxies
reconnect to another replica, and stops.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	o.commonOptions.bind(cmd)
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", o.addr, "address of the destination gRPC server")
	f.StringVar(&o.clusterDomain, "cluster-domain", o.clusterDomain, "the cluster's DNS domain, which ends fully qualified service names")
	f.StringVar(&o.trustDomain, "trust-domain", o.trustDomain, "trust domain that ends the identity names given to meshed endpoints")
	f.StringVar(&o.controlPlaneNamespace, "control-plane-namespace", o.controlPlaneNamespace,
		"namespace of this control plane: pods whose "+meshmeta.LabelControlPlaneNS+" label names it get TLS identities")
	f.IntVar(&o.queueCapacity, "queue-capacity", o.queueCapacity,
		"updates that may wait for one stream's client; a stream whose client falls further behind is ended, and the client reconnects")
	f.DurationVar(&o.syncTimeout, "sync-timeout", o.syncTimeout,
		"how long to wait for the Kubernetes caches to fill at start before giving up (RBAC or connectivity is then wrong)")
	return cmd
}

func (o *destinationOptions) validate() error {
	if err := o.commonOptions.validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	if o.clusterDomain == "" {
		return errors.New("--cluster-domain must not be empty")
	}
	if o.trustDomain == "" {
		return errors.New("--trust-domain must not be empty")
	}
	if o.controlPlaneNamespace == "" {
		return errors.New("--control-plane-namespace must not be empty")
	}
	if o.queueCapacity <= 0 {
		return errors.New("--queue-capacity must be positive")
	}
	if o.syncTimeout <= 0 {
		return errors.New("--sync-timeout must be positive")
	}
	return nil
}

func (o *destinationOptions) run(ctx context.Context) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := o.logger("destination")
	// client-go logs (watch errors, forbidden lists) through klog: send
	// them to the service's log.
	klog.SetSlogLogger(log.With("component", "client-go"))
	client, _, err := k8s.NewClient(o.kubeconfig, "sluice-destination")
	if err != nil {
		return err
	}
	api := k8s.NewAPI(client, destination.Resources()...)
	reg := newRegistry()
	svc, err := destination.New(destination.Config{
		API:                   api,
		ClusterDomain:         o.clusterDomain,
		TrustDomain:           o.trustDomain,
		ControlPlaneNamespace: o.controlPlaneNamespace,
		QueueCapacity:         o.queueCapacity,
		Logger:                log,
		Registerer:            reg,
	})
	if err != nil {
		return err
	}
	gs := grpc.NewServer(
		// Streams live as long as their proxies; pings find the proxies
		// that vanished without closing their connection.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	pb.RegisterDestinationServer(gs, svc)
	lis, err := listen(o.addr)
	if err != nil {
		return err
	}
	var synced atomic.Bool
	ready := func() error {
		if !synced.Load() {
			return errors.New("the Kubernetes caches are not synced yet")
		}
		return nil
	}
	adm, err := o.adminServer(reg, ready)
	if err != nil {
		lis.Close()
		return err
	}
	informers := func(ctx context.Context) error {
		ictx, stop := context.WithCancel(ctx)
		api.Start(ictx)
		defer func() {
			stop()
			api.Wait()
		}()
		sctx, cancel := context.WithTimeout(ictx, o.syncTimeout)
		err := api.Sync(sctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped while starting
			}
			return err
		}
		synced.Store(true)
		log.Info("Kubernetes caches synced")
		<-ctx.Done()
		return nil
	}
	return o.commonOptions.run(ctx, log, []server{grpcServer("destination", lis, gs, svc.Shutdown), adm}, informers)
}
