package pki

import (
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Kubeconfig describes a kubeconfig file with one cluster, one user
// authenticated by a client certificate, and one context, current.
type Kubeconfig struct {
	// Cluster names the cluster and the context.
	Cluster string
	// Server is the API server's URL, e.g. https://127.0.0.1:6443.
	Server string
	// CA is the certificate authority file the server's certificate is
	// checked against.
	CA string
	// User names the user entry; Client is its certificate and key.
	User   string
	Client Pair
}

// WriteKubeconfig writes k to path (mode 0600) with the certificates and
// key embedded, so the file works wherever it is copied.
func WriteKubeconfig(path string, k Kubeconfig) error {
	ca, err := os.ReadFile(k.CA)
	if err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	cert, err := os.ReadFile(k.Client.Cert)
	if err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	key, err := os.ReadFile(k.Client.Key)
	if err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[k.Cluster] = &clientcmdapi.Cluster{Server: k.Server, CertificateAuthorityData: ca}
	cfg.AuthInfos[k.User] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[k.Cluster] = &clientcmdapi.Context{Cluster: k.Cluster, AuthInfo: k.User}
	cfg.CurrentContext = k.Cluster
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("encode kubeconfig %s: %w", path, err)
	}
	return WriteFile(path, data, 0o600)
}
