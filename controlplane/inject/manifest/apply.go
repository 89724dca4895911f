package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"gomodules.xyz/jsonpatch/v2"
)

// Apply applies the JSON patch ops (paths relative to the template: /metadata,
// /spec) to the template in its document. after is the patched template as
// the ops' author computed it: values are taken from it where they match
// the ops' values, so that new objects keep the field order of Kubernetes'
// types rather than JSON's sorted keys. Unlike RFC 6902, an "add" whose
// parent objects are missing creates them (a template without metadata).
// On error the document may be partly changed.
func (t *Template) Apply(ops []jsonpatch.Operation, after any) error {
	var afterNode *yaml.Node
	if after != nil {
		b, err := json.Marshal(after)
		if err != nil {
			return fmt.Errorf("%s: apply patch: %w", t.Where(), err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(b, &doc); err != nil {
			return fmt.Errorf("%s: apply patch: %w", t.Where(), err)
		}
		afterNode = doc.Content[0]
	}
	for _, op := range ops {
		if err := applyOp(t.node, afterNode, op); err != nil {
			return fmt.Errorf("%s: apply patch: %s %s: %w", t.Where(), op.Operation, op.Path, err)
		}
	}
	return nil
}

func splitPointer(p string) ([]string, error) {
	if p == "" {
		return nil, nil
	}
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("JSON pointer %q does not start with /", p)
	}
	toks := strings.Split(p[1:], "/")
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return toks, nil
}

func applyOp(root, after *yaml.Node, op jsonpatch.Operation) error {
	toks, err := splitPointer(op.Path)
	if err != nil {
		return err
	}
	if len(toks) == 0 {
		return fmt.Errorf("cannot %s the whole template", op.Operation)
	}
	create := op.Operation == "add"
	parent := root
	for _, tok := range toks[:len(toks)-1] {
		next, err := child(parent, tok)
		if err != nil {
			return err
		}
		if next == nil {
			if !create || parent.Kind != yaml.MappingNode {
				return fmt.Errorf("no %q", tok)
			}
			next = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			parent.Content = append(parent.Content, keyNode(tok), next)
		}
		parent = next
	}
	last := toks[len(toks)-1]
	switch op.Operation {
	case "add", "replace":
		val, err := valueNode(after, toks, op.Value)
		if err != nil {
			return err
		}
		return set(parent, last, val, op.Operation == "add")
	case "remove":
		return remove(parent, last)
	}
	return fmt.Errorf("unsupported operation %q", op.Operation)
}

// child returns the value at tok in n (a mapping key or a list index), nil
// when a mapping lacks the key.
func child(n *yaml.Node, tok string) (*yaml.Node, error) {
	switch n.Kind {
	case yaml.MappingNode:
		return get(n, tok), nil
	case yaml.SequenceNode:
		i, err := index(tok, len(n.Content)-1)
		if err != nil {
			return nil, err
		}
		return n.Content[i], nil
	case yaml.AliasNode:
		return nil, fmt.Errorf("cannot patch through the YAML alias *%s", n.Value)
	}
	return nil, fmt.Errorf("%q: not an object or a list", tok)
}

func index(tok string, max int) (int, error) {
	i, err := strconv.Atoi(tok)
	if err != nil || i < 0 || i > max || (len(tok) > 1 && tok[0] == '0') {
		return 0, fmt.Errorf("list index %q out of range 0-%d", tok, max)
	}
	return i, nil
}

// set puts val at key in n. For a list, add inserts (at an index or at the
// end for "-") and replace overwrites; for a mapping, both overwrite an
// existing key in place (keeping its position) or append a new one,
// except that replace requires the key to exist.
func set(n *yaml.Node, key string, val *yaml.Node, add bool) error {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				keepComments(n.Content[i+1], val)
				n.Content[i+1] = val
				return nil
			}
		}
		if !add {
			return fmt.Errorf("no %q to replace", key)
		}
		n.Content = append(n.Content, keyNode(key), val)
		blockStyle(n)
		return nil
	case yaml.SequenceNode:
		if add {
			i := len(n.Content)
			if key != "-" {
				var err error
				if i, err = index(key, len(n.Content)); err != nil {
					return err
				}
			}
			n.Content = slices.Insert(n.Content, i, val)
			blockStyle(n)
			return nil
		}
		i, err := index(key, len(n.Content)-1)
		if err != nil {
			return err
		}
		keepComments(n.Content[i], val)
		n.Content[i] = val
		return nil
	}
	return fmt.Errorf("%q: parent is not an object or a list", key)
}

func remove(n *yaml.Node, key string) error {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				n.Content = append(n.Content[:i], n.Content[i+2:]...)
				return nil
			}
		}
		return fmt.Errorf("no %q to remove", key)
	case yaml.SequenceNode:
		i, err := index(key, len(n.Content)-1)
		if err != nil {
			return err
		}
		n.Content = append(n.Content[:i], n.Content[i+1:]...)
		return nil
	}
	return fmt.Errorf("%q: parent is not an object or a list", key)
}

// blockStyle turns a flow mapping or sequence that the patch added to
// into block style: what the patch adds is written in block style, and a
// flow collection would hold it on one line.
func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
}

// keepComments moves the comments of a replaced scalar to its replacement.
func keepComments(old, val *yaml.Node) {
	if old.Kind == yaml.ScalarNode && val.Kind == yaml.ScalarNode {
		val.HeadComment, val.LineComment, val.FootComment = old.HeadComment, old.LineComment, old.FootComment
	}
}

func keyNode(k string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: k}
	styleForYAML11(n)
	return n
}

// valueNode returns the node to insert for an operation at path whose
// value is v: the node at path in after when it holds the same value (in
// the field order of after), else v as a node.
func valueNode(after *yaml.Node, path []string, v any) (*yaml.Node, error) {
	want, err := normalize(v)
	if err != nil {
		return nil, err
	}
	if n := lookup(after, path); n != nil {
		if j, err := toJSON(n); err == nil {
			if got, err := decode(j); err == nil && reflect.DeepEqual(got, want) {
				return plain(copyNode(n)), nil
			}
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	return plain(doc.Content[0]), nil
}

func normalize(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return decode(b)
}

func decode(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	return v, err
}

func lookup(n *yaml.Node, path []string) *yaml.Node {
	for _, tok := range path {
		if n == nil {
			return nil
		}
		var err error
		if n, err = child(n, tok); err != nil {
			return nil
		}
	}
	return n
}

func copyNode(n *yaml.Node) *yaml.Node {
	c := *n
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, x := range n.Content {
		c.Content[i] = copyNode(x)
	}
	return &c
}

// plain turns a node parsed from JSON into block style, as YAML is
// usually written; strings that YAML 1.1 (kubectl's reading) would take
// for something else stay quoted.
func plain(n *yaml.Node) *yaml.Node {
	n.Style = 0
	if n.Kind == yaml.ScalarNode {
		styleForYAML11(n)
	}
	for _, c := range n.Content {
		plain(c)
	}
	return n
}

// yaml11 are plain scalars that YAML 1.1 reads as booleans but YAML 1.2,
// and so the encoder, as strings.
var yaml11 = map[string]bool{
	"y": true, "Y": true, "yes": true, "Yes": true, "YES": true, "n": true, "N": true, "no": true, "No": true, "NO": true,
	"on": true, "On": true, "ON": true, "off": true, "Off": true, "OFF": true,
}

func styleForYAML11(n *yaml.Node) {
	if n.ShortTag() == "!!str" && yaml11[n.Value] {
		n.Style = yaml.DoubleQuotedStyle
	}
}

// writeJSON writes n as indented JSON. The stream came from JSON, so
// every node is a JSON value: mappings with string keys, sequences and
// scalars whose tags are JSON's.
func writeJSON(b *bytes.Buffer, n *yaml.Node, indent string) error {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			b.WriteString("null")
			return nil
		}
		return writeJSON(b, n.Content[0], indent)
	case yaml.MappingNode:
		if len(n.Content) == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteString("{\n")
		for i := 0; i+1 < len(n.Content); i += 2 {
			b.WriteString(indent + "  ")
			writeString(b, n.Content[i].Value)
			b.WriteString(": ")
			if err := writeJSON(b, n.Content[i+1], indent+"  "); err != nil {
				return err
			}
			if i+2 < len(n.Content) {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "}")
	case yaml.SequenceNode:
		if len(n.Content) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteString("[\n")
		for i, c := range n.Content {
			b.WriteString(indent + "  ")
			if err := writeJSON(b, c, indent+"  "); err != nil {
				return err
			}
			if i+1 < len(n.Content) {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "]")
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			b.WriteString("null")
		case "!!bool", "!!int", "!!float":
			if !json.Valid([]byte(n.Value)) {
				// Not JSON's spelling (a YAML-only form): write it as a
				// string rather than produce invalid JSON.
				writeString(b, n.Value)
				return nil
			}
			b.WriteString(n.Value)
		default:
			writeString(b, n.Value)
		}
	default:
		return fmt.Errorf("write JSON: unexpected YAML node kind %d", n.Kind)
	}
	return nil
}

func writeString(b *bytes.Buffer, s string) {
	var tmp bytes.Buffer
	enc := json.NewEncoder(&tmp)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	b.Write(bytes.TrimSuffix(tmp.Bytes(), []byte("\n")))
}
