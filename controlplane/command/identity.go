package command

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "github.com/sluice-mesh/sluice/controlplane/api/identity"
	"github.com/sluice-mesh/sluice/controlplane/identity"
	"github.com/sluice-mesh/sluice/controlplane/k8s"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

func init() { subcommands = append(subcommands, newCmdIdentity) }

// identityOptions are the identity service's flags.
type identityOptions struct {
	*commonOptions
	addr              string
	issuerCert        string
	issuerKey         string
	trustAnchors      string
	trustDomain       string
	namespace         string
	serverIdentity    string
	insecurePlaintext bool
	certLifetime      time.Duration
	clockSkew         time.Duration
	reloadInterval    time.Duration
}

func newCmdIdentity() *cobra.Command {
	o := &identityOptions{
		commonOptions:  newCommonOptions(meshmeta.IdentityAdminPort),
		addr:           fmt.Sprintf(":%d", meshmeta.IdentityPort),
		issuerCert:     identity.DefaultIssuerCertFile,
		issuerKey:      identity.DefaultIssuerKeyFile,
		trustAnchors:   identity.DefaultTrustAnchorsFile,
		trustDomain:    meshmeta.DefaultTrustDomain,
		namespace:      meshmeta.DefaultNamespace,
		certLifetime:   identity.DefaultCertLifetime,
		clockSkew:      identity.DefaultClockSkew,
		reloadInterval: identity.DefaultReloadInterval,
	}
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Serve the identity API: certificates for proxies (gRPC sluice.identity.Identity)",
		Long: fmt.Sprintf(`identity is the mesh's certificate authority. A proxy calls Certify with
its identity name, its pod's service-account token (audience %s)
and a certificate signing request; the service checks the token with a
TokenReview, checks that its service account is the one the identity names and
that the request asks for that name alone, and returns a certificate signed by
the issuer, with the issuer as intermediate.

The issuer's certificate and key come from the Secret %s
(keys %s and %s), the trust anchors from the ConfigMap
%s (key %s), mounted as files. The files are
polled every --reload-interval: a new valid issuer is used from then on, an
invalid one is logged and the old one kept. The API is served over TLS with a
certificate for --server-identity that the service issues itself from its
issuer, so that proxies can verify it against the trust anchors.

Its Kubernetes identity needs to create tokenreviews.authentication.k8s.io.`,
			meshmeta.IdentityAudience, identity.IssuerSecretName, identity.IssuerCertKey, identity.IssuerKeyKey,
			identity.TrustRootsConfigMapName, identity.TrustRootsKey),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	o.commonOptions.bind(cmd)
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", o.addr, "address of the identity gRPC server")
	f.StringVar(&o.issuerCert, "issuer-cert", o.issuerCert, "PEM file of the issuer's certificate (then any intermediates up to the anchors)")
	f.StringVar(&o.issuerKey, "issuer-key", o.issuerKey, "PEM file of the issuer's private key")
	f.StringVar(&o.trustAnchors, "trust-anchors", o.trustAnchors, "PEM file of the trust anchors the issuer must chain to")
	f.StringVar(&o.trustDomain, "trust-domain", o.trustDomain, "trust domain that ends every identity name")
	f.StringVar(&o.namespace, "namespace", o.namespace, "namespace of the control plane, for the default --server-identity")
	f.StringVar(&o.serverIdentity, "server-identity", "", "identity of this server's own TLS certificate (default: that of the service account "+meshmeta.IdentityService+" in --namespace)")
	f.BoolVar(&o.insecurePlaintext, "insecure-plaintext", false, "serve the API without TLS (tokens then cross the network in clear)")
	f.DurationVar(&o.certLifetime, "cert-lifetime", o.certLifetime, "lifetime of issued certificates (never beyond the issuer's)")
	f.DurationVar(&o.clockSkew, "clock-skew", o.clockSkew, "how far back issued certificates' NotBefore is set, for peers whose clocks are behind")
	f.DurationVar(&o.reloadInterval, "reload-interval", o.reloadInterval, "how often the issuer and trust anchor files are checked for changes")
	return cmd
}

func (o *identityOptions) validate() error {
	if err := o.commonOptions.validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(o.addr); err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	if o.certLifetime <= 0 {
		return errors.New("--cert-lifetime must be positive")
	}
	if o.clockSkew < 0 {
		return errors.New("--clock-skew must not be negative")
	}
	if o.reloadInterval <= 0 {
		return errors.New("--reload-interval must be positive")
	}
	if o.trustDomain == "" {
		return errors.New("--trust-domain must not be empty")
	}
	return nil
}

func (o *identityOptions) run(ctx context.Context) error {
	if err := o.validate(); err != nil {
		return err
	}
	log := o.logger("identity")
	client, _, err := k8s.NewClient(o.kubeconfig, "sluice-identity")
	if err != nil {
		return err
	}
	reg := newRegistry()
	svc, err := identity.New(identity.Config{
		IssuerCertFile:   o.issuerCert,
		IssuerKeyFile:    o.issuerKey,
		TrustAnchorsFile: o.trustAnchors,
		TrustDomain:      o.trustDomain,
		CertLifetime:     o.certLifetime,
		ClockSkew:        o.clockSkew,
		ReloadInterval:   o.reloadInterval,
		Client:           client,
		Logger:           log,
		Registerer:       reg,
	})
	if err != nil {
		return err
	}
	var opts []grpc.ServerOption
	if !o.insecurePlaintext {
		id := o.serverIdentity
		if id == "" {
			id = meshmeta.IdentityName(meshmeta.IdentityService, o.namespace, o.trustDomain)
		}
		log.Info("serving TLS", "server_identity", id)
		opts = append(opts, grpc.Creds(credentials.NewTLS(svc.ServerTLSConfig(id))))
	}
	gs := grpc.NewServer(opts...)
	pb.RegisterIdentityServer(gs, svc)
	lis, err := listen(o.addr)
	if err != nil {
		return err
	}
	adm, err := o.adminServer(reg, svc.Ready)
	if err != nil {
		lis.Close()
		return err
	}
	return o.commonOptions.run(ctx, log, []server{grpcServer("identity", lis, gs, nil), adm}, svc.Run)
}
