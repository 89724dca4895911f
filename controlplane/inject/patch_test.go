package inject

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"

	"github.com/sluice-mesh/sluice/internal/meshmeta"
)

// applyPatch applies ops to before's JSON with evanphx/json-patch, the
// library the API server applies webhook patches with, and returns the
// result decoded.
func applyPatch(t *testing.T, before any, ops any) any {
	t.Helper()
	doc, err := json.Marshal(before)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		t.Fatalf("decode patch %s: %v", raw, err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply patch %s: %v", raw, err)
	}
	var v any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatal(err)
	}
	return v
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

func TestPatchInjectAndUninject(t *testing.T) {
	for _, mode := range []string{meshmeta.ModeEBPF, meshmeta.ModeIPTables} {
		t.Run(mode, func(t *testing.T) {
			in := Injector{Values: testValues(t, mode), CreatedBy: "test"}
			before := webTemplate()
			after, err := in.Inject(before, Workload{Kind: "Deployment", Name: "web", Namespace: "shop"})
			if err != nil {
				t.Fatal(err)
			}
			ops, err := Patch(before, after)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := applyPatch(t, before, ops), asJSON(t, after); !reflect.DeepEqual(got, want) {
				t.Fatalf("patched template differs from Inject's:\n%v\n%v", got, want)
			}
			// The existing init container is not rewritten field by field:
			// the proxy is inserted before it.
			inserts := 0
			for _, op := range ops {
				if strings.HasPrefix(op.Path, "/spec/initContainers/") {
					if op.Operation != "add" || strings.Count(op.Path, "/") != 3 {
						t.Errorf("operation %s %s rewrites an existing init container", op.Operation, op.Path)
					}
					inserts++
				}
			}
			if want := map[string]int{meshmeta.ModeEBPF: 1, meshmeta.ModeIPTables: 2}[mode]; inserts != want {
				t.Errorf("%d init containers inserted, want %d", inserts, want)
			}

			back, _ := Uninject(after)
			ops, err = Patch(after, back)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := applyPatch(t, after, ops), asJSON(t, before); !reflect.DeepEqual(got, want) {
				t.Fatalf("uninject patch does not restore the template:\n%v\n%v", got, want)
			}
		})
	}
}

func TestPatchDeterministic(t *testing.T) {
	in := Injector{Values: testValues(t, meshmeta.ModeIPTables), CreatedBy: "test"}
	before := webTemplate()
	after, err := in.Inject(before, Workload{Kind: "Deployment", Name: "web", Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := Patch(before, after)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(first)
	for range 20 {
		again, err := Patch(before, after)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := json.Marshal(again); string(got) != string(want) {
			t.Fatalf("patch changed between runs:\n%s\n%s", got, want)
		}
	}
}

func TestPatchLists(t *testing.T) {
	obj := func(list ...any) map[string]any { return map[string]any{"a": map[string]any{"l": list}} }
	el := func(n string) map[string]any { return map[string]any{"name": n, "v": map[string]any{"x": n}} }
	tests := []struct {
		name       string
		before     any
		after      any
		wantOps    []string
		wantNoDiff bool
	}{
		{"prepend", obj(el("b"), el("c")), obj(el("a"), el("b"), el("c")), []string{"add /a/l/0"}, false},
		{"prepend two", obj(el("c")), obj(el("a"), el("b"), el("c")), []string{"add /a/l/0", "add /a/l/1"}, false},
		{"insert in the middle", obj(el("a"), el("c")), obj(el("a"), el("b"), el("c")), []string{"add /a/l/1"}, false},
		{"append", obj(el("a")), obj(el("a"), el("b")), []string{"add /a/l/1"}, false},
		{"remove first two", obj(el("a"), el("b"), el("c")), obj(el("c")), []string{"remove /a/l/1", "remove /a/l/0"}, false},
		{"remove scattered", obj(el("a"), el("b"), el("c"), el("d")), obj(el("b"), el("d")), []string{"remove /a/l/2", "remove /a/l/0"}, false},
		{"rewrite", obj(el("a"), el("b")), obj(el("x"), el("y"), el("z")), nil, false},
		{"same", obj(el("a")), obj(el("a")), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops, err := Patch(tt.before, tt.after)
			if err != nil {
				t.Fatal(err)
			}
			if got := applyPatch(t, tt.before, ops); !reflect.DeepEqual(got, asJSON(t, tt.after)) {
				t.Fatalf("applied %v: got %v", ops, got)
			}
			if tt.wantNoDiff && len(ops) != 0 {
				t.Errorf("ops %v for equal documents", ops)
			}
			if tt.wantOps != nil {
				var got []string
				for _, op := range ops {
					got = append(got, op.Operation+" "+op.Path)
				}
				if !reflect.DeepEqual(got, tt.wantOps) {
					t.Errorf("ops %v, want %v", got, tt.wantOps)
				}
			}
		})
	}
}

// TestPatchRandom checks on random documents that the patch, applied as the
// API server applies it, turns before into after.
func TestPatchRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var gen func(depth int) any
	gen = func(depth int) any {
		switch n := r.IntN(6); {
		case depth > 3 || n == 0:
			return fmt.Sprint(r.IntN(4))
		case n == 1:
			return r.IntN(3)
		case n <= 3:
			m := map[string]any{}
			for range r.IntN(4) {
				m[[]string{"a", "b", "c/d", "e~f"}[r.IntN(4)]] = gen(depth + 1)
			}
			return m
		default:
			var l []any
			for range r.IntN(5) {
				l = append(l, gen(depth+1))
			}
			return l
		}
	}
	// mutate returns a changed copy of v: elements inserted, removed or
	// changed, keys added or dropped.
	var mutate func(v any) any
	mutate = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			out := map[string]any{}
			for k, e := range x {
				if r.IntN(5) == 0 {
					continue
				}
				out[k] = mutate(e)
			}
			if r.IntN(3) == 0 {
				out["new"] = gen(2)
			}
			return out
		case []any:
			var out []any
			for _, e := range x {
				switch r.IntN(6) {
				case 0: // drop
				case 1:
					out = append(out, gen(2), e)
				case 2:
					out = append(out, mutate(e))
				default:
					out = append(out, e)
				}
			}
			if r.IntN(4) == 0 {
				out = append([]any{gen(2)}, out...)
			}
			return out
		}
		if r.IntN(3) == 0 {
			return gen(3)
		}
		return v
	}
	for i := range 2000 {
		before := map[string]any{"root": gen(0)}
		after := map[string]any{"root": mutate(before["root"])}
		ops, err := Patch(before, after)
		if err != nil {
			t.Fatal(err)
		}
		if got := applyPatch(t, before, ops); !reflect.DeepEqual(got, asJSON(t, after)) {
			b, _ := json.Marshal(before)
			a, _ := json.Marshal(after)
			o, _ := json.Marshal(ops)
			t.Fatalf("case %d: patch %s\nof %s\ngives %v\nwant %s", i, o, b, got, a)
		}
	}
}
