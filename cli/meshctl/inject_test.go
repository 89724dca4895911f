package meshctl

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/cli/internal/golden"
	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/controlplane/inject/manifest"
)

// valueArgs pin the values the golden files were made with.
var valueArgs = []string{"--ignore-cluster", "--proxy-version=v1.0.0", "--init-version=v1.0.0", "--trust-anchors=testdata/inject/anchors.pem"}

// runMeshctl runs meshctl with args and stdin, returning stdout, stderr
// and the error.
func runMeshctl(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := newCmdRoot(newGlobalOptions())
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// documents returns the documents of a manifest as JSON text, as
// Kubernetes reads them.
func documents(t *testing.T, in string) []string {
	t.Helper()
	s, err := manifest.Read([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	raws, err := s.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range raws {
		out = append(out, string(r))
	}
	return out
}

// comments returns the comment lines of a YAML manifest.
func comments(in string) []string {
	var out []string
	for _, l := range strings.Split(in, "\n") {
		if _, c, ok := strings.Cut(l, "# "); ok {
			out = append(out, c)
		}
	}
	return out
}

func TestInjectGolden(t *testing.T) {
	tests := []struct {
		file   string
		flags  []string
		report []string
	}{
		{file: "deployment.yaml", report: []string{"deployment/web injected"}},
		{file: "deployment.yaml", flags: []string{"--mode=iptables"}, report: []string{"deployment/web injected"}},
		{file: "hostnetwork.yaml", report: []string{"daemonset/node-exporter skipped: hostNetwork", "pod/debug skipped: hostNetwork"}},
		{file: "job.yaml", report: []string{"job/db-backup injected"}},
		{file: "cronjob.yaml", report: []string{"cronjob/report injected"}},
		{file: "statefulset.yaml", report: []string{"statefulset/redis injected"}},
		{file: "list.yaml", report: []string{"deployment/api injected", "replicaset/worker injected"}},
		{file: "multi.yaml", report: []string{"deployment/books injected", "deployment/poller skipped: the pod has sluice.io/inject: disabled"}},
		{file: "pod.json", report: []string{"pod/curl injected"}},
		{file: "unknown-fields.yaml", report: []string{"deployment/future injected"}},
		{file: "iptables.yaml", report: []string{"deployment/legacy injected"}},
		{file: "injected.yaml", report: []string{"deployment/web skipped: already injected"}},
	}
	for _, tt := range tests {
		name := strings.TrimSuffix(tt.file, filepath.Ext(tt.file))
		for _, f := range tt.flags {
			name += "_" + strings.NewReplacer("--", "", "=", "-").Replace(f)
		}
		t.Run(name, func(t *testing.T) {
			in := filepath.Join("testdata/inject/in", tt.file)
			out, errOut, err := runMeshctl(t, "", append(append([]string{"inject"}, valueArgs...), append(tt.flags, in)...)...)
			if err != nil {
				t.Fatalf("meshctl inject: %v\n%s", err, errOut)
			}
			if got := strings.Split(strings.TrimSpace(errOut), "\n"); strings.Join(got, "\n") != strings.Join(tt.report, "\n") {
				t.Errorf("report %q, want %q", got, tt.report)
			}
			golden.Assert(t, "inject/out/"+name+".inject"+filepath.Ext(tt.file), []byte(out))

			// Injecting the output again changes nothing.
			again, errOut, err := runMeshctl(t, out, append(append([]string{"inject"}, valueArgs...), append(tt.flags, "-")...)...)
			if err != nil {
				t.Fatal(err)
			}
			if again != out {
				t.Errorf("inject is not idempotent:\n%s", again)
			}
			for _, l := range strings.Split(strings.TrimSpace(errOut), "\n") {
				if !strings.Contains(l, " skipped: ") {
					t.Errorf("second inject reported %q", l)
				}
			}

			// Uninjecting the output gives back the input (as meshctl
			// writes it), except for a manifest that came injected.
			back, _, err := runMeshctl(t, out, "uninject", "-")
			if err != nil {
				t.Fatal(err)
			}
			orig, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			if tt.file == "injected.yaml" {
				golden.Assert(t, "inject/out/"+name+".uninject.yaml", []byte(back))
				return
			}
			if got, want := documents(t, back), documents(t, string(orig)); !slices.Equal(got, want) {
				t.Errorf("uninject(inject(x)) differs from x:\n%s\nwant\n%s", got, want)
			}
			if got, want := comments(back), comments(string(orig)); !slices.Equal(got, want) {
				t.Errorf("comments %q, want %q", got, want)
			}
		})
	}
}

func TestUninjectReport(t *testing.T) {
	_, errOut, err := runMeshctl(t, "", "uninject", "testdata/inject/in/injected.yaml", "testdata/inject/in/job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if want := "deployment/web uninjected\njob/db-backup skipped: not injected\n"; errOut != want {
		t.Errorf("report %q, want %q", errOut, want)
	}
}

func TestInjectDirectory(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "b"), 0o755)
	copyFile(t, "testdata/inject/in/job.yaml", filepath.Join(dir, "a.yaml"))
	copyFile(t, "testdata/inject/in/pod.json", filepath.Join(dir, "b", "c.json"))
	copyFile(t, "testdata/inject/in/cronjob.yaml", filepath.Join(dir, "b", "d.yml"))
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("kind: Pod\n"), 0o644)
	out, errOut, err := runMeshctl(t, "", append(append([]string{"inject"}, valueArgs...), dir)...)
	if err != nil {
		t.Fatal(err)
	}
	if want := "job/db-backup injected\npod/curl injected\ncronjob/report injected\n"; errOut != want {
		t.Errorf("report %q, want %q: files in lexical order, .txt skipped", errOut, want)
	}
	// One stream kubectl can read: YAML documents, the JSON ones among them.
	s, err := manifest.Read([]byte(out))
	if err != nil {
		t.Fatalf("output does not read back: %v\n%s", err, out)
	}
	if s.Len() != 4 {
		t.Errorf("%d documents, want 4 (job, pod, service, cronjob):\n%s", s.Len(), out)
	}
	ts, err := s.Templates()
	if err != nil || len(ts) != 3 {
		t.Fatalf("templates %d, %v", len(ts), err)
	}
	for _, tp := range ts {
		if !inject.Injected(&tp.Spec.Spec) {
			t.Errorf("%s not injected", tp.Ref())
		}
	}
}

func TestInjectJSONStreams(t *testing.T) {
	// Two JSON inputs give one JSON stream.
	out, _, err := runMeshctl(t, "", append(append([]string{"inject"}, valueArgs...), "testdata/inject/in/pod.json", "testdata/inject/in/pod.json")...)
	if err != nil {
		t.Fatal(err)
	}
	s, err := manifest.Read([]byte(out))
	if err != nil || s.Format != manifest.JSON || s.Len() != 4 {
		t.Fatalf("output: %v, %v documents, err %v", s.Format, s.Len(), err)
	}
}

func TestInjectInvalid(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dep := func(annotation string) string {
		return "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata:\n      annotations: {" +
			annotation + "}\n    spec: {containers: [{name: a, image: a}]}\n"
	}
	good := write("good.yaml", dep(""))
	tests := []struct {
		name, content string
		want          []string
	}{
		{"syntax.yaml", "kind: ConfigMap\n---\nkind: Pod\nmetadata: {name: [\n", []string{"syntax.yaml: document 2: parse YAML"}},
		{"annotation.yaml", "kind: Service\n---\n" + dep(`config.sluice.io/skip-inbound-ports: "http"`),
			[]string{"annotation.yaml: document 2 (deployment/web): annotation config.sluice.io/skip-inbound-ports", `"http"`}},
		{"mode.yaml", dep(`config.sluice.io/interception-mode: nft`), []string{"mode.yaml: document 1 (deployment/web): annotation config.sluice.io/interception-mode"}},
		{"notemplate.yaml", "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec: {replicas: 1}\n", []string{"notemplate.yaml: document 1 (statefulset/db): no spec.template"}},
		{"types.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: {name: a}}\n", []string{"types.yaml: document 1 (pod/p): the pod: json: cannot unmarshal"}},
		{"list.yaml", "apiVersion: v1\nkind: List\nitems:\n- kind: Service\n- apiVersion: batch/v1\n  kind: Job\n  metadata: {name: j}\n  spec: {}\n", []string{"list.yaml: document 1, item 2 (job/j): no spec.template"}},
		{"broken.json", `{"kind": "Pod",}`, []string{"broken.json: document 1: parse JSON"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bad := write(tt.name, tt.content)
			out, _, err := runMeshctl(t, "", "inject", "--ignore-cluster", good, bad)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if out != "" {
				t.Errorf("wrote output for the good file before failing:\n%s", out)
			}
		})
	}
}

func TestInjectArgs(t *testing.T) {
	for _, args := range [][]string{{"inject"}, {"inject", "-", "-"}, {"uninject"}, {"inject", "--ignore-cluster", "testdata/inject/in/none.yaml"}, {"inject", "--ignore-cluster", "--mode=nft", "-"}} {
		if _, _, err := runMeshctl(t, "", args...); err == nil {
			t.Errorf("meshctl %v: no error", args)
		}
	}
}

func TestInjectWithoutCluster(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: team-a}}]
current-context: c
`), 0o600)
	pod := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: a}]}\n"
	out, errOut, err := runMeshctl(t, pod, "inject", "--kubeconfig", kubeconfig, "-")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "using the default values: cannot read the installed ones") || !strings.Contains(errOut, "pod/p injected") {
		t.Errorf("stderr %q does not say the cluster could not be read", errOut)
	}
	var got struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := sigsyaml.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if ns := got.Metadata.Labels["sluice.io/workload-ns"]; ns != "team-a" {
		t.Errorf("workload namespace %q, want the kubeconfig context's team-a", ns)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
