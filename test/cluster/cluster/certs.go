package cluster

import (
	"fmt"
	"net/netip"

	"github.com/sluice-mesh/sluice/test/cluster/pki"
)

// certs are the cluster's certificates and keys (under <Dir>/pki).
type certs struct {
	ca, frontProxyCA       pki.Pair
	apiserver              pki.Pair
	apiserverKubeletClient pki.Pair
	frontProxyClient       pki.Pair
	serviceAccount         pki.Pair // Cert is the public key
	kubeletServing         map[string]pki.Pair
	controllerManager      pki.Pair
	scheduler              pki.Pair
	kubeProxy, admin       pki.Pair
	kubeletClient          map[string]pki.Pair
}

// apiServerURL is how every component and the admin kubeconfig reach the
// API server.
func apiServerURL() string { return fmt.Sprintf("https://127.0.0.1:%d", APIServerPort) }

// setupPKI makes (or keeps) every certificate and key and writes the
// kubeconfigs: the admin's at <Dir>/kubeconfig, the components' under
// <Dir>/kubeconfigs.
func setupPKI(l layout, nodes []node) (certs, error) {
	dir := l.pki()
	ca, err := pki.EnsureCA(dir, "ca", "sluice-cluster-ca")
	if err != nil {
		return certs{}, err
	}
	fpca, err := pki.EnsureCA(dir, "front-proxy-ca", "sluice-cluster-front-proxy-ca")
	if err != nil {
		return certs{}, err
	}
	c := certs{ca: ca.Pair, frontProxyCA: fpca.Pair, kubeletServing: map[string]pki.Pair{}, kubeletClient: map[string]pki.Pair{}}
	if c.serviceAccount, err = pki.EnsureKey(dir, "sa"); err != nil {
		return certs{}, err
	}
	apiIPs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback(), KubernetesServiceIP}
	for _, n := range nodes {
		apiIPs = append(apiIPs, n.ips()...)
	}
	issue := []struct {
		ca   *pki.CA
		spec pki.CertSpec
		into *pki.Pair
	}{
		{ca, pki.CertSpec{Name: "apiserver", CommonName: "kube-apiserver", Usage: pki.Server, IPs: apiIPs, DNSNames: []string{
			"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + ClusterDomain, "localhost",
		}}, &c.apiserver},
		// The API server's identity towards kubelets (logs, exec, port-forward).
		{ca, pki.CertSpec{Name: "apiserver-kubelet-client", CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Usage: pki.Client}, &c.apiserverKubeletClient},
		// The API server's identity towards aggregated API servers; they trust
		// the front-proxy CA for the X-Remote-* headers it sends.
		{fpca, pki.CertSpec{Name: "front-proxy-client", CommonName: "front-proxy-client", Usage: pki.Client}, &c.frontProxyClient},
		{ca, pki.CertSpec{Name: "admin", CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Usage: pki.Client}, &c.admin},
		{ca, pki.CertSpec{Name: "kube-controller-manager", CommonName: "system:kube-controller-manager", Usage: pki.Client}, &c.controllerManager},
		{ca, pki.CertSpec{Name: "kube-scheduler", CommonName: "system:kube-scheduler", Usage: pki.Client}, &c.scheduler},
		{ca, pki.CertSpec{Name: "kube-proxy", CommonName: "system:kube-proxy", Usage: pki.Client}, &c.kubeProxy},
	}
	for _, is := range issue {
		p, err := is.ca.Issue(dir, is.spec)
		if err != nil {
			return certs{}, err
		}
		*is.into = p
	}
	kubeconfigs := map[string]pki.Kubeconfig{
		l.adminKubeconfig():                     {User: "admin", Client: c.admin},
		l.kubeconfig("kube-controller-manager"): {User: "kube-controller-manager", Client: c.controllerManager},
		l.kubeconfig("kube-scheduler"):          {User: "kube-scheduler", Client: c.scheduler},
		l.kubeconfig("kube-proxy"):              {User: "kube-proxy", Client: c.kubeProxy},
	}
	for _, n := range nodes {
		// The Node authorizer and NodeRestriction know a kubelet by this
		// user and group.
		client, err := ca.Issue(dir, pki.CertSpec{Name: "kubelet-" + n.name + "-client", CommonName: "system:node:" + n.name,
			Organization: []string{"system:nodes"}, Usage: pki.Client})
		if err != nil {
			return certs{}, err
		}
		// The API server checks the kubelet's serving certificate against
		// the cluster CA (--kubelet-certificate-authority).
		serving, err := ca.Issue(dir, pki.CertSpec{Name: "kubelet-" + n.name + "-serving", CommonName: "system:node:" + n.name,
			Organization: []string{"system:nodes"}, Usage: pki.Server,
			DNSNames: []string{n.name, "localhost"}, IPs: append([]netip.Addr{netip.MustParseAddr("127.0.0.1")}, n.ips()...)})
		if err != nil {
			return certs{}, err
		}
		c.kubeletClient[n.name], c.kubeletServing[n.name] = client, serving
		kubeconfigs[l.kubeconfig("kubelet-"+n.name)] = pki.Kubeconfig{User: "system:node:" + n.name, Client: client}
	}
	for path, k := range kubeconfigs {
		k.Cluster, k.Server, k.CA = ClusterName, apiServerURL(), c.ca.Cert
		if err := pki.WriteKubeconfig(path, k); err != nil {
			return certs{}, err
		}
	}
	return c, nil
}
