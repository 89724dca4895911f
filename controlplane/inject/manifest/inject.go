package manifest

import (
	"fmt"

	yaml "go.yaml.in/yaml/v3"

	"github.com/sluice-mesh/sluice/controlplane/inject"
)

// Action is what Inject or Uninject did to one workload.
type Action string

// The actions.
const (
	Injected   Action = "injected"
	Uninjected Action = "uninjected"
	Skipped    Action = "skipped"
)

// Report is what happened to one workload, for meshctl's report on stderr.
type Report struct {
	// Ref names the workload: "deployment/web".
	Ref    string
	Action Action
	// Reason says why a workload was skipped.
	Reason string
}

// String is the report's line: "deployment/web injected", "pod/x skipped:
// hostNetwork".
func (r Report) String() string {
	if r.Reason != "" {
		return fmt.Sprintf("%s %s: %s", r.Ref, r.Action, r.Reason)
	}
	return r.Ref + " " + string(r.Action)
}

// Inject adds the proxy to every pod template in s that wants one under
// inject.Always (every pod but those with sluice.io/inject: disabled,
// hostNetwork ones and those injected already), with the same mutation and
// patch as the webhook. A template's namespace is its object's, else
// defaultNamespace. On error (a bad config annotation, a template that
// does not decode), s may be partly changed: write nothing.
func Inject(s *Stream, in inject.Injector, defaultNamespace string) ([]Report, error) {
	ts, err := s.Templates()
	if err != nil {
		return nil, err
	}
	var out []Report
	for _, t := range ts {
		d := inject.Decide(inject.Always, t.Spec.ObjectMeta, &t.Spec.Spec, nil)
		if !d.Inject {
			out = append(out, Report{Ref: t.Ref(), Action: Skipped, Reason: d.Reason})
			continue
		}
		ns := t.Namespace
		if ns == "" {
			ns = defaultNamespace
		}
		after, err := in.Inject(&t.Spec, inject.Workload{Kind: t.Kind, Name: t.Name, Namespace: ns})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.Where(), err)
		}
		if err := t.patch(after); err != nil {
			return nil, err
		}
		out = append(out, Report{Ref: t.Ref(), Action: Injected})
	}
	return out, nil
}

// Uninject removes what Inject added from every pod template in s.
// Templates without a proxy are reported skipped. A template's metadata
// left empty is removed: Inject creates it where a template has none.
func Uninject(s *Stream) ([]Report, error) {
	ts, err := s.Templates()
	if err != nil {
		return nil, err
	}
	var out []Report
	for _, t := range ts {
		after, changed := inject.Uninject(&t.Spec)
		if !changed {
			out = append(out, Report{Ref: t.Ref(), Action: Skipped, Reason: "not injected"})
			continue
		}
		if err := t.patch(after); err != nil {
			return nil, err
		}
		t.dropEmptyMetadata()
		out = append(out, Report{Ref: t.Ref(), Action: Uninjected})
	}
	return out, nil
}

// patch applies the patch from t.Spec to after to the document.
func (t *Template) patch(after any) error {
	ops, err := inject.Patch(&t.Spec, after)
	if err != nil {
		return fmt.Errorf("%s: %w", t.Where(), err)
	}
	return t.Apply(ops, after)
}

// dropEmptyMetadata removes the template's metadata if it is an empty
// mapping without comments.
func (t *Template) dropEmptyMetadata() {
	n := t.node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "metadata" && v.Kind == yaml.MappingNode && len(v.Content) == 0 &&
			k.HeadComment+k.LineComment+k.FootComment+v.HeadComment+v.LineComment+v.FootComment == "" {
			n.Content = append(n.Content[:i], n.Content[i+2:]...)
			return
		}
	}
}
