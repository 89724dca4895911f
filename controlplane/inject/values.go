package inject

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
	"github.com/sluice-mesh/sluice/internal/version"
)

// Where an installation keeps its Values: the chart renders them into the
// ConfigMap ConfigMapName in the control plane's namespace, under the key
// ValuesKey, as YAML in the form of Values' JSON tags. The injector reads the
// same document from a file (the ConfigMap mounted as a volume), meshctl
// inject from the API.
const (
	ConfigMapName = "sluice-config"
	ValuesKey     = "values.yaml"
)

// Default images, as the chart names them (image.registry + the image's name).
const (
	DefaultProxyImage = "ghcr.io/sluice-mesh/proxy"
	DefaultInitImage  = "ghcr.io/sluice-mesh/agent"
)

// Values are an installation's injection settings: what the webhook and
// meshctl inject need to add a proxy to a pod. The zero value is not valid;
// start from DefaultValues. Empty addresses are derived from the control
// plane's namespace and the cluster domain.
//
// An example of the document (every key optional; missing ones keep their
// defaults):
//
//	controlPlaneNamespace: sluice
//	clusterDomain: cluster.local
//	interceptionMode: ebpf
//	proxy:
//	  image: ghcr.io/sluice-mesh/proxy
//	  version: v0.1.0
//	  uid: 2102
//	  logLevel: info
//	  resources: {requests: {cpu: 10m, memory: 20Mi}, limits: {memory: 250Mi}}
//	init:
//	  image: ghcr.io/sluice-mesh/agent
//	  version: v0.1.0
//	identity:
//	  trustDomain: cluster.local
//	  trustAnchorsPEM: |
//	    -----BEGIN CERTIFICATE-----
//	    ...
type Values struct {
	// ControlPlaneNamespace is the control plane's namespace (default
	// "sluice"): the value of the meshed pod's LabelControlPlaneNS and the
	// namespace of the services the proxy talks to.
	ControlPlaneNamespace string `json:"controlPlaneNamespace"`
	// ClusterDomain is the cluster's DNS domain (default "cluster.local").
	ClusterDomain string `json:"clusterDomain"`
	// InterceptionMode is meshmeta.ModeEBPF (default) or
	// meshmeta.ModeIPTables; a workload may override it with
	// meshmeta.AnnotationInterceptionMode.
	InterceptionMode string `json:"interceptionMode"`
	// DestinationAddr is the destination service's host:port. Empty:
	// sluice-dst.<namespace>.svc.<cluster domain>:8086.
	DestinationAddr string `json:"destinationAddr,omitempty"`

	Proxy    ProxyValues    `json:"proxy"`
	Init     InitValues     `json:"init"`
	Identity IdentityValues `json:"identity"`
}

// ProxyValues configure the injected sluice-proxy container.
type ProxyValues struct {
	// Image is the proxy's image without its tag.
	Image string `json:"image"`
	// Version is the image's tag and the value of
	// meshmeta.AnnotationProxyVersion. Empty: Image is used as it is.
	Version string `json:"version"`
	// ImagePullPolicy of the proxy and init containers; empty leaves it to
	// the API server's default.
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	// UID is the user the proxy runs as (default 2102); its sockets are
	// never steered.
	UID int64 `json:"uid"`
	// LogLevel is debug, info, warn or error (default info); a workload
	// may override it with config.sluice.io/proxy-log-level.
	LogLevel string `json:"logLevel"`
	// OpaquePorts, SkipInboundPorts and SkipOutboundPorts are
	// comma-separated ports and ranges ("25,9000-9100"), SkipSubnets
	// comma-separated CIDRs: the installation's defaults of the config
	// annotations of the same names, which replace them.
	OpaquePorts       string `json:"opaquePorts,omitempty"`
	SkipInboundPorts  string `json:"skipInboundPorts,omitempty"`
	SkipOutboundPorts string `json:"skipOutboundPorts,omitempty"`
	SkipSubnets       string `json:"skipSubnets,omitempty"`
	// Resources of the proxy container.
	Resources corev1.ResourceRequirements `json:"resources,omitzero"`
}

// InitValues configure the iptables-mode sluice-init container, which runs
// `sluice-agent iptables-init` from the agent's image.
type InitValues struct {
	// Image is the agent's image without its tag.
	Image string `json:"image"`
	// Version is the image's tag; empty: Image is used as it is.
	Version string `json:"version"`
}

// IdentityValues configure the proxy's identity (mutual TLS).
type IdentityValues struct {
	// TrustDomain ends every identity name (default "cluster.local").
	TrustDomain string `json:"trustDomain"`
	// TrustAnchorsPEM are the root certificates every proxy trusts. Empty:
	// identity is disabled (meshmeta.AnnotationIdentityMode "disabled", no
	// token volume, no SLUICE_PROXY_IDENTITY_* variables).
	TrustAnchorsPEM string `json:"trustAnchorsPEM,omitempty"`
	// Addr is the identity service's host:port. Empty:
	// sluice-identity.<namespace>.svc.<cluster domain>:8080.
	Addr string `json:"addr,omitempty"`
}

// DefaultValues returns the defaults, the same as the chart's: images tagged
// with this build's version, eBPF interception, no trust anchors.
func DefaultValues() Values {
	return Values{
		ControlPlaneNamespace: meshmeta.DefaultNamespace,
		ClusterDomain:         "cluster.local",
		InterceptionMode:      meshmeta.ModeEBPF,
		Proxy: ProxyValues{
			Image:           DefaultProxyImage,
			Version:         version.Version,
			ImagePullPolicy: corev1.PullIfNotPresent,
			UID:             api.DefaultProxyUID,
			LogLevel:        "info",
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("10m"),
					corev1.ResourceMemory: resource.MustParse("20Mi"),
				},
				Limits: corev1.ResourceList{
					corev1.ResourceMemory: resource.MustParse("250Mi"),
				},
			},
		},
		Init: InitValues{
			Image:   DefaultInitImage,
			Version: version.Version,
		},
		Identity: IdentityValues{
			TrustDomain: meshmeta.DefaultTrustDomain,
		},
	}
}

// DestinationAddress is DestinationAddr, or the destination service's
// in-cluster address when it is empty.
func (v Values) DestinationAddress() string {
	if v.DestinationAddr != "" {
		return v.DestinationAddr
	}
	return meshmeta.ServiceAddr(meshmeta.DestinationService, v.ControlPlaneNamespace, v.ClusterDomain, meshmeta.DestinationPort)
}

// IdentityAddress is Identity.Addr, or the identity service's in-cluster
// address when it is empty.
func (v Values) IdentityAddress() string {
	if v.Identity.Addr != "" {
		return v.Identity.Addr
	}
	return meshmeta.ServiceAddr(meshmeta.IdentityService, v.ControlPlaneNamespace, v.ClusterDomain, meshmeta.IdentityPort)
}

// IdentityEnabled reports whether proxies get an identity: whether there
// are trust anchors.
func (v Values) IdentityEnabled() bool { return strings.TrimSpace(v.Identity.TrustAnchorsPEM) != "" }

// ProxyImageRef is the proxy's image reference, Image:Version.
func (v Values) ProxyImageRef() string { return imageRef(v.Proxy.Image, v.Proxy.Version) }

// InitImageRef is the init container's image reference, Image:Version.
func (v Values) InitImageRef() string { return imageRef(v.Init.Image, v.Init.Version) }

func imageRef(image, tag string) string {
	if tag == "" {
		return image
	}
	return image + ":" + tag
}

// tagRE is a Docker image tag.
var tagRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// Validate reports every problem with v, each naming its key.
func (v Values) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	}
	if msgs := validation.IsDNS1123Label(v.ControlPlaneNamespace); len(msgs) > 0 {
		bad("controlPlaneNamespace", "%q is not a namespace name: %s", v.ControlPlaneNamespace, strings.Join(msgs, "; "))
	}
	if msgs := validation.IsDNS1123Subdomain(v.ClusterDomain); len(msgs) > 0 {
		bad("clusterDomain", "%q is not a DNS domain: %s", v.ClusterDomain, strings.Join(msgs, "; "))
	}
	if err := checkMode(v.InterceptionMode); err != nil {
		bad("interceptionMode", "%v", err)
	}
	if v.DestinationAddr != "" {
		if err := checkHostPort(v.DestinationAddr); err != nil {
			bad("destinationAddr", "%v", err)
		}
	}
	checkImage := func(key, image, tag string) {
		if image == "" || strings.ContainsAny(image, " \t\n") {
			bad(key+".image", "%q is not an image reference", image)
		}
		if tag != "" && !tagRE.MatchString(tag) {
			bad(key+".version", "%q is not an image tag", tag)
		}
	}
	checkImage("proxy", v.Proxy.Image, v.Proxy.Version)
	checkImage("init", v.Init.Image, v.Init.Version)
	switch v.Proxy.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		bad("proxy.imagePullPolicy", "%q is not Always, IfNotPresent or Never", v.Proxy.ImagePullPolicy)
	}
	if v.Proxy.UID <= 0 || v.Proxy.UID > 1<<31-1 {
		bad("proxy.uid", "%d is not a user id above 0 (the proxy never runs as root)", v.Proxy.UID)
	}
	if err := checkLogLevel(v.Proxy.LogLevel); err != nil {
		bad("proxy.logLevel", "%v", err)
	}
	if _, err := parsePorts(v.Proxy.OpaquePorts); err != nil {
		bad("proxy.opaquePorts", "%v", err)
	}
	if _, err := parsePorts(v.Proxy.SkipInboundPorts); err != nil {
		bad("proxy.skipInboundPorts", "%v", err)
	}
	if _, err := parsePorts(v.Proxy.SkipOutboundPorts); err != nil {
		bad("proxy.skipOutboundPorts", "%v", err)
	}
	if _, err := api.ParsePrefixes(v.Proxy.SkipSubnets); err != nil {
		bad("proxy.skipSubnets", "%v", err)
	}
	if msgs := validation.IsDNS1123Subdomain(v.Identity.TrustDomain); len(msgs) > 0 {
		bad("identity.trustDomain", "%q is not a DNS domain: %s", v.Identity.TrustDomain, strings.Join(msgs, "; "))
	}
	if v.IdentityEnabled() {
		if err := checkTrustAnchors(v.Identity.TrustAnchorsPEM); err != nil {
			bad("identity.trustAnchorsPEM", "%v", err)
		}
	}
	if v.Identity.Addr != "" {
		if err := checkHostPort(v.Identity.Addr); err != nil {
			bad("identity.addr", "%v", err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid values: %w", errors.Join(errs...))
	}
	return nil
}

func checkMode(m string) error {
	if m != meshmeta.ModeEBPF && m != meshmeta.ModeIPTables {
		return fmt.Errorf("%q is not %s or %s", m, meshmeta.ModeEBPF, meshmeta.ModeIPTables)
	}
	return nil
}

func checkLogLevel(l string) error {
	switch l {
	case "debug", "info", "warn", "error":
		return nil
	}
	return fmt.Errorf("%q is not debug, info, warn or error", l)
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", s, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || host == "" {
		return fmt.Errorf("%q is not host:port with a port in 1-65535", s)
	}
	return nil
}

// checkTrustAnchors requires one or more PEM certificates and nothing else.
func checkTrustAnchors(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %d is a %s, not a CERTIFICATE", n+1, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate found")
	}
	if strings.TrimSpace(string(rest)) != "" {
		return errors.New("text after the last PEM certificate")
	}
	return nil
}

// ParseValues reads a values document (YAML or JSON) over DefaultValues:
// keys it lacks keep their defaults, keys Values does not know are ignored
// (a newer chart may write more). The result is validated.
func ParseValues(data []byte) (Values, error) {
	v := DefaultValues()
	if err := yaml.Unmarshal(data, &v); err != nil {
		return Values{}, fmt.Errorf("parse values: %w", err)
	}
	if err := v.Validate(); err != nil {
		return Values{}, err
	}
	return v, nil
}

// ReadValuesFile reads a values document from path, as ParseValues.
func ReadValuesFile(path string) (Values, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Values{}, fmt.Errorf("read values: %w", err)
	}
	v, err := ParseValues(data)
	if err != nil {
		return Values{}, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// LoadValues reads an installation's Values from the ConfigMap
// ConfigMapName in namespace, key ValuesKey, as ParseValues. A missing
// ConfigMap gives an error that apierrors.IsNotFound recognizes.
func LoadValues(ctx context.Context, client kubernetes.Interface, namespace string) (Values, error) {
	cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return Values{}, fmt.Errorf("read configmap %s/%s: %w", namespace, ConfigMapName, err)
	}
	data, ok := cm.Data[ValuesKey]
	if !ok {
		return Values{}, fmt.Errorf("configmap %s/%s has no key %s", namespace, ConfigMapName, ValuesKey)
	}
	v, err := ParseValues([]byte(data))
	if err != nil {
		return Values{}, fmt.Errorf("configmap %s/%s: %w", namespace, ConfigMapName, err)
	}
	return v, nil
}
