// Package manifest is meshctl inject's view of Kubernetes manifests: it
// reads multi-document YAML or a stream of JSON objects, finds the pod
// templates of Pods, Deployments, ReplicaSets, StatefulSets, DaemonSets,
// ReplicationControllers, Jobs and CronJobs (also inside List documents),
// applies the injection's JSON patch to each (Inject, Uninject), and writes
// the documents back in the format they came in.
//
// Documents are held as YAML node trees, not as typed objects: fields this
// version of Kubernetes' types does not know, comments, key order and
// scalar styles outside the parts the patch changes are kept. Documents of
// other kinds pass through unchanged.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

// Format is how a stream is written.
type Format int

// The formats.
const (
	// YAML is one or more YAML documents separated by "---".
	YAML Format = iota
	// JSON is one or more JSON values, one after the other.
	JSON
)

// String returns "yaml" or "json".
func (f Format) String() string {
	if f == JSON {
		return "json"
	}
	return "yaml"
}

// Stream is the documents of one input, in order.
type Stream struct {
	Format Format
	docs   []*yaml.Node
}

// Read parses data: a stream of JSON values when it starts with '{' or
// '[' (after blanks), as kubectl decides, otherwise YAML documents. Empty
// YAML documents, and those that hold only comments, are dropped. A syntax
// error names the document (1-based).
func Read(data []byte) (*Stream, error) {
	trimmed := bytes.TrimLeft(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")), " \t\r\n")
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		return readJSON(trimmed)
	}
	return readYAML(data)
}

func readJSON(data []byte) (*Stream, error) {
	s := &Stream{Format: JSON}
	dec := json.NewDecoder(bytes.NewReader(data))
	for n := 1; ; n++ {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return s, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: parse JSON: %w", n, err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			return nil, fmt.Errorf("document %d: parse JSON: %w", n, err)
		}
		if err := checkDoc(&doc); err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		s.docs = append(s.docs, &doc)
	}
}

func readYAML(data []byte) (*Stream, error) {
	s := &Stream{Format: YAML}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for n := 1; ; n++ {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return s, nil
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: parse YAML: %w", n, err)
		}
		if empty(&doc) {
			continue
		}
		if err := checkDoc(&doc); err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		s.docs = append(s.docs, &doc)
	}
}

// checkDoc makes sure the document can be written again and read as JSON,
// so that nothing fails half-way through writing.
func checkDoc(doc *yaml.Node) error {
	if _, err := toJSON(doc); err != nil {
		return err
	}
	return nil
}

// empty reports whether doc holds no value: nothing, or an empty scalar
// (comments alone make no object).
func empty(doc *yaml.Node) bool {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return true
	}
	c := doc.Content[0]
	return len(doc.Content) == 1 && c.Kind == yaml.ScalarNode && c.Value == "" && c.Style == 0
}

// JSON returns every document as JSON, as Kubernetes reads it.
func (s *Stream) JSON() ([]json.RawMessage, error) {
	out := make([]json.RawMessage, len(s.docs))
	for i, d := range s.docs {
		j, err := toJSON(d)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		out[i] = j
	}
	return out, nil
}

// Len is the number of documents.
func (s *Stream) Len() int { return len(s.docs) }

// Write writes the documents in s.Format: YAML documents separated by
// "---" with two-space indentation (list items at their key's indentation,
// as kubectl writes them), or JSON values indented by two spaces, one after
// the other. A YAML document's top level is written in block style, so
// that the output does not start like JSON.
func (s *Stream) Write(w io.Writer) error {
	return WriteAll(w, s)
}

// WriteAll writes streams one after the other as one stream that kubectl
// reads: JSON values one after the other when every stream is JSON,
// otherwise documents separated by "---", those of JSON streams written
// as JSON (which YAML reads).
func WriteAll(w io.Writer, streams ...*Stream) error {
	allJSON := true
	for _, s := range streams {
		allJSON = allJSON && (s.Format == JSON || len(s.docs) == 0)
	}
	var buf bytes.Buffer
	first := true
	for _, s := range streams {
		for _, d := range s.docs {
			if !first && !allJSON {
				buf.WriteString("---\n")
			}
			first = false
			if s.Format == JSON {
				if err := writeJSON(&buf, d, ""); err != nil {
					return err
				}
				buf.WriteByte('\n')
				continue
			}
			if err := writeYAML(&buf, d); err != nil {
				return err
			}
		}
	}
	_, err := w.Write(buf.Bytes())
	return err
}

func writeYAML(buf *bytes.Buffer, doc *yaml.Node) error {
	if len(doc.Content) > 0 {
		doc.Content[0].Style &^= yaml.FlowStyle
	}
	enc := yaml.NewEncoder(buf)
	enc.SetIndent(2)
	enc.CompactSeqIndent()
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("write YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("write YAML: %w", err)
	}
	return nil
}

// toJSON returns n as JSON, reading YAML as Kubernetes does
// (sigs.k8s.io/yaml).
func toJSON(n *yaml.Node) ([]byte, error) {
	y, err := yaml.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("encode YAML: %w", err)
	}
	j, err := sigsyaml.YAMLToJSON(y)
	if err != nil {
		return nil, fmt.Errorf("convert to JSON: %w", err)
	}
	return j, nil
}

// Template is one pod template in a stream: a Pod's metadata and spec, or a
// workload's spec.template (spec.jobTemplate.spec.template of a CronJob).
type Template struct {
	// Doc is the document's number in the stream, from 1.
	Doc int
	// Item is the number of the item in a List document, from 1; 0
	// outside a List.
	Item int
	// Kind, Name and Namespace are those of the object that holds the
	// template.
	Kind, Name, Namespace string
	// Spec is the template as Kubernetes' types read it.
	Spec corev1.PodTemplateSpec

	node *yaml.Node
}

// Ref names the object as kubectl does: "deployment/web".
func (t *Template) Ref() string {
	name := t.Name
	if name == "" {
		name = "<unnamed>"
	}
	return strings.ToLower(t.Kind) + "/" + name
}

// Where locates the template for error messages: "document 2
// (deployment/web)", "document 1, item 3 (pod/x)".
func (t *Template) Where() string {
	if t.Item > 0 {
		return fmt.Sprintf("document %d, item %d (%s)", t.Doc, t.Item, t.Ref())
	}
	return fmt.Sprintf("document %d (%s)", t.Doc, t.Ref())
}

// templatePath is where a kind keeps its pod template, and the API group
// the kind must belong to.
type templatePath struct {
	groups []string
	path   []string
}

var templatePaths = map[string]templatePath{
	"Pod":                   {groups: []string{""}},
	"ReplicationController": {groups: []string{""}, path: []string{"spec", "template"}},
	"Deployment":            {groups: []string{"apps", "extensions"}, path: []string{"spec", "template"}},
	"ReplicaSet":            {groups: []string{"apps", "extensions"}, path: []string{"spec", "template"}},
	"StatefulSet":           {groups: []string{"apps"}, path: []string{"spec", "template"}},
	"DaemonSet":             {groups: []string{"apps", "extensions"}, path: []string{"spec", "template"}},
	"Job":                   {groups: []string{"batch"}, path: []string{"spec", "template"}},
	"CronJob":               {groups: []string{"batch"}, path: []string{"spec", "jobTemplate", "spec", "template"}},
}

// Templates returns the pod templates of every document, in order. A
// document of a workload kind whose template is missing or does not decode
// gives an error that says where.
func (s *Stream) Templates() ([]*Template, error) {
	var out []*Template
	for i, d := range s.docs {
		if len(d.Content) == 0 {
			continue
		}
		ts, err := templates(d.Content[0], i+1, 0)
		if err != nil {
			return nil, err
		}
		out = append(out, ts...)
	}
	return out, nil
}

func templates(obj *yaml.Node, doc, item int) ([]*Template, error) {
	if obj.Kind != yaml.MappingNode {
		return nil, nil
	}
	kind := scalar(get(obj, "kind"))
	apiVersion := scalar(get(obj, "apiVersion"))
	if items := get(obj, "items"); item == 0 && items != nil && items.Kind == yaml.SequenceNode && strings.HasSuffix(kind, "List") {
		var out []*Template
		for i, it := range items.Content {
			ts, err := templates(it, doc, i+1)
			if err != nil {
				return nil, err
			}
			out = append(out, ts...)
		}
		return out, nil
	}
	tp, ok := templatePaths[kind]
	if !ok {
		return nil, nil
	}
	group, _, _ := strings.Cut(apiVersion, "/")
	if !strings.Contains(apiVersion, "/") {
		group = ""
	}
	found := false
	for _, g := range tp.groups {
		found = found || g == group
	}
	if !found {
		return nil, nil
	}
	meta := get(obj, "metadata")
	t := &Template{Doc: doc, Item: item, Kind: kind, Name: scalar(get(meta, "name")), Namespace: scalar(get(meta, "namespace"))}
	n := obj
	for i, k := range tp.path {
		n = get(n, k)
		if n == nil || n.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s: no %s", t.Where(), strings.Join(tp.path[:i+1], "."))
		}
	}
	j, err := toJSON(n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.Where(), err)
	}
	if err := json.Unmarshal(j, &t.Spec); err != nil {
		where := "the pod"
		if len(tp.path) > 0 {
			where = strings.Join(tp.path, ".")
		}
		return nil, fmt.Errorf("%s: %s: %w", t.Where(), where, err)
	}
	t.node = n
	return []*Template{t}, nil
}

// get returns the value of key in the mapping n, or nil.
func get(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// scalar returns n's value if it is a scalar, else "".
func scalar(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}
