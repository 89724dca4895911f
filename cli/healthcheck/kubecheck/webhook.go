package kubecheck

import (
	"context"
	"crypto/x509"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/cli/healthcheck"
	"github.com/sluice-mesh/sluice/cli/install"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/pki"
)

// The chart's names of the proxy injector's webhook.
const (
	// injectorTLSSecret holds the injector's serving certificate.
	injectorTLSSecret = "sluice-proxy-injector-tls"
)

// WebhookConfigName is the chart's MutatingWebhookConfiguration for the
// control plane in namespace ns.
func WebhookConfigName(ns string) string { return "sluice-" + ns + "-proxy-injector" }

func webhookCheckers(o Options) []healthcheck.Checker {
	ns := o.Namespace
	return []healthcheck.Checker{
		{
			ID:          CheckWebhookConfig,
			Description: "proxy injector webhook's caBundle verifies the injector's certificate",
			Hint: fmt.Sprintf("the API server calls the webhook only if the caBundle of mutatingwebhookconfiguration %s "+
				"verifies the certificate of secret %s/%s for %s.%s.svc; `meshctl upgrade` installs a matching pair "+
				"(or give both in proxyInjector.tls)", WebhookConfigName(ns), ns, injectorTLSSecret, meshmeta.InjectorService, ns),
			Requires: []healthcheck.CheckID{CheckNamespace},
			Check: func(ctx context.Context, s *healthcheck.State) error {
				return checkWebhookConfig(ctx, s.Cluster, o.now())
			},
		},
		{
			Description: "proxy injector webhook injects pods",
			Hint: fmt.Sprintf("the webhook did not add the proxy to a pod created in a dry run; with failurePolicy Ignore "+
				"pods are then created without a proxy: see `kubectl -n %s logs deploy/sluice-proxy-injector`, and the API "+
				"server's log for why its call failed", ns),
			Requires:      []healthcheck.CheckID{CheckWebhookConfig},
			RetryDeadline: o.Wait,
			Check:         withTimeout(checkWebhookInjects),
			Detail:        func(s *healthcheck.State) string { return "dry run in namespace " + dryRunNamespace(s.Cluster) },
		},
	}
}

// checkWebhookConfig fails unless the chart's webhook points at the
// injector's service and its caBundle verifies the injector's serving
// certificate for the service's name.
func checkWebhookConfig(ctx context.Context, cl *healthcheck.Cluster, now time.Time) error {
	name := WebhookConfigName(cl.Namespace)
	mwc, err := cl.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return notFound(err, "mutatingwebhookconfiguration", "", name)
	}
	if len(mwc.Webhooks) == 0 {
		return fmt.Errorf("mutatingwebhookconfiguration %s has no webhook", name)
	}
	cc := mwc.Webhooks[0].ClientConfig
	if cc.Service == nil || cc.Service.Name != meshmeta.InjectorService || cc.Service.Namespace != cl.Namespace {
		return fmt.Errorf("mutatingwebhookconfiguration %s does not call service %s/%s", name, cl.Namespace, meshmeta.InjectorService)
	}
	roots, err := pki.ParseCertificates(cc.CABundle)
	if err != nil {
		return fmt.Errorf("caBundle of mutatingwebhookconfiguration %s: %w", name, err)
	}
	sec, err := cl.Client.CoreV1().Secrets(cl.Namespace).Get(ctx, injectorTLSSecret, metav1.GetOptions{})
	if err != nil {
		return notFound(err, "secret", cl.Namespace, injectorTLSSecret)
	}
	certs, err := pki.ParseCertificates(sec.Data[corev1.TLSCertKey])
	if err != nil {
		return fmt.Errorf("secret %s/%s, key %s: %w", cl.Namespace, injectorTLSSecret, corev1.TLSCertKey, err)
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	host := meshmeta.InjectorService + "." + cl.Namespace + ".svc"
	_, err = certs[0].Verify(x509.VerifyOptions{
		DNSName: host, Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("the caBundle of mutatingwebhookconfiguration %s does not verify the certificate of secret %s/%s for %s: %w",
			name, cl.Namespace, injectorTLSSecret, host, err)
	}
	return nil
}

// dryRunNamespace is where the webhook check creates its pod: the
// kubeconfig context's namespace, unless the webhook leaves it alone (the
// control plane's, kube-system), else default.
func dryRunNamespace(cl *healthcheck.Cluster) string {
	ns := cl.ContextNamespace
	if ns == "" || ns == cl.Namespace || ns == metav1.NamespaceSystem {
		return metav1.NamespaceDefault
	}
	return ns
}

// checkWebhookInjects fails unless a pod annotated for injection, created
// in a server-side dry run, comes back with the proxy.
func checkWebhookInjects(ctx context.Context, s *healthcheck.State) error {
	return install.WebhookInjects(ctx, s.Cluster.Client, dryRunNamespace(s.Cluster))
}
