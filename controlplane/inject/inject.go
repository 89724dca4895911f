// Package inject is the proxy injection shared by the admission webhook
// (controlplane/injector) and `meshctl inject`: the installation's Values,
// the decision whether a pod gets a proxy (Decide), the mutation of a pod
// template that adds it (Injector.Inject) and takes it away again
// (Uninject), and the same change as an RFC 6902 JSON patch (Patch).
//
// A meshed pod (see controlplane/README.md) has the proxy as a native
// sidecar: the first init container (restartPolicy Always) named
// sluice-proxy, whose startup probe is the proxy's /ready, so the kubelet
// starts the other containers only once the proxy is ready. In eBPF mode
// nothing else is added: no init container and no capability. In iptables
// mode an init container sluice-init, before the proxy, runs
// `sluice-agent iptables-init` with NET_ADMIN and NET_RAW to install
// linkerd-init-style REDIRECT rules.
package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/sluice-mesh/sluice/agent/api"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// What Inject adds besides the containers: volumes, mount paths and the
// proxy's ports' names.
const (
	// IdentityDirVolume is an in-memory emptyDir where the proxy keeps its
	// key and certificate, mounted at IdentityDir.
	IdentityDirVolume = "sluice-identity-end-entity"
	IdentityDir       = "/var/run/sluice/identity/end-entity"
	// TokenVolume is the projected service-account token (audience
	// meshmeta.IdentityAudience) the proxy presents to the identity
	// service, mounted at TokenDir; the token is TokenFile.
	TokenVolume = "sluice-identity-token"
	TokenDir    = "/var/run/secrets/tokens"
	TokenFile   = TokenDir + "/" + TokenVolume
	// TokenExpirationSeconds is the lifetime the kubelet asks for.
	TokenExpirationSeconds = 86400
	// XtablesLockVolume is an emptyDir mounted at /run in sluice-init, whose
	// root file system is read-only, for iptables' lock file.
	XtablesLockVolume = "sluice-init-xtables-lock"

	ProxyPortName = "sluice-proxy"
	TapPortName   = "sluice-tap"
	AdminPortName = "sluice-admin"

	// IdentityModeDefault and IdentityModeDisabled are the values of
	// meshmeta.AnnotationIdentityMode.
	IdentityModeDefault  = "default"
	IdentityModeDisabled = "disabled"
)

// Environment variables of the proxy that only serve to build others with
// $(VAR) expansion, as Linkerd's _pod_sa: the proxy does not read them.
const (
	envPodServiceAccount = "_pod_sa"
	envPodNodeName       = "_pod_nodeName"
)

// ownerLabels maps a workload kind to the label naming it on its pods.
var ownerLabels = map[string]string{
	"Deployment":  meshmeta.LabelProxyDeployment,
	"StatefulSet": meshmeta.LabelProxyStatefulSet,
	"DaemonSet":   meshmeta.LabelProxyDaemonSet,
	"Job":         meshmeta.LabelProxyJob,
	"CronJob":     meshmeta.LabelProxyCronJob,
	"ReplicaSet":  meshmeta.LabelProxyReplicaSet,
}

// OwnerLabel returns the label that names a pod's owner of kind
// (meshmeta.LabelProxyDeployment for "Deployment", ...), or "" for kinds
// that have none (such as "Pod").
func OwnerLabel(kind string) string { return ownerLabels[kind] }

// Policy says which pods want a proxy.
type Policy int

const (
	// OptIn injects pods whose own or namespace's meshmeta.AnnotationInject
	// is enabled, unless the pod's is disabled: the webhook.
	OptIn Policy = iota
	// Always injects every pod whose own annotation is not disabled,
	// whatever its namespace says: meshctl inject.
	Always
)

// Decision codes: short, stable words for metrics and logs.
const (
	CodeEnabled         = "enabled"
	CodeAlreadyInjected = "already-injected"
	CodeDisabled        = "disabled"
	CodeNotEnabled      = "not-enabled"
	CodeHostNetwork     = "host-network"
)

// Decision is whether a pod gets a proxy, and why.
type Decision struct {
	Inject bool
	// Code is one of the Code constants.
	Code string
	// Reason explains the decision to a user, such as "hostNetwork".
	Reason string
}

// Decide says whether the pod with meta and spec gets a proxy under p,
// given its namespace's annotations (nil under Always). A pod that already
// has a sluice-proxy container is left alone, as is one with
// sluice.io/inject: disabled, and one on the host's network (the proxy
// would steer the node's traffic).
func Decide(p Policy, meta metav1.ObjectMeta, spec *corev1.PodSpec, namespaceAnnotations map[string]string) Decision {
	if Injected(spec) {
		return Decision{Code: CodeAlreadyInjected, Reason: "already injected"}
	}
	podValue, podSet := meta.Annotations[meshmeta.AnnotationInject]
	if podSet && podValue == meshmeta.InjectDisabled {
		return Decision{Code: CodeDisabled, Reason: fmt.Sprintf("the pod has %s: %s", meshmeta.AnnotationInject, meshmeta.InjectDisabled)}
	}
	reason := "meshctl inject"
	if p == OptIn {
		switch {
		case podSet && podValue == meshmeta.InjectEnabled:
			reason = fmt.Sprintf("the pod has %s: %s", meshmeta.AnnotationInject, meshmeta.InjectEnabled)
		case podSet:
			return Decision{Code: CodeNotEnabled, Reason: fmt.Sprintf("the pod's %s is %q, not %s or %s",
				meshmeta.AnnotationInject, podValue, meshmeta.InjectEnabled, meshmeta.InjectDisabled)}
		case namespaceAnnotations[meshmeta.AnnotationInject] == meshmeta.InjectEnabled:
			reason = fmt.Sprintf("the namespace has %s: %s", meshmeta.AnnotationInject, meshmeta.InjectEnabled)
		default:
			return Decision{Code: CodeNotEnabled, Reason: fmt.Sprintf("neither the pod nor its namespace has %s: %s",
				meshmeta.AnnotationInject, meshmeta.InjectEnabled)}
		}
	}
	if spec.HostNetwork {
		return Decision{Code: CodeHostNetwork, Reason: "hostNetwork"}
	}
	return Decision{Inject: true, Code: CodeEnabled, Reason: reason}
}

// Injected reports whether spec has a sluice-proxy container.
func Injected(spec *corev1.PodSpec) bool {
	return hasContainer(spec.InitContainers, meshmeta.ProxyContainerName) || hasContainer(spec.Containers, meshmeta.ProxyContainerName)
}

func hasContainer(cs []corev1.Container, name string) bool {
	return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == name })
}

// ErrHostNetwork is returned by Inject for a pod on the host's network.
var ErrHostNetwork = errors.New("a hostNetwork pod cannot be meshed: its proxy would steer the node's traffic")

// Workload is what a pod template belongs to.
type Workload struct {
	// Kind of the owning workload: "Deployment", "StatefulSet",
	// "DaemonSet", "Job", "CronJob", "ReplicaSet", or "Pod" (or any other
	// kind, which gets no owner label).
	Kind string
	// Name of the workload; empty gives no owner label.
	Name string
	// Namespace the pods run in: the value of meshmeta.LabelWorkloadNS.
	Namespace string
}

// Injector adds proxies with one installation's Values.
type Injector struct {
	Values Values
	// CreatedBy is the value of meshmeta.AnnotationCreatedBy, such as
	// "sluice/proxy-injector v1.0.0" or "meshctl v1.0.0".
	CreatedBy string
}

// Inject returns a copy of t with the proxy added for workload w; t is not
// changed. A template that is already injected comes back unchanged
// (Inject is idempotent). A config annotation with a bad value gives an
// *AnnotationError, a hostNetwork pod ErrHostNetwork. Inject does not
// decide whether the pod wants a proxy: see Decide.
func (in Injector) Inject(t *corev1.PodTemplateSpec, w Workload) (*corev1.PodTemplateSpec, error) {
	out := t.DeepCopy()
	if Injected(&out.Spec) {
		return out, nil
	}
	if out.Spec.HostNetwork {
		return nil, ErrHostNetwork
	}
	v := in.Values
	cfg, err := ConfigFor(out.Annotations, v)
	if err != nil {
		return nil, err
	}
	identity := v.IdentityEnabled()
	if err := checkNames(&out.Spec); err != nil {
		return nil, err
	}

	var front []corev1.Container
	if cfg.Mode == meshmeta.ModeIPTables {
		front = append(front, initContainer(v, cfg))
		out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
			Name:         XtablesLockVolume,
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
		})
	}
	front = append(front, proxyContainer(v, cfg, identity))
	out.Spec.InitContainers = append(front, out.Spec.InitContainers...)
	if identity {
		exp := int64(TokenExpirationSeconds)
		out.Spec.Volumes = append(out.Spec.Volumes,
			corev1.Volume{
				Name:         IdentityDirVolume,
				VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}},
			},
			corev1.Volume{
				Name: TokenVolume,
				VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
					Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
						Audience:          meshmeta.IdentityAudience,
						ExpirationSeconds: &exp,
						Path:              TokenVolume,
					}}},
				}},
			})
	}

	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	out.Labels[meshmeta.LabelControlPlaneNS] = v.ControlPlaneNamespace
	if w.Namespace != "" {
		out.Labels[meshmeta.LabelWorkloadNS] = w.Namespace
	}
	if l := OwnerLabel(w.Kind); l != "" && w.Name != "" {
		out.Labels[l] = w.Name
	}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[meshmeta.AnnotationProxyVersion] = v.Proxy.Version
	if in.CreatedBy != "" {
		out.Annotations[meshmeta.AnnotationCreatedBy] = in.CreatedBy
	}
	out.Annotations[meshmeta.AnnotationIdentityMode] = IdentityModeDisabled
	if identity {
		out.Annotations[meshmeta.AnnotationIdentityMode] = IdentityModeDefault
	}
	out.Annotations[meshmeta.AnnotationMode] = cfg.Mode
	steering, err := json.Marshal(cfg.Steering)
	if err != nil {
		return nil, fmt.Errorf("encode the steering configuration: %w", err)
	}
	out.Annotations[meshmeta.AnnotationSteering] = string(steering)
	return out, nil
}

// checkNames refuses a pod that already has a container or volume with a
// name that injection adds: the result would be an invalid pod (or one
// whose own volume the proxy would shadow).
func checkNames(spec *corev1.PodSpec) error {
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		if c.Name == meshmeta.InitContainerName {
			return fmt.Errorf("the pod already has a container named %q, which injection adds; rename it, or opt out with %s: %s", c.Name, meshmeta.AnnotationInject, meshmeta.InjectDisabled)
		}
	}
	for _, vol := range spec.Volumes {
		switch vol.Name {
		case XtablesLockVolume, IdentityDirVolume, TokenVolume:
			return fmt.Errorf("the pod already has a volume named %q, which injection adds; rename it, or opt out with %s: %s", vol.Name, meshmeta.AnnotationInject, meshmeta.InjectDisabled)
		}
	}
	return nil
}

// proxyContainer is the sluice-proxy native sidecar.
func proxyContainer(v Values, cfg Config, identity bool) corev1.Container {
	always := corev1.ContainerRestartPolicyAlways
	st := cfg.Steering
	listen := func(hosts []string, port int) string {
		s := make([]string, len(hosts))
		for i, h := range hosts {
			s[i] = h + ":" + strconv.Itoa(port)
		}
		return strings.Join(s, ",")
	}
	env := []corev1.EnvVar{
		{Name: "SLUICE_PROXY_LOG_LEVEL", Value: cfg.LogLevel},
		{Name: "SLUICE_PROXY_OUTBOUND_LISTEN_ADDRS", Value: listen([]string{"127.0.0.1", "[::1]"}, int(st.OutboundPort))},
		{Name: "SLUICE_PROXY_INBOUND_LISTEN_ADDRS", Value: listen([]string{"0.0.0.0", "[::]"}, int(st.InboundPort))},
		{Name: "SLUICE_PROXY_TAP_LISTEN_ADDR", Value: listen([]string{"0.0.0.0"}, api.DefaultTapPort)},
		{Name: "SLUICE_PROXY_ADMIN_LISTEN_ADDR", Value: listen([]string{"0.0.0.0"}, api.DefaultAdminPort)},
	}
	if cfg.Mode == meshmeta.ModeEBPF {
		// /ready waits until the node agent has enrolled the pod and its
		// probe came through the steering.
		env = append(env,
			corev1.EnvVar{Name: "SLUICE_PROXY_STEERING_PROBE_PORT", Value: strconv.Itoa(int(st.ProbePort))},
			corev1.EnvVar{Name: "SLUICE_PROXY_REQUIRE_STEERING", Value: "true"})
	} else {
		// sluice-init installed the rules before the proxy started; no
		// agent probes iptables-mode pods.
		env = append(env, corev1.EnvVar{Name: "SLUICE_PROXY_REQUIRE_STEERING", Value: "false"})
	}
	env = append(env,
		fieldEnv("SLUICE_PROXY_POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("SLUICE_PROXY_POD_IPS", "status.podIPs"),
		fieldEnv(envPodNodeName, "spec.nodeName"),
		corev1.EnvVar{Name: "SLUICE_PROXY_CLUSTER_DOMAIN", Value: v.ClusterDomain},
		corev1.EnvVar{Name: "SLUICE_PROXY_DESTINATION_ADDR", Value: v.DestinationAddress()},
		corev1.EnvVar{Name: "SLUICE_PROXY_DESTINATION_CONTEXT",
			Value: `{"ns":"$(SLUICE_PROXY_POD_NAMESPACE)","nodeName":"$(` + envPodNodeName + `)"}`},
	)
	if len(cfg.OpaquePorts) > 0 {
		env = append(env, corev1.EnvVar{Name: "SLUICE_PROXY_OPAQUE_PORTS", Value: joinPorts(cfg.OpaquePorts)})
	}
	var mounts []corev1.VolumeMount
	if identity {
		env = append(env,
			fieldEnv(envPodServiceAccount, "spec.serviceAccountName"),
			corev1.EnvVar{Name: "SLUICE_PROXY_IDENTITY_DIR", Value: IdentityDir},
			corev1.EnvVar{Name: "SLUICE_PROXY_IDENTITY_TRUST_ANCHORS", Value: v.Identity.TrustAnchorsPEM},
			corev1.EnvVar{Name: "SLUICE_PROXY_IDENTITY_TOKEN_FILE", Value: TokenFile},
			corev1.EnvVar{Name: "SLUICE_PROXY_IDENTITY_SVC_ADDR", Value: v.IdentityAddress()},
			corev1.EnvVar{Name: "SLUICE_PROXY_IDENTITY_SVC_NAME",
				Value: meshmeta.IdentityName(meshmeta.IdentityService, v.ControlPlaneNamespace, v.Identity.TrustDomain)},
			corev1.EnvVar{Name: "SLUICE_PROXY_IDENTITY_LOCAL_NAME",
				Value: meshmeta.IdentityName("$("+envPodServiceAccount+")", "$(SLUICE_PROXY_POD_NAMESPACE)", v.Identity.TrustDomain)},
		)
		mounts = []corev1.VolumeMount{
			{Name: IdentityDirVolume, MountPath: IdentityDir},
			{Name: TokenVolume, MountPath: TokenDir, ReadOnly: true},
		}
	}
	httpGet := func(path string) corev1.ProbeHandler {
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: path, Port: intstr.FromInt32(api.DefaultAdminPort), Scheme: corev1.URISchemeHTTP,
		}}
	}
	uid := v.Proxy.UID
	return corev1.Container{
		Name:            meshmeta.ProxyContainerName,
		Image:           v.ProxyImageRef(),
		ImagePullPolicy: v.Proxy.ImagePullPolicy,
		Ports: []corev1.ContainerPort{
			{Name: ProxyPortName, ContainerPort: int32(st.InboundPort), Protocol: corev1.ProtocolTCP},
			{Name: TapPortName, ContainerPort: api.DefaultTapPort, Protocol: corev1.ProtocolTCP},
			{Name: AdminPortName, ContainerPort: api.DefaultAdminPort, Protocol: corev1.ProtocolTCP},
		},
		Env:          env,
		Resources:    *v.Proxy.Resources.DeepCopy(),
		VolumeMounts: mounts,
		// The kubelet starts the next containers once this passes: in eBPF
		// mode, once the agent has enrolled the pod. Up to 2 minutes.
		StartupProbe: &corev1.Probe{
			ProbeHandler:     httpGet("/ready"),
			PeriodSeconds:    1,
			TimeoutSeconds:   1,
			FailureThreshold: 120,
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:     httpGet("/ready"),
			PeriodSeconds:    10,
			TimeoutSeconds:   1,
			FailureThreshold: 3,
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     httpGet("/live"),
			PeriodSeconds:    10,
			TimeoutSeconds:   1,
			FailureThreshold: 3,
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		RestartPolicy:            &always,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsNonRoot:             new(true),
			ReadOnlyRootFilesystem:   new(true),
			AllowPrivilegeEscalation: new(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// initContainer is the iptables-mode sluice-init: `sluice-agent
// iptables-init` (the agent image's entrypoint) with the pod's steering.
func initContainer(v Values, cfg Config) corev1.Container {
	st := cfg.Steering
	args := []string{
		"iptables-init",
		"--proxy-uid=" + strconv.FormatUint(uint64(st.ProxyUID), 10),
		"--inbound-port=" + strconv.Itoa(int(st.InboundPort)),
		"--outbound-port=" + strconv.Itoa(int(st.OutboundPort)),
	}
	if len(st.SkipInboundPorts) > 0 {
		args = append(args, "--skip-inbound-ports="+joinPorts(st.SkipInboundPorts))
	}
	if len(st.SkipOutboundPorts) > 0 {
		args = append(args, "--skip-outbound-ports="+joinPorts(st.SkipOutboundPorts))
	}
	if len(st.SkipSubnets) > 0 {
		args = append(args, "--skip-subnets="+joinSubnets(st.SkipSubnets))
	}
	var root int64
	return corev1.Container{
		Name:            meshmeta.InitContainerName,
		Image:           v.InitImageRef(),
		ImagePullPolicy: v.Proxy.ImagePullPolicy,
		Args:            args,
		VolumeMounts:    []corev1.VolumeMount{{Name: XtablesLockVolume, MountPath: "/run"}},
		Resources: corev1.ResourceRequirements{
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("50Mi"),
			},
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("10m"),
				corev1.ResourceMemory: resource.MustParse("10Mi"),
			},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &root,
			RunAsNonRoot:             new(false),
			Privileged:               new(false),
			ReadOnlyRootFilesystem:   new(true),
			AllowPrivilegeEscalation: new(false),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

// addedLabels and addedAnnotations are every key Inject may write.
var (
	addedAnnotations = []string{meshmeta.AnnotationProxyVersion, meshmeta.AnnotationCreatedBy, meshmeta.AnnotationIdentityMode, meshmeta.AnnotationMode, meshmeta.AnnotationSteering}
	addedVolumes     = []string{XtablesLockVolume, IdentityDirVolume, TokenVolume}
	addedContainers  = []string{meshmeta.InitContainerName, meshmeta.ProxyContainerName}
)

func addedLabels() []string {
	l := []string{meshmeta.LabelControlPlaneNS, meshmeta.LabelWorkloadNS}
	for _, v := range ownerLabels {
		l = append(l, v)
	}
	return l
}

// Uninject returns a copy of t without what Inject added (the containers,
// volumes, labels and annotations), and whether there was any. Maps and
// lists that Inject created and that end up empty are removed, so that
// Uninject(Inject(t)) equals t. Labels and annotations users set, such as
// sluice.io/inject and config.sluice.io/*, stay.
func Uninject(t *corev1.PodTemplateSpec) (*corev1.PodTemplateSpec, bool) {
	out := t.DeepCopy()
	changed := false
	drop := func(cs []corev1.Container) []corev1.Container {
		n := slices.DeleteFunc(cs, func(c corev1.Container) bool { return slices.Contains(addedContainers, c.Name) })
		if len(n) != len(cs) {
			changed = true
		}
		if len(n) == 0 {
			return nil
		}
		return n
	}
	out.Spec.InitContainers = drop(out.Spec.InitContainers)
	out.Spec.Containers = drop(out.Spec.Containers)
	if n := len(out.Spec.Volumes); n > 0 {
		out.Spec.Volumes = slices.DeleteFunc(out.Spec.Volumes, func(v corev1.Volume) bool { return slices.Contains(addedVolumes, v.Name) })
		if len(out.Spec.Volumes) != n {
			changed = true
		}
		if len(out.Spec.Volumes) == 0 {
			out.Spec.Volumes = nil
		}
	}
	for _, k := range addedLabels() {
		if _, ok := out.Labels[k]; ok {
			delete(out.Labels, k)
			changed = true
		}
	}
	for _, k := range addedAnnotations {
		if _, ok := out.Annotations[k]; ok {
			delete(out.Annotations, k)
			changed = true
		}
	}
	if len(out.Labels) == 0 {
		out.Labels = nil
	}
	if len(out.Annotations) == 0 {
		out.Annotations = nil
	}
	return out, changed
}
