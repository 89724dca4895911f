package demo

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/test/demo/demoapp"
)

// objects are the manifest's objects, decoded strictly (an unknown field
// is an error).
type objects struct {
	namespaces      []corev1.Namespace
	serviceAccounts map[string]corev1.ServiceAccount
	services        map[string]corev1.Service
	deployments     map[string]appsv1.Deployment
	statefulSets    map[string]appsv1.StatefulSet
}

// decode decodes every document of manifest.
func decode(t *testing.T, manifest []byte) objects {
	t.Helper()
	objs := objects{
		serviceAccounts: map[string]corev1.ServiceAccount{},
		services:        map[string]corev1.Service{},
		deployments:     map[string]appsv1.Deployment{},
		statefulSets:    map[string]appsv1.StatefulSet{},
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read document %d: %v", i, err)
		}
		var meta struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("decode document %d: %v", i, err)
		}
		if meta.APIVersion == "" || meta.Kind == "" || meta.Name == "" {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			t.Fatalf("document %d lacks apiVersion, kind or name:\n%s", i, doc)
		}
		if meta.Kind != "Namespace" && meta.Namespace != Namespace {
			t.Errorf("%s %s is in namespace %q, want %q", meta.Kind, meta.Name, meta.Namespace, Namespace)
		}
		strict := func(v any) {
			t.Helper()
			if err := yaml.UnmarshalStrict(doc, v); err != nil {
				t.Fatalf("decode %s %s strictly: %v", meta.Kind, meta.Name, err)
			}
		}
		dup := func(exists bool) {
			if exists {
				t.Errorf("%s %s is defined twice", meta.Kind, meta.Name)
			}
		}
		switch gk := meta.APIVersion + "/" + meta.Kind; gk {
		case "v1/Namespace":
			var o corev1.Namespace
			strict(&o)
			objs.namespaces = append(objs.namespaces, o)
		case "v1/ServiceAccount":
			var o corev1.ServiceAccount
			strict(&o)
			_, ok := objs.serviceAccounts[o.Name]
			dup(ok)
			objs.serviceAccounts[o.Name] = o
		case "v1/Service":
			var o corev1.Service
			strict(&o)
			_, ok := objs.services[o.Name]
			dup(ok)
			objs.services[o.Name] = o
		case "apps/v1/Deployment":
			var o appsv1.Deployment
			strict(&o)
			_, ok := objs.deployments[o.Name]
			dup(ok)
			objs.deployments[o.Name] = o
		case "apps/v1/StatefulSet":
			var o appsv1.StatefulSet
			strict(&o)
			_, ok := objs.statefulSets[o.Name]
			dup(ok)
			objs.statefulSets[o.Name] = o
		default:
			t.Errorf("document %d: unexpected %s %s", i, gk, meta.Name)
		}
	}
	return objs
}

func TestManifestNamespace(t *testing.T) {
	objs := decode(t, Manifest)
	if len(objs.namespaces) != 1 || objs.namespaces[0].Name != Namespace ||
		objs.namespaces[0].Annotations["sluice.io/inject"] != "enabled" {
		t.Errorf("namespaces = %+v, want one, %q, annotated sluice.io/inject: enabled", objs.namespaces, Namespace)
	}
}

// checkPod checks a workload's pod template: labels, service account,
// one container running role with a valid command line, resource
// requests. It returns the container.
func checkPod(t *testing.T, objs objects, kind, name string, selector *metav1.LabelSelector, tmpl corev1.PodTemplateSpec) corev1.Container {
	t.Helper()
	if selector == nil || selector.MatchLabels["app"] != name || tmpl.Labels["app"] != name {
		t.Errorf("%s %s: selector %v and template labels %v, want app: %s", kind, name, selector, tmpl.Labels, name)
	}
	if tmpl.Spec.ServiceAccountName != name {
		t.Errorf("%s %s: serviceAccountName %q, want %q", kind, name, tmpl.Spec.ServiceAccountName, name)
	}
	if _, ok := objs.serviceAccounts[name]; !ok {
		t.Errorf("%s %s: no ServiceAccount %s", kind, name, name)
	}
	if len(tmpl.Spec.Containers) != 1 {
		t.Fatalf("%s %s: %d containers, want 1", kind, name, len(tmpl.Spec.Containers))
	}
	c := tmpl.Spec.Containers[0]
	if img, tag, _ := strings.Cut(c.Image, ":"); img != Image || tag == "" || strings.Contains(tag, "@") {
		t.Errorf("%s %s: image %q, want %s:<tag>", kind, name, c.Image, Image)
	}
	if len(c.Command) != 0 {
		t.Errorf("%s %s: command %q, want none (the image's program)", kind, name, c.Command)
	}
	if len(c.Args) == 0 || c.Args[0] != name {
		t.Errorf("%s %s: args %q, want the role %s first", kind, name, c.Args, name)
	}
	if _, err := demoapp.ParseArgs(c.Args); err != nil {
		t.Errorf("%s %s: args %q are not a sluice-demo command line: %v", kind, name, c.Args, err)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("%s %s: resource requests %v, want cpu and memory", kind, name, c.Resources.Requests)
	}
	return c
}

// flag returns the value of a flag of the sluice-demo command line args.
func flag(t *testing.T, args []string, name string) string {
	t.Helper()
	cmd, err := demoapp.ParseArgs(args)
	if err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	f := cmd.Flags().Lookup(name)
	if f == nil {
		t.Fatalf("%s has no flag --%s", args[0], name)
	}
	return f.Value.String()
}

// serviceAddr returns the address of Service name's port in the cluster.
func serviceAddr(name string, port int) string {
	return net.JoinHostPort(name+"."+Namespace+".svc.cluster.local", strconv.Itoa(port))
}

func TestManifestServices(t *testing.T) {
	objs := decode(t, Manifest)
	tests := []struct {
		name     string
		port     int
		portName string
		grpc     bool // gRPC health probe, not HTTP /healthz
	}{
		{name: "web", port: 8080, portName: "http"},
		{name: "books", port: 8081, portName: "grpc", grpc: true},
		{name: "authors", port: 8082, portName: "http"},
		{name: "ticker", port: 8083, portName: "ws"},
	}
	var names []string
	for _, tt := range tests {
		names = append(names, tt.name)
		d, ok := objs.deployments[tt.name]
		if !ok {
			t.Errorf("no Deployment %s", tt.name)
			continue
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
			t.Errorf("Deployment %s: replicas %v, want 1", tt.name, d.Spec.Replicas)
		}
		c := checkPod(t, objs, "Deployment", tt.name, d.Spec.Selector, d.Spec.Template)

		if got, want := flag(t, c.Args, "listen"), ":"+strconv.Itoa(tt.port); got != want {
			t.Errorf("Deployment %s: --listen=%s, want %s", tt.name, got, want)
		}
		if len(c.Ports) != 1 || c.Ports[0].Name != tt.portName || c.Ports[0].ContainerPort != int32(tt.port) {
			t.Errorf("Deployment %s: ports %+v, want %s %d", tt.name, c.Ports, tt.portName, tt.port)
		}
		p := c.ReadinessProbe
		switch {
		case p == nil:
			t.Errorf("Deployment %s: no readiness probe", tt.name)
		case tt.grpc:
			if p.GRPC == nil || p.GRPC.Port != int32(tt.port) {
				t.Errorf("Deployment %s: readiness probe %+v, want gRPC on %d", tt.name, p.ProbeHandler, tt.port)
			}
		default:
			if p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port != intstr.FromString(tt.portName) {
				t.Errorf("Deployment %s: readiness probe %+v, want GET /healthz on %s", tt.name, p.ProbeHandler, tt.portName)
			}
		}

		s, ok := objs.services[tt.name]
		if !ok {
			t.Errorf("no Service %s", tt.name)
			continue
		}
		if s.Spec.Selector["app"] != tt.name || len(s.Spec.Selector) != 1 {
			t.Errorf("Service %s: selector %v, want app: %s", tt.name, s.Spec.Selector, tt.name)
		}
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Port != int32(tt.port) || s.Spec.Ports[0].Name != tt.portName ||
			s.Spec.Ports[0].TargetPort != intstr.FromString(tt.portName) {
			t.Errorf("Service %s: ports %+v, want %s %d to the container's %s", tt.name, s.Spec.Ports, tt.portName, tt.port, tt.portName)
		}
	}
	var deployments []string
	for name := range objs.deployments {
		deployments = append(deployments, name)
	}
	slices.Sort(deployments)
	slices.Sort(names)
	if !slices.Equal(deployments, names) {
		t.Errorf("Deployments %v, want exactly %v (every Deployment must receive traffic)", deployments, names)
	}

	// web's upstreams are the Services above.
	web := objs.deployments["web"].Spec.Template.Spec.Containers[0].Args
	if got, want := flag(t, web, "books"), serviceAddr("books", 8081); got != want {
		t.Errorf("web --books=%s, want %s", got, want)
	}
	if got, want := flag(t, web, "authors"), "http://"+serviceAddr("authors", 8082); got != want {
		t.Errorf("web --authors=%s, want %s", got, want)
	}
	if got, want := flag(t, web, "ticker"), "ws://"+serviceAddr("ticker", 8083)+"/ws"; got != want {
		t.Errorf("web --ticker=%s, want %s", got, want)
	}
	authors := objs.deployments["authors"].Spec.Template.Spec.Containers[0].Args
	if got := flag(t, authors, "failure-rate"); got != "0.1" {
		t.Errorf("authors --failure-rate=%s, want 0.1", got)
	}
}

func TestManifestLoadgen(t *testing.T) {
	objs := decode(t, Manifest)
	if _, ok := objs.deployments["loadgen"]; ok {
		t.Error("loadgen is a Deployment; it must not be one (it receives no traffic)")
	}
	ss, ok := objs.statefulSets["loadgen"]
	if !ok {
		t.Fatal("no StatefulSet loadgen")
	}
	if len(objs.statefulSets) != 1 {
		t.Errorf("%d StatefulSets, want only loadgen", len(objs.statefulSets))
	}
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas != 1 || ss.Spec.ServiceName != "loadgen" {
		t.Errorf("StatefulSet loadgen: replicas %v, serviceName %q, want 1 and loadgen", ss.Spec.Replicas, ss.Spec.ServiceName)
	}
	c := checkPod(t, objs, "StatefulSet", "loadgen", ss.Spec.Selector, ss.Spec.Template)
	u, err := url.Parse(flag(t, c.Args, "target"))
	if err != nil || u.Scheme != "http" || u.Host != serviceAddr("web", 8080) {
		t.Errorf("loadgen --target=%v (%v), want http://%s", u, err, serviceAddr("web", 8080))
	}
	if rps, err := strconv.ParseFloat(flag(t, c.Args, "rps"), 64); err != nil || rps < 5 || rps > 100 {
		t.Errorf("loadgen --rps=%v, want a demo rate (5 to 100)", rps)
	}
	s, ok := objs.services["loadgen"]
	if !ok || s.Spec.ClusterIP != corev1.ClusterIPNone || s.Spec.Selector["app"] != "loadgen" {
		t.Errorf("Service loadgen = %+v, want headless, selecting app: loadgen", s.Spec)
	}
}
