package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/internal/pki"
)

// TestMerge: files in order, then --set; the base is not modified; bad
// input names what is bad.
func TestMerge(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	b := filepath.Join(dir, "b.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(a, []byte("proxy:\n  logLevel: debug\n  uid: 2102\ndestination:\n  replicas: 2\n"), 0o644)
	os.WriteFile(b, []byte("proxy:\n  logLevel: warn\n"), 0o644)
	os.WriteFile(bad, []byte("proxy: [\n"), 0o644)
	base := map[string]any{"proxy": map[string]any{"opaquePorts": "25"}}
	got, err := ValueOptions{Files: []string{a, b}, Set: []string{"destination.replicas=3,interceptionMode=iptables"}}.Merge(base)
	if err != nil {
		t.Fatal(err)
	}
	want := "destination:\n  replicas: 3\ninterceptionMode: iptables\nproxy:\n  logLevel: warn\n  opaquePorts: \"25\"\n  uid: 2102\n"
	if y, _ := yaml.Marshal(got); string(y) != want {
		t.Errorf("merged:\n%s\nwant:\n%s", y, want)
	}
	if len(base["proxy"].(map[string]any)) != 1 {
		t.Errorf("base was modified: %v", base)
	}
	for _, tc := range []struct {
		o    ValueOptions
		want string
	}{
		{ValueOptions{Files: []string{filepath.Join(dir, "missing.yaml")}}, "missing.yaml"},
		{ValueOptions{Files: []string{bad}}, "bad.yaml"},
		{ValueOptions{Set: []string{"proxy.logLevel"}}, "--set proxy.logLevel"},
	} {
		if _, err := tc.o.Merge(nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Merge(%+v) = %v, want an error naming %q", tc.o, err, tc.want)
		}
	}
}

// TestWithGeneratedIdentity generates a root and issuer that load as an
// issuer, once: given anchors are kept.
func TestWithGeneratedIdentity(t *testing.T) {
	vals, err := WithGeneratedIdentity(map[string]any{"identity": map[string]any{"trustDomain": "example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	anchors, crt, key := lookup(vals, anchorsPath), lookup(vals, issuerCrtPath), lookup(vals, issuerKeyPath)
	if _, err := pki.LoadIssuer([]byte(crt), []byte(key), []byte(anchors), time.Now()); err != nil {
		t.Fatalf("generated issuer does not load: %v", err)
	}
	again, err := WithGeneratedIdentity(vals)
	if err != nil {
		t.Fatal(err)
	}
	if lookup(again, anchorsPath) != anchors {
		t.Error("anchors given were replaced")
	}
}

// TestPreviousValues reads what install left: the user's values and the
// identity credentials.
func TestPreviousValues(t *testing.T) {
	user := map[string]any{"proxy": map[string]any{"logLevel": "debug"}}
	obj, err := ValuesObject("mesh", user)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := obj.Object["stringData"].(map[string]any)
	client := fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: ValuesSecret, Namespace: "mesh"}, Data: map[string][]byte{ValuesKey: []byte(data[ValuesKey].(string))}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: TrustRootsConfigMap, Namespace: "mesh"}, Data: map[string]string{TrustRootsKey: "ROOTS"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: IssuerSecret, Namespace: "mesh"}, Data: map[string][]byte{"tls.crt": []byte("CRT"), "tls.key": []byte("KEY")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sluice-tap-tls", Namespace: "mesh"}, Data: map[string][]byte{"tls.crt": []byte("TC"), "tls.key": []byte("TK"), "ca.crt": []byte("TCA")}},
		// From an older chart, without ca.crt: not kept.
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sluice-proxy-injector-tls", Namespace: "mesh"}, Data: map[string][]byte{"tls.crt": []byte("IC"), "tls.key": []byte("IK")}},
	)
	gotUser, id, err := PreviousValues(t.Context(), client, "mesh")
	if err != nil {
		t.Fatal(err)
	}
	if lookup(gotUser, "proxy.logLevel") != "debug" {
		t.Errorf("user values: %v", gotUser)
	}
	if lookup(id, anchorsPath) != "ROOTS" || lookup(id, issuerCrtPath) != "CRT" || lookup(id, issuerKeyPath) != "KEY" {
		t.Errorf("identity values: %v", id)
	}
	if lookup(id, "tap.tls.crtPEM") != "TC" || lookup(id, "tap.tls.keyPEM") != "TK" || lookup(id, "tap.tls.caBundlePEM") != "TCA" {
		t.Errorf("tap TLS values: %v", id["tap"])
	}
	if _, ok := id["proxyInjector"]; ok {
		t.Errorf("a serving secret without ca.crt was kept: %v", id["proxyInjector"])
	}
	if _, _, err := PreviousValues(t.Context(), fake.NewClientset(), "mesh"); err == nil || !strings.Contains(err.Error(), TrustRootsConfigMap) {
		t.Errorf("without trust roots: %v, want an error naming %s", err, TrustRootsConfigMap)
	}
	if ok, err := Installed(t.Context(), client, "mesh"); ok || err != nil {
		t.Errorf("Installed without %s = %v, %v", ConfigMap, ok, err)
	}
}

// TestParentOfStateDir: the cleanup pod mounts the state directory's
// parent, so that the directory can be removed; other mounts stay.
func TestParentOfStateDir(t *testing.T) {
	dirType := corev1.HostPathDirectoryOrCreate
	vols := []corev1.Volume{
		{Name: "bpffs", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/sys/fs/bpf"}}},
		{Name: "state", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/sluice", Type: &dirType}}},
	}
	mounts := []corev1.VolumeMount{{Name: "bpffs", MountPath: "/sys/fs/bpf"}, {Name: "state", MountPath: "/run/sluice"}}
	gotV, gotM := parentOfStateDir(vols, mounts, "/run/sluice")
	if gotV[1].HostPath.Path != "/run" || gotM[1].MountPath != "/run" || gotV[0].HostPath.Path != "/sys/fs/bpf" || gotM[0].MountPath != "/sys/fs/bpf" {
		t.Errorf("volumes %+v mounts %+v", gotV, gotM)
	}
	if vols[1].HostPath.Path != "/run/sluice" || mounts[1].MountPath != "/run/sluice" {
		t.Error("the DaemonSet's template was modified")
	}
	if v, _ := parentOfStateDir(vols, mounts, "/elsewhere"); v[1].HostPath.Path != "/run/sluice" {
		t.Error("a state dir without a mount changed the volumes")
	}
	if v, _ := parentOfStateDir([]corev1.Volume{{Name: "state", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/sluice"}}}},
		[]corev1.VolumeMount{{Name: "state", MountPath: "/sluice"}}, "/sluice"); v[0].HostPath.Path != "/sluice" {
		t.Error("a state dir under / is mounted through / ")
	}
}
