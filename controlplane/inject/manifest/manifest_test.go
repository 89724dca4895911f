package manifest

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/sluice-mesh/sluice/controlplane/inject"
	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

const workloads = `# a comment that stays
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      futureField: keep   # unknown to this version
      initContainers:
      - name: setup
        image: busybox
        futureContainerField: {x: 1}
      containers:
      - name: web
        image: nginx
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 0 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: job, image: busybox}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x}
  spec: {containers: [{name: a, image: a}]}
- apiVersion: apps/v1
  kind: DaemonSet
  metadata: {name: agent}
  spec:
    template:
      spec:
        hostNetwork: true
        containers: [{name: a, image: a}]
---
apiVersion: example.com/v1
kind: Deployment
metadata: {name: not-apps}
spec: {template: {spec: {containers: [{name: a, image: a}]}}}
`

func read(t *testing.T, s string) *Stream {
	t.Helper()
	st, err := Read([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func write(t *testing.T, s *Stream) string {
	t.Helper()
	var b bytes.Buffer
	if err := s.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestTemplates(t *testing.T) {
	ts, err := read(t, workloads).Templates()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tt := range ts {
		got = append(got, tt.Where()+" ns="+tt.Namespace)
	}
	want := []string{
		"document 1 (deployment/web) ns=shop",
		"document 3 (cronjob/nightly) ns=",
		"document 4, item 1 (pod/a) ns=x",
		"document 4, item 2 (daemonset/agent) ns=",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("templates\n%q\nwant\n%q", got, want)
	}
	if ts[1].Spec.Spec.RestartPolicy != corev1.RestartPolicyOnFailure {
		t.Errorf("the CronJob's template was not decoded: %+v", ts[1].Spec.Spec)
	}
}

func TestTemplateErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"kind: Service\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n", "document 2 (deployment/web): no spec.template"},
		{"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: 3, image: [x]}]}\n", "document 1 (pod/p): the pod: json: cannot unmarshal"},
		{"apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {jobTemplate: {spec: {}}}\n", "document 1 (cronjob/c): no spec.jobTemplate.spec.template"},
	}
	for _, tt := range tests {
		_, err := read(t, tt.in).Templates()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("error %v, want %q", err, tt.want)
		}
	}
	for _, in := range []string{"a: [\n", "a: 1\n---\nb: {\n", `{"a": 1} {"b": `} {
		if _, err := Read([]byte(in)); err == nil || !strings.Contains(err.Error(), "document") {
			t.Errorf("Read(%q) = %v, want an error naming the document", in, err)
		}
	}
}

// TestInjectMatchesMutation checks that what Inject writes into the
// documents reads back as exactly what inject.Injector made of each
// template, the webhook's mutation, while fields Kubernetes' types do not
// know stay where they were.
func TestInjectMatchesMutation(t *testing.T) {
	for _, mode := range []string{meshmeta.ModeEBPF, meshmeta.ModeIPTables} {
		t.Run(mode, func(t *testing.T) {
			v := inject.DefaultValues()
			v.InterceptionMode = mode
			in := inject.Injector{Values: v, CreatedBy: "test"}
			s := read(t, workloads)
			before, err := s.Templates()
			if err != nil {
				t.Fatal(err)
			}
			reports, err := Inject(s, in, "default")
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, r := range reports {
				lines = append(lines, r.String())
			}
			want := []string{"deployment/web injected", "cronjob/nightly injected", "pod/a injected", "daemonset/agent skipped: hostNetwork"}
			if !reflect.DeepEqual(lines, want) {
				t.Errorf("reports %q, want %q", lines, want)
			}
			out := write(t, s)
			after, err := read(t, out).Templates()
			if err != nil {
				t.Fatal(err)
			}
			for i, b := range before[:3] {
				ns := b.Namespace
				if ns == "" {
					ns = "default"
				}
				wantT, err := in.Inject(&b.Spec, inject.Workload{Kind: b.Kind, Name: b.Name, Namespace: ns})
				if err != nil {
					t.Fatal(err)
				}
				if got := after[i].Spec; !reflect.DeepEqual(asJSON(t, &got), asJSON(t, wantT)) {
					t.Errorf("%s: written template differs from the mutation:\n%v\n%v", b.Where(), asJSON(t, &got), asJSON(t, wantT))
				}
			}
			for _, keep := range []string{"# a comment that stays", "futureField: keep # unknown to this version", "futureContainerField: {x: 1}", "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}", "apiVersion: example.com/v1"} {
				if !strings.Contains(out, keep) {
					t.Errorf("output lost %q:\n%s", keep, out)
				}
			}
			// The unknown field of the existing init container stays with it.
			var dep struct {
				Spec struct {
					Template struct {
						Spec struct {
							InitContainers []map[string]any `json:"initContainers"`
						} `json:"spec"`
					} `json:"template"`
				} `json:"spec"`
			}
			if err := sigsyaml.Unmarshal([]byte(strings.Split(out, "\n---\n")[0]), &dep); err != nil {
				t.Fatal(err)
			}
			for _, c := range dep.Spec.Template.Spec.InitContainers {
				if _, ok := c["futureContainerField"]; ok != (c["name"] == "setup") {
					t.Errorf("futureContainerField on %v", c["name"])
				}
			}

			// Injecting again changes nothing; uninjecting restores the input.
			s2 := read(t, out)
			if _, err := Inject(s2, in, "default"); err != nil {
				t.Fatal(err)
			}
			if again := write(t, s2); again != out {
				t.Errorf("second inject changed the output:\n%s", again)
			}
			if _, err := Uninject(s2); err != nil {
				t.Fatal(err)
			}
			if got, want := docsJSON(t, s2), docsJSON(t, read(t, workloads)); !reflect.DeepEqual(got, want) {
				t.Errorf("uninject did not restore the input:\n%s\nwant\n%s", got, want)
			}
			if back := write(t, s2); !strings.Contains(back, "futureField: keep # unknown to this version") || !strings.Contains(back, "# a comment that stays") {
				t.Errorf("uninject lost comments:\n%s", back)
			}
		})
	}
}

func TestJSONStream(t *testing.T) {
	in := `{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {"z": "1", "a": "2"}}, "spec": {"containers": [{"name": "c", "image": "i", "x-unknown": [1, 2.5, true, null]}]}}
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"k": "<&>"}}`
	s := read(t, in)
	if s.Format != JSON || s.Len() != 2 {
		t.Fatalf("format %v, %d documents", s.Format, s.Len())
	}
	if _, err := Inject(s, inject.Injector{Values: inject.DefaultValues()}, "default"); err != nil {
		t.Fatal(err)
	}
	out := write(t, s)
	dec := json.NewDecoder(strings.NewReader(out))
	var docs []map[string]any
	for dec.More() {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("output is not a JSON stream: %v\n%s", err, out)
		}
		docs = append(docs, d)
	}
	if len(docs) != 2 {
		t.Fatalf("%d documents out", len(docs))
	}
	for _, keep := range []string{`"z": "1",` + "\n" + `      "a": "2",`, `"x-unknown": [`, `2.5`, `"k": "<&>"`, `"initContainers": [`} {
		if !strings.Contains(out, keep) {
			t.Errorf("output lacks %q:\n%s", keep, out)
		}
	}
}

func TestApply(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ops  []jsonpatch.Operation
		want string
		err  string
	}{
		{"add creates missing parents", "spec: {}\n", []jsonpatch.Operation{jsonpatch.NewOperation("add", "/metadata/labels/a~1b", "x")},
			"spec: {}\nmetadata:\n  labels:\n    a/b: x\n", ""},
		{"replace keeps the key's place and comment", "a: 1 # one\nb: 2\n", []jsonpatch.Operation{jsonpatch.NewOperation("replace", "/a", "yes")},
			"a: \"yes\" # one\nb: 2\n", ""},
		{"insert and append, in block style", "l: [a, c]\n", []jsonpatch.Operation{jsonpatch.NewOperation("add", "/l/1", "b"), jsonpatch.NewOperation("add", "/l/-", "d")},
			"l:\n- a\n- b\n- c\n- d\n", ""},
		{"remove", "l:\n- a\n- b\nm: {k: v, j: w}\n", []jsonpatch.Operation{jsonpatch.NewOperation("remove", "/l/0", nil), jsonpatch.NewOperation("remove", "/m/k", nil)},
			"l:\n- b\nm: {j: w}\n", ""},
		{"index out of range", "l: [a]\n", []jsonpatch.Operation{jsonpatch.NewOperation("remove", "/l/1", nil)}, "", "out of range"},
		{"replace of a missing key", "a: 1\n", []jsonpatch.Operation{jsonpatch.NewOperation("replace", "/b", 1)}, "", `no "b"`},
		{"unsupported op", "a: 1\n", []jsonpatch.Operation{jsonpatch.NewOperation("move", "/a", nil)}, "", "unsupported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := read(t, tt.in)
			tmpl := &Template{Doc: 1, Kind: "Pod", node: s.docs[0].Content[0]}
			err := tmpl.Apply(tt.ops, nil)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := write(t, s); got != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// docsJSON returns the documents of s as JSON values.
func docsJSON(t *testing.T, s *Stream) []any {
	t.Helper()
	raws, err := s.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var out []any
	for _, r := range raws {
		var v any
		if err := json.Unmarshal(r, &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func asJSON(t *testing.T, x any) any {
	t.Helper()
	b, err := json.Marshal(x)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// FuzzRead feeds arbitrary input to the manifest reader: it must not panic,
// and what it reads it must write and read again with the same templates.
func FuzzRead(f *testing.F) {
	f.Add([]byte(workloads))
	f.Add([]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c"}]}} [1,2]`))
	f.Add([]byte("a: &x {b: 1}\nc: *x\n---\n- 1\n- yes\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Pod, spec: {}}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Read(data)
		if err != nil {
			return
		}
		ts, terr := s.Templates()
		var b bytes.Buffer
		if err := s.Write(&b); err != nil {
			t.Fatalf("read but cannot write: %v", err)
		}
		s2, err := Read(b.Bytes())
		if err != nil {
			t.Fatalf("cannot read what was written: %v\n%q", err, b.String())
		}
		if s2.Len() != s.Len() {
			t.Fatalf("%d documents became %d:\n%q", s.Len(), s2.Len(), b.String())
		}
		ts2, terr2 := s2.Templates()
		if (terr == nil) != (terr2 == nil) || len(ts) != len(ts2) {
			t.Fatalf("templates changed by a round trip: %v %v, %d %d", terr, terr2, len(ts), len(ts2))
		}
		if terr == nil {
			_, _ = Inject(s, inject.Injector{Values: inject.DefaultValues()}, "default")
			b.Reset()
			if err := s.Write(&b); err != nil {
				t.Fatalf("cannot write after inject: %v", err)
			}
		}
	})
}
