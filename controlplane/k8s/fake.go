package k8s

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
)

// NewFakeAPI returns an API over a fake clientset that holds the objects
// of manifests (each one or more YAML documents separated by "---"), built
// with every resource. It is for unit tests: start it, Sync it, and change
// objects through Client(); its informers see the changes as they would
// the API server's. Tests of Kubernetes behaviour also run against a real
// API server.
func NewFakeAPI(manifests ...string) (*API, error) {
	cs, err := NewFakeClientset(manifests...)
	if err != nil {
		return nil, err
	}
	return NewAPI(cs, AllResources()...), nil
}

// NewFakeClientset returns a fake clientset holding the objects of
// manifests, for an API built with NewAPI and a chosen list of resources.
// An object that does not decode, or that is there twice, is an error.
func NewFakeClientset(manifests ...string) (*fake.Clientset, error) {
	objs, err := DecodeManifests(manifests...)
	if err != nil {
		return nil, err
	}
	cs := fake.NewClientset()
	for _, obj := range objs {
		if err := cs.Tracker().Add(obj); err != nil {
			return nil, fmt.Errorf("add %s to the fake clientset: %w", describe(obj), err)
		}
	}
	return cs, nil
}

// DecodeManifests decodes the Kubernetes objects of manifests, each one or
// more YAML (or JSON) documents separated by "---" lines. Empty documents
// are skipped; a document of a kind client-go does not know is an error.
func DecodeManifests(manifests ...string) ([]runtime.Object, error) {
	decode := scheme.Codecs.UniversalDeserializer().Decode
	var objs []runtime.Object
	for i, m := range manifests {
		r := yaml.NewYAMLReader(bufio.NewReader(strings.NewReader(m)))
		for doc := 1; ; doc++ {
			b, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("read manifest %d, document %d: %w", i+1, doc, err)
			}
			if strings.TrimSpace(stripComments(string(b))) == "" {
				continue
			}
			obj, _, err := decode(b, nil, nil)
			if err != nil {
				return nil, fmt.Errorf("decode manifest %d, document %d: %w", i+1, doc, err)
			}
			objs = append(objs, obj)
		}
	}
	return objs, nil
}

// stripComments removes YAML comment lines and document separators, so
// that a document of only comments counts as empty.
func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.Lines(doc) {
		if l := strings.TrimSpace(line); !strings.HasPrefix(l, "#") && l != "---" {
			b.WriteString(line)
		}
	}
	return b.String()
}

// describe names obj as "kind namespace/name" for errors.
func describe(obj runtime.Object) string {
	kind := obj.GetObjectKind().GroupVersionKind().Kind
	if m, ok := obj.(interface {
		GetNamespace() string
		GetName() string
	}); ok {
		if m.GetNamespace() == "" {
			return kind + " " + m.GetName()
		}
		return kind + " " + m.GetNamespace() + "/" + m.GetName()
	}
	return kind
}
