package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"k8s.io/client-go/rest"
)

// etcdPath is Debian's etcd-server program (package etcd-server).
const etcdPath = "/usr/bin/etcd"

func etcdURL(port int) string { return fmt.Sprintf("http://127.0.0.1:%d", port) }

// etcdDaemon is a one-member etcd on loopback, plain HTTP: only the API
// server, on this machine, talks to it.
func etcdDaemon(l layout) *daemon {
	return &daemon{
		name: "etcd",
		path: etcdPath,
		args: []string{
			"--name=sluice",
			"--data-dir=" + l.path("etcd"),
			"--listen-client-urls=" + etcdURL(etcdClientPort),
			"--advertise-client-urls=" + etcdURL(etcdClientPort),
			"--listen-peer-urls=" + etcdURL(etcdPeerPort),
			"--initial-advertise-peer-urls=" + etcdURL(etcdPeerPort),
			"--initial-cluster=sluice=" + etcdURL(etcdPeerPort),
			"--initial-cluster-state=new",
			// Keep the database small on a shared disk.
			"--auto-compaction-mode=periodic",
			"--auto-compaction-retention=5m",
			"--quota-backend-bytes=2147483648",
			"--logger=zap",
			"--log-level=warn",
		},
		ready: func(ctx context.Context) error {
			body, err := httpGet(ctx, http.DefaultClient, etcdURL(etcdClientPort)+"/health")
			if err != nil {
				return err
			}
			var h struct {
				Health string `json:"health"`
			}
			if err := json.Unmarshal(body, &h); err != nil || h.Health != "true" {
				return fmt.Errorf("etcd /health says %s", strings.TrimSpace(string(body)))
			}
			return nil
		},
		timeout: 30 * time.Second,
	}
}

// apiserverDaemon is kube-apiserver on every address of the machine at
// APIServerPort, advertising node 0's address (the kubernetes Service's
// endpoint, which pods reach through kube-proxy).
func apiserverDaemon(l layout, path string, c certs, n node, admin *rest.Config) *daemon {
	return &daemon{
		name: "kube-apiserver",
		path: path,
		args: []string{
			"--etcd-servers=" + etcdURL(etcdClientPort),
			fmt.Sprintf("--secure-port=%d", APIServerPort),
			"--advertise-address=" + n.ipv4.String(),
			"--cert-dir=" + l.path("kube-apiserver"),
			"--tls-cert-file=" + c.apiserver.Cert,
			"--tls-private-key-file=" + c.apiserver.Key,
			"--client-ca-file=" + c.ca.Cert,
			"--service-cluster-ip-range=" + ServiceCIDR.String(),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--service-account-issuer=https://kubernetes.default.svc." + ClusterDomain,
			"--service-account-key-file=" + c.serviceAccount.Cert,
			"--service-account-signing-key-file=" + c.serviceAccount.Key,
			"--kubelet-client-certificate=" + c.apiserverKubeletClient.Cert,
			"--kubelet-client-key=" + c.apiserverKubeletClient.Key,
			"--kubelet-certificate-authority=" + c.ca.Cert,
			// Nodes are reached by address: their names are not in any DNS.
			"--kubelet-preferred-address-types=InternalIP,Hostname",
			"--proxy-client-cert-file=" + c.frontProxyClient.Cert,
			"--proxy-client-key-file=" + c.frontProxyClient.Key,
			"--requestheader-client-ca-file=" + c.frontProxyCA.Cert,
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--profiling=false",
		},
		ready: func(ctx context.Context) error {
			client, err := rest.HTTPClientFor(admin)
			if err != nil {
				return fmt.Errorf("client for the API server: %w", err)
			}
			body, err := httpGet(ctx, client, apiServerURL()+"/readyz")
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(body)) != "ok" {
				return fmt.Errorf("/readyz says %s", body)
			}
			return nil
		},
		timeout: 90 * time.Second,
	}
}

// controllerManagerDaemon runs the controllers, each with its own service
// account, and signs CSRs with the cluster CA. Pod addresses come from the
// CNI plugins' host-local IPAM, not from node CIDRs.
func controllerManagerDaemon(l layout, path string, c certs) *daemon {
	return &daemon{
		name: "kube-controller-manager",
		path: path,
		args: append(controllerArgs(l.kubeconfig("kube-controller-manager")),
			"--cert-dir="+l.path("kube-controller-manager"),
			"--cluster-name="+ClusterName,
			"--use-service-account-credentials=true",
			"--root-ca-file="+c.ca.Cert,
			"--service-account-private-key-file="+c.serviceAccount.Key,
			"--cluster-signing-cert-file="+c.ca.Cert,
			"--cluster-signing-key-file="+c.ca.Key,
			"--allocate-node-cidrs=false",
			"--service-cluster-ip-range="+ServiceCIDR.String(),
		),
		ready:   healthz("https://127.0.0.1:10257/healthz"),
		timeout: 60 * time.Second,
	}
}

// schedulerDaemon is kube-scheduler.
func schedulerDaemon(l layout, path string) *daemon {
	return &daemon{
		name:    "kube-scheduler",
		path:    path,
		args:    controllerArgs(l.kubeconfig("kube-scheduler")),
		ready:   healthz("https://127.0.0.1:10259/healthz"),
		timeout: 60 * time.Second,
	}
}

// controllerArgs are the flags the controller manager and the scheduler
// share: one kubeconfig for the API and for checking their own clients,
// serving on loopback, no leader election (one of each runs).
func controllerArgs(kubeconfig string) []string {
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--profiling=false",
	}
}

// healthz probes a component's /healthz (an always-allowed path) over
// HTTPS with its self-signed serving certificate, or over HTTP.
func healthz(url string) func(ctx context.Context) error {
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return func(ctx context.Context) error {
		body, err := httpGet(ctx, client, url)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(body)) != "ok" {
			return fmt.Errorf("%s says %s", url, body)
		}
		return nil
	}
}

// httpGet returns the body of a 200 answer.
func httpGet(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("get %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}
