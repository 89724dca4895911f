package inject

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

func TestDefaultValuesValid(t *testing.T) {
	v := DefaultValues()
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	if v.DestinationAddress() != "sluice-dst.sluice.svc.cluster.local:8086" || v.IdentityAddress() != "sluice-identity.sluice.svc.cluster.local:8080" {
		t.Errorf("addresses %s %s", v.DestinationAddress(), v.IdentityAddress())
	}
	v.ControlPlaneNamespace, v.ClusterDomain = "mesh", "example.org"
	if v.DestinationAddress() != "sluice-dst.mesh.svc.example.org:8086" {
		t.Errorf("derived destination address %s", v.DestinationAddress())
	}
}

func TestParseValues(t *testing.T) {
	anchors, err := os.ReadFile("testdata/anchors.pem")
	if err != nil {
		t.Fatal(err)
	}
	doc := "controlPlaneNamespace: mesh\ninterceptionMode: iptables\nfutureKey: ignored\nproxy:\n  version: v1.2.3\n  uid: 3000\n" +
		"identity:\n  trustAnchorsPEM: |\n    " + strings.ReplaceAll(strings.TrimSpace(string(anchors)), "\n", "\n    ") + "\n"
	v, err := ParseValues([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if v.ControlPlaneNamespace != "mesh" || v.InterceptionMode != meshmeta.ModeIPTables || v.Proxy.Version != "v1.2.3" || v.Proxy.UID != 3000 {
		t.Errorf("values %+v", v)
	}
	if v.Proxy.Image != DefaultProxyImage || v.ClusterDomain != "cluster.local" || v.Proxy.LogLevel != "info" {
		t.Errorf("keys the document lacks lost their defaults: %+v", v)
	}
	if !v.IdentityEnabled() {
		t.Error("trust anchors not read")
	}

	bad := []struct{ doc, key string }{
		{"interceptionMode: nft", "interceptionMode"},
		{"controlPlaneNamespace: Not_A_Name", "controlPlaneNamespace"},
		{"proxy: {uid: 0}", "proxy.uid"},
		{"proxy: {logLevel: loud}", "proxy.logLevel"},
		{"proxy: {version: 'v 1'}", "proxy.version"},
		{"proxy: {opaquePorts: 'x'}", "proxy.opaquePorts"},
		{"proxy: {skipSubnets: '10.0.0.0'}", "proxy.skipSubnets"},
		{"proxy: {imagePullPolicy: Sometimes}", "proxy.imagePullPolicy"},
		{"identity: {trustAnchorsPEM: 'not pem'}", "identity.trustAnchorsPEM"},
		{"destinationAddr: nowhere", "destinationAddr"},
		{"proxy: [1]", "parse values"},
	}
	for _, b := range bad {
		if _, err := ParseValues([]byte(b.doc)); err == nil || !strings.Contains(err.Error(), b.key) {
			t.Errorf("ParseValues(%q) = %v, want an error naming %s", b.doc, err, b.key)
		}
	}
}

func TestLoadValues(t *testing.T) {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: "mesh"},
		Data:       map[string]string{ValuesKey: "controlPlaneNamespace: mesh\nproxy:\n  version: v7\n"},
	}
	v, err := LoadValues(context.Background(), fake.NewClientset(cm), "mesh")
	if err != nil {
		t.Fatal(err)
	}
	if v.Proxy.Version != "v7" || v.ControlPlaneNamespace != "mesh" {
		t.Errorf("values %+v", v)
	}
	_, err = LoadValues(context.Background(), fake.NewClientset(), "mesh")
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "mesh/sluice-config") {
		t.Errorf("missing ConfigMap: %v", err)
	}
	cm.Data = map[string]string{"other": ""}
	if _, err := LoadValues(context.Background(), fake.NewClientset(cm), "mesh"); err == nil || !strings.Contains(err.Error(), ValuesKey) {
		t.Errorf("ConfigMap without %s: %v", ValuesKey, err)
	}
}

func TestValueFlags(t *testing.T) {
	base := DefaultValues()
	base.Proxy.Version = "from-cluster"
	base.ControlPlaneNamespace = "mesh"

	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	f := BindValueFlags(fs)
	if err := fs.Parse([]string{"--mode=iptables", "--trust-anchors=testdata/anchors.pem", "--proxy-cpu-limit=1", "--proxy-memory-request="}); err != nil {
		t.Fatal(err)
	}
	v, err := f.Apply(base)
	if err != nil {
		t.Fatal(err)
	}
	if v.InterceptionMode != meshmeta.ModeIPTables || !v.IdentityEnabled() {
		t.Errorf("flags not applied: %+v", v)
	}
	if v.Proxy.Version != "from-cluster" || v.ControlPlaneNamespace != "mesh" {
		t.Errorf("flags the user did not set overrode the base: %+v", v)
	}
	if q := v.Proxy.Resources.Limits[corev1.ResourceCPU]; q.Cmp(resource.MustParse("1")) != 0 {
		t.Errorf("cpu limit %v", q.String())
	}
	if _, ok := v.Proxy.Resources.Requests[corev1.ResourceMemory]; ok {
		t.Error("--proxy-memory-request= did not remove the request")
	}
	if _, ok := base.Proxy.Resources.Requests[corev1.ResourceMemory]; !ok {
		t.Error("Apply changed the base's resources")
	}

	for _, args := range [][]string{{"--mode=nft"}, {"--trust-anchors=testdata/none.pem"}, {"--proxy-cpu-request=lots"}} {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		f := BindValueFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Apply(DefaultValues()); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
