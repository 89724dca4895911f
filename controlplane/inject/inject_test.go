package inject

import (
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

func testValues(t *testing.T, mode string) Values {
	t.Helper()
	v := DefaultValues()
	v.InterceptionMode = mode
	v.Proxy.Version = "v9.9.9"
	v.Init.Version = "v9.9.9"
	pem, err := os.ReadFile("testdata/anchors.pem")
	if err != nil {
		t.Fatal(err)
	}
	v.Identity.TrustAnchorsPEM = string(pem)
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	return v
}

// webTemplate is a typical Deployment's pod template: an init container,
// two containers, labels and annotations.
func webTemplate() *corev1.PodTemplateSpec {
	return &corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels:      map[string]string{"app": "web"},
			Annotations: map[string]string{"team": "shop"},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			InitContainers:     []corev1.Container{{Name: "migrate", Image: "migrate:1", Command: []string{"migrate", "up"}}},
			Containers: []corev1.Container{
				{Name: "web", Image: "nginx", Ports: []corev1.ContainerPort{{ContainerPort: 80}}},
				{Name: "logs", Image: "busybox", Args: []string{"tail", "-f", "/var/log/x"}},
			},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
	}
}

func envMap(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func container(cs []corev1.Container, name string) (corev1.Container, bool) {
	for _, c := range cs {
		if c.Name == name {
			return c, true
		}
	}
	return corev1.Container{}, false
}

func TestDecide(t *testing.T) {
	enabledNS := map[string]string{meshmeta.AnnotationInject: meshmeta.InjectEnabled}
	disabledNS := map[string]string{meshmeta.AnnotationInject: meshmeta.InjectDisabled}
	pod := func(v string) metav1.ObjectMeta {
		if v == "" {
			return metav1.ObjectMeta{}
		}
		return metav1.ObjectMeta{Annotations: map[string]string{meshmeta.AnnotationInject: v}}
	}
	injected := &corev1.PodSpec{InitContainers: []corev1.Container{{Name: meshmeta.ProxyContainerName}}}
	legacy := &corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: meshmeta.ProxyContainerName}}}
	host := &corev1.PodSpec{HostNetwork: true}
	plain := &corev1.PodSpec{}
	tests := []struct {
		name   string
		policy Policy
		meta   metav1.ObjectMeta
		spec   *corev1.PodSpec
		ns     map[string]string
		want   string
		reason string
	}{
		{"namespace enabled", OptIn, pod(""), plain, enabledNS, CodeEnabled, "the namespace has sluice.io/inject: enabled"},
		{"pod enabled", OptIn, pod("enabled"), plain, nil, CodeEnabled, "the pod has sluice.io/inject: enabled"},
		{"pod enabled in disabled namespace", OptIn, pod("enabled"), plain, disabledNS, CodeEnabled, ""},
		{"pod disabled in enabled namespace", OptIn, pod("disabled"), plain, enabledNS, CodeDisabled, "the pod has sluice.io/inject: disabled"},
		{"nothing enabled", OptIn, pod(""), plain, nil, CodeNotEnabled, "neither the pod nor its namespace"},
		{"namespace disabled", OptIn, pod(""), plain, disabledNS, CodeNotEnabled, ""},
		{"pod value unknown", OptIn, pod("yes"), plain, enabledNS, CodeNotEnabled, `"yes"`},
		{"hostNetwork enabled", OptIn, pod(""), host, enabledNS, CodeHostNetwork, "hostNetwork"},
		{"hostNetwork not enabled", OptIn, pod(""), host, nil, CodeNotEnabled, ""},
		{"already injected", OptIn, pod("enabled"), injected, enabledNS, CodeAlreadyInjected, "already injected"},
		{"already injected as a container", OptIn, pod(""), legacy, enabledNS, CodeAlreadyInjected, ""},
		{"meshctl without annotations", Always, pod(""), plain, nil, CodeEnabled, "meshctl inject"},
		{"meshctl pod disabled", Always, pod("disabled"), plain, nil, CodeDisabled, ""},
		{"meshctl hostNetwork", Always, pod(""), host, nil, CodeHostNetwork, "hostNetwork"},
		{"meshctl already injected", Always, pod(""), injected, nil, CodeAlreadyInjected, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Decide(tt.policy, tt.meta, tt.spec, tt.ns)
			if d.Code != tt.want || d.Inject != (tt.want == CodeEnabled) {
				t.Fatalf("Decide = %+v, want code %s", d, tt.want)
			}
			if !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("reason %q does not say %q", d.Reason, tt.reason)
			}
		})
	}
}

func TestInjectEBPF(t *testing.T) {
	in := Injector{Values: testValues(t, meshmeta.ModeEBPF), CreatedBy: "test"}
	orig := webTemplate()
	out, err := in.Inject(orig, Workload{Kind: "Deployment", Name: "web", Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	if !equalJSON(t, orig, webTemplate()) {
		t.Error("Inject changed its input")
	}
	names := containerNames(out.Spec.InitContainers)
	if want := []string{meshmeta.ProxyContainerName, "migrate"}; !slices.Equal(names, want) {
		t.Fatalf("init containers %v, want %v: the proxy first, no sluice-init in eBPF mode", names, want)
	}
	if got := containerNames(out.Spec.Containers); !slices.Equal(got, []string{"web", "logs"}) {
		t.Errorf("containers %v changed", got)
	}
	p := out.Spec.InitContainers[0]
	if p.RestartPolicy == nil || *p.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("proxy is not a native sidecar (restartPolicy Always)")
	}
	if p.Image != "ghcr.io/sluice-mesh/proxy:v9.9.9" {
		t.Errorf("image %q", p.Image)
	}
	sc := p.SecurityContext
	if sc == nil || *sc.RunAsUser != 2102 || !*sc.RunAsNonRoot || !*sc.ReadOnlyRootFilesystem || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("proxy security context %+v", sc)
	}
	for _, c := range slices.Concat(out.Spec.InitContainers, out.Spec.Containers) {
		if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil && len(c.SecurityContext.Capabilities.Add) > 0 {
			t.Errorf("container %s adds capabilities %v in eBPF mode", c.Name, c.SecurityContext.Capabilities.Add)
		}
	}
	ports := map[string]int32{}
	for _, pt := range p.Ports {
		ports[pt.Name] = pt.ContainerPort
	}
	if ports[ProxyPortName] != 4143 || ports[TapPortName] != 4190 || ports[AdminPortName] != 4191 {
		t.Errorf("ports %v", ports)
	}
	for name, probe := range map[string]*corev1.Probe{"/ready": p.StartupProbe, "/ready ": p.ReadinessProbe, "/live": p.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != strings.TrimSpace(name) || probe.HTTPGet.Port.IntValue() != 4191 {
			t.Errorf("probe for %s: %+v", name, probe)
		}
	}
	env := envMap(p)
	for name, want := range map[string]string{
		"SLUICE_PROXY_DESTINATION_ADDR":       "sluice-dst.sluice.svc.cluster.local:8086",
		"SLUICE_PROXY_DESTINATION_CONTEXT":    `{"ns":"$(SLUICE_PROXY_POD_NAMESPACE)","nodeName":"$(_pod_nodeName)"}`,
		"SLUICE_PROXY_LOG_LEVEL":              "info",
		"SLUICE_PROXY_REQUIRE_STEERING":       "true",
		"SLUICE_PROXY_STEERING_PROBE_PORT":    "4144",
		"SLUICE_PROXY_IDENTITY_LOCAL_NAME":    "$(_pod_sa).$(SLUICE_PROXY_POD_NAMESPACE).serviceaccount.identity.sluice.cluster.local",
		"SLUICE_PROXY_IDENTITY_SVC_ADDR":      "sluice-identity.sluice.svc.cluster.local:8080",
		"SLUICE_PROXY_IDENTITY_SVC_NAME":      "sluice-identity.sluice.serviceaccount.identity.sluice.cluster.local",
		"SLUICE_PROXY_IDENTITY_TOKEN_FILE":    "/var/run/secrets/tokens/sluice-identity-token",
		"SLUICE_PROXY_IDENTITY_DIR":           IdentityDir,
		"SLUICE_PROXY_IDENTITY_TRUST_ANCHORS": in.Values.Identity.TrustAnchorsPEM,
	} {
		if env[name].Value != want {
			t.Errorf("%s = %q, want %q", name, env[name].Value, want)
		}
	}
	for name, path := range map[string]string{"SLUICE_PROXY_POD_NAMESPACE": "metadata.namespace", "SLUICE_PROXY_POD_IPS": "status.podIPs", "_pod_nodeName": "spec.nodeName", "_pod_sa": "spec.serviceAccountName"} {
		if e := env[name]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("%s is not the downward API's %s: %+v", name, path, e)
		}
	}
	// $(VAR) expands only variables defined before.
	pos := map[string]int{}
	for i, e := range p.Env {
		pos[e.Name] = i
	}
	if pos["SLUICE_PROXY_POD_NAMESPACE"] > pos["SLUICE_PROXY_DESTINATION_CONTEXT"] || pos["_pod_nodeName"] > pos["SLUICE_PROXY_DESTINATION_CONTEXT"] ||
		pos["_pod_sa"] > pos["SLUICE_PROXY_IDENTITY_LOCAL_NAME"] {
		t.Errorf("variables used in $(...) come after their use: %v", pos)
	}
	var token *corev1.Volume
	for i, v := range out.Spec.Volumes {
		if v.Name == TokenVolume {
			token = &out.Spec.Volumes[i]
		}
	}
	if token == nil || token.Projected == nil || token.Projected.Sources[0].ServiceAccountToken == nil {
		t.Fatalf("no projected token volume in %v", out.Spec.Volumes)
	}
	if sat := token.Projected.Sources[0].ServiceAccountToken; sat.Audience != meshmeta.IdentityAudience || *sat.ExpirationSeconds != 86400 {
		t.Errorf("token projection %+v", sat)
	}
	if out.Spec.Volumes[0].Name != "data" {
		t.Errorf("existing volume moved: %v", out.Spec.Volumes)
	}
	for k, want := range map[string]string{
		meshmeta.LabelControlPlaneNS: "sluice", meshmeta.LabelWorkloadNS: "shop", meshmeta.LabelProxyDeployment: "web", "app": "web",
	} {
		if out.Labels[k] != want {
			t.Errorf("label %s = %q, want %q", k, out.Labels[k], want)
		}
	}
	for k, want := range map[string]string{
		meshmeta.AnnotationProxyVersion: "v9.9.9", meshmeta.AnnotationCreatedBy: "test", meshmeta.AnnotationIdentityMode: "default",
		meshmeta.AnnotationMode: meshmeta.ModeEBPF, "team": "shop",
	} {
		if out.Annotations[k] != want {
			t.Errorf("annotation %s = %q, want %q", k, out.Annotations[k], want)
		}
	}
}

func TestInjectIPTables(t *testing.T) {
	in := Injector{Values: testValues(t, meshmeta.ModeIPTables)}
	tmpl := webTemplate()
	tmpl.Annotations[meshmeta.AnnotationSkipOutboundPorts] = "5432,6379-6380"
	tmpl.Annotations[meshmeta.AnnotationSkipSubnets] = "10.96.0.0/12"
	tmpl.Annotations[meshmeta.AnnotationSkipInboundPorts] = "9090"
	out, err := in.Inject(tmpl, Workload{Kind: "StatefulSet", Name: "db", Namespace: "data"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := containerNames(out.Spec.InitContainers), []string{meshmeta.InitContainerName, meshmeta.ProxyContainerName, "migrate"}; !slices.Equal(got, want) {
		t.Fatalf("init containers %v, want %v", got, want)
	}
	ic := out.Spec.InitContainers[0]
	if ic.Image != "ghcr.io/sluice-mesh/agent:v9.9.9" {
		t.Errorf("init image %q", ic.Image)
	}
	if want := []string{"iptables-init", "--proxy-uid=2102", "--inbound-port=4143", "--outbound-port=4140",
		"--skip-inbound-ports=9090,4190,4191", "--skip-outbound-ports=5432,6379-6380", "--skip-subnets=10.96.0.0/12"}; !slices.Equal(ic.Args, want) {
		t.Errorf("init args %q, want %q", ic.Args, want)
	}
	caps := ic.SecurityContext.Capabilities
	if !slices.Equal(caps.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || !slices.Equal(caps.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("init capabilities %+v, want NET_ADMIN and NET_RAW only", caps)
	}
	if ic.RestartPolicy != nil {
		t.Error("sluice-init must be a plain init container (it runs to completion)")
	}
	env := envMap(out.Spec.InitContainers[1])
	if env["SLUICE_PROXY_REQUIRE_STEERING"].Value != "false" {
		t.Error("iptables-mode proxy waits for an agent probe that never comes")
	}
	if _, ok := env["SLUICE_PROXY_STEERING_PROBE_PORT"]; ok {
		t.Error("iptables-mode proxy has a steering probe port")
	}
	if out.Annotations[meshmeta.AnnotationMode] != meshmeta.ModeIPTables || out.Labels[meshmeta.LabelProxyStatefulSet] != "db" {
		t.Errorf("labels %v annotations %v", out.Labels, out.Annotations)
	}
	if !slices.ContainsFunc(out.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == XtablesLockVolume }) {
		t.Error("no xtables lock volume for the read-only sluice-init")
	}
}

func TestInjectWithoutIdentity(t *testing.T) {
	v := testValues(t, meshmeta.ModeEBPF)
	v.Identity.TrustAnchorsPEM = ""
	out, err := Injector{Values: v}.Inject(webTemplate(), Workload{Kind: "Pod", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := container(out.Spec.InitContainers, meshmeta.ProxyContainerName)
	for name := range envMap(p) {
		if strings.HasPrefix(name, "SLUICE_PROXY_IDENTITY_") {
			t.Errorf("%s set without trust anchors", name)
		}
	}
	if len(out.Spec.Volumes) != 1 || len(p.VolumeMounts) != 0 {
		t.Errorf("identity volumes without trust anchors: %v", out.Spec.Volumes)
	}
	if out.Annotations[meshmeta.AnnotationIdentityMode] != IdentityModeDisabled {
		t.Errorf("identity mode %q", out.Annotations[meshmeta.AnnotationIdentityMode])
	}
	for _, l := range addedLabels() {
		if l != meshmeta.LabelControlPlaneNS && out.Labels[l] != "" {
			t.Errorf("a bare pod without namespace got label %s", l)
		}
	}
}

func TestConfigAnnotations(t *testing.T) {
	tests := []struct {
		annotation, value string
		// check inspects a good value's effect.
		check func(t *testing.T, out *corev1.PodTemplateSpec)
		// bad is the annotation named by the error of a bad value.
		bad bool
	}{
		{annotation: meshmeta.AnnotationOpaquePorts, value: "3306, 9000-9100", check: func(t *testing.T, out *corev1.PodTemplateSpec) {
			if got := envMap(out.Spec.InitContainers[0])["SLUICE_PROXY_OPAQUE_PORTS"].Value; got != "3306,9000-9100" {
				t.Errorf("opaque ports %q", got)
			}
		}},
		{annotation: meshmeta.AnnotationOpaquePorts, value: "mysql", bad: true},
		{annotation: meshmeta.AnnotationProxyLogLevel, value: "debug", check: func(t *testing.T, out *corev1.PodTemplateSpec) {
			if got := envMap(out.Spec.InitContainers[0])["SLUICE_PROXY_LOG_LEVEL"].Value; got != "debug" {
				t.Errorf("log level %q", got)
			}
		}},
		{annotation: meshmeta.AnnotationProxyLogLevel, value: "verbose", bad: true},
		{annotation: meshmeta.AnnotationInterceptionMode, value: "iptables", check: func(t *testing.T, out *corev1.PodTemplateSpec) {
			if out.Spec.InitContainers[0].Name != meshmeta.InitContainerName || out.Annotations[meshmeta.AnnotationMode] != "iptables" {
				t.Error("the annotation did not switch to iptables mode")
			}
		}},
		{annotation: meshmeta.AnnotationInterceptionMode, value: "nftables", bad: true},
		{annotation: meshmeta.AnnotationSkipInboundPorts, value: "8080", check: func(t *testing.T, out *corev1.PodTemplateSpec) {
			if out.Annotations[meshmeta.AnnotationSkipInboundPorts] != "8080" {
				t.Error("the annotation, which the agent reads, is gone")
			}
		}},
		{annotation: meshmeta.AnnotationSkipInboundPorts, value: "80,http", bad: true},
		{annotation: meshmeta.AnnotationSkipInboundPorts, value: "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", bad: true},
		{annotation: meshmeta.AnnotationSkipOutboundPorts, value: "0", bad: true},
		{annotation: meshmeta.AnnotationSkipOutboundPorts, value: "443-80", bad: true},
		{annotation: meshmeta.AnnotationSkipSubnets, value: "10.0.0.0/8,fd00::/8", check: func(*testing.T, *corev1.PodTemplateSpec) {}},
		{annotation: meshmeta.AnnotationSkipSubnets, value: "10.0.0.0", bad: true},
	}
	in := Injector{Values: testValues(t, meshmeta.ModeEBPF)}
	for _, tt := range tests {
		t.Run(tt.annotation+"="+tt.value, func(t *testing.T) {
			tmpl := webTemplate()
			tmpl.Annotations[tt.annotation] = tt.value
			out, err := in.Inject(tmpl, Workload{Kind: "Deployment", Name: "web"})
			if tt.bad {
				var ae *AnnotationError
				if !errors.As(err, &ae) || ae.Annotation != tt.annotation || !strings.Contains(err.Error(), tt.annotation) {
					t.Fatalf("error %v does not name %s", err, tt.annotation)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, out)
		})
	}
	t.Run("skipping the proxy's inbound port", func(t *testing.T) {
		tmpl := webTemplate()
		tmpl.Annotations[meshmeta.AnnotationSkipInboundPorts] = "4000-4200"
		_, err := in.Inject(tmpl, Workload{})
		if err == nil || !strings.Contains(err.Error(), "skip-inbound-ports") {
			t.Fatalf("error %v", err)
		}
	})
}

func TestInjectHostNetwork(t *testing.T) {
	tmpl := webTemplate()
	tmpl.Spec.HostNetwork = true
	if _, err := (Injector{Values: DefaultValues()}).Inject(tmpl, Workload{}); !errors.Is(err, ErrHostNetwork) {
		t.Fatalf("error %v, want ErrHostNetwork", err)
	}
}

// TestInjectNameConflicts: a pod that already uses a name injection adds
// is refused with an error naming it, not turned into an invalid pod.
func TestInjectNameConflicts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*corev1.PodSpec)
	}{
		{TokenVolume, func(s *corev1.PodSpec) { s.Volumes = append(s.Volumes, corev1.Volume{Name: TokenVolume}) }},
		{IdentityDirVolume, func(s *corev1.PodSpec) { s.Volumes = append(s.Volumes, corev1.Volume{Name: IdentityDirVolume}) }},
		{XtablesLockVolume, func(s *corev1.PodSpec) { s.Volumes = append(s.Volumes, corev1.Volume{Name: XtablesLockVolume}) }},
		{meshmeta.InitContainerName, func(s *corev1.PodSpec) {
			s.InitContainers = append(s.InitContainers, corev1.Container{Name: meshmeta.InitContainerName, Image: "x"})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := webTemplate()
			tc.modify(&tmpl.Spec)
			_, err := (Injector{Values: testValues(t, meshmeta.ModeEBPF)}).Inject(tmpl, Workload{})
			if err == nil || !strings.Contains(err.Error(), strconv.Quote(tc.name)) || !strings.Contains(err.Error(), "opt out") {
				t.Fatalf("Inject = %v, want an error naming %q and how to opt out", err, tc.name)
			}
		})
	}
}

func TestInjectIdempotent(t *testing.T) {
	for _, mode := range []string{meshmeta.ModeEBPF, meshmeta.ModeIPTables} {
		in := Injector{Values: testValues(t, mode), CreatedBy: "test"}
		once, err := in.Inject(webTemplate(), Workload{Kind: "Deployment", Name: "web", Namespace: "shop"})
		if err != nil {
			t.Fatal(err)
		}
		twice, err := in.Inject(once, Workload{Kind: "Deployment", Name: "web", Namespace: "shop"})
		if err != nil {
			t.Fatal(err)
		}
		if !equalJSON(t, once, twice) {
			t.Errorf("%s: injecting twice changed the template", mode)
		}
	}
}

func TestUninjectRestores(t *testing.T) {
	bare := &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	withConfig := webTemplate()
	withConfig.Annotations[meshmeta.AnnotationInject] = meshmeta.InjectEnabled
	withConfig.Annotations[meshmeta.AnnotationSkipOutboundPorts] = "5432"
	for _, mode := range []string{meshmeta.ModeEBPF, meshmeta.ModeIPTables} {
		for name, tmpl := range map[string]*corev1.PodTemplateSpec{"web": webTemplate(), "bare": bare, "config": withConfig} {
			in := Injector{Values: testValues(t, mode), CreatedBy: "test"}
			out, err := in.Inject(tmpl, Workload{Kind: "CronJob", Name: "x", Namespace: "y"})
			if err != nil {
				t.Fatal(err)
			}
			back, changed := Uninject(out)
			if !changed {
				t.Errorf("%s/%s: Uninject found nothing to remove", mode, name)
			}
			if !equalJSON(t, back, tmpl) {
				a, _ := json.Marshal(back)
				b, _ := json.Marshal(tmpl)
				t.Errorf("%s/%s: Uninject(Inject(t)) != t:\n%s\n%s", mode, name, a, b)
			}
			if _, changed := Uninject(back); changed {
				t.Errorf("%s/%s: a second Uninject changed something", mode, name)
			}
		}
	}
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	x, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(x) == string(y)
}
