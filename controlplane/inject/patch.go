package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
)

// Patch returns the RFC 6902 JSON patch that turns before into after, two
// values that marshal to JSON objects (pod templates for the injector and
// meshctl: paths such as /spec/initContainers/0 then apply to a Pod as to
// a workload's template).
//
// The patch is gomodules.xyz/jsonpatch's, with one refinement: where a list
// gained or lost elements while keeping the others in order (the proxy
// inserted before the existing init containers), the change is the
// insertion or removal of those elements, not a rewrite of every element
// after them. Applied to a document that holds more than the typed fields
// (meshctl's manifests with fields this version does not know), each
// existing element thus keeps its own fields. The operations are in a
// deterministic order: by path, except that removals from one list go from
// the highest index down.
func Patch(before, after any) ([]jsonpatch.Operation, error) {
	a, err := json.Marshal(before)
	if err != nil {
		return nil, fmt.Errorf("make patch: marshal original: %w", err)
	}
	b, err := json.Marshal(after)
	if err != nil {
		return nil, fmt.Errorf("make patch: marshal result: %w", err)
	}
	ops, err := jsonpatch.CreatePatch(a, b)
	if err != nil {
		return nil, fmt.Errorf("make patch: %w", err)
	}
	av, err := decodeJSON(a)
	if err != nil {
		return nil, err
	}
	bv, err := decodeJSON(b)
	if err != nil {
		return nil, err
	}
	ops = refineLists(av, bv, "", ops)
	slices.SortStableFunc(ops, compareOps)
	return ops, nil
}

func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("make patch: %w", err)
	}
	return v, nil
}

// refineLists replaces, for every list under path where one side is the
// other with elements inserted or removed, the element-by-element
// operations under it with those insertions or removals.
func refineLists(a, b any, path string, ops []jsonpatch.Operation) []jsonpatch.Operation {
	switch at := a.(type) {
	case map[string]any:
		bt, ok := b.(map[string]any)
		if !ok {
			return ops
		}
		keys := make([]string, 0, len(at))
		for k := range at {
			if _, ok := bt[k]; ok {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		for _, k := range keys {
			ops = refineLists(at[k], bt[k], path+"/"+escapeToken(k), ops)
		}
	case []any:
		bt, ok := b.([]any)
		if !ok {
			return ops
		}
		if len(at) == len(bt) {
			for i := range at {
				ops = refineLists(at[i], bt[i], path+"/"+strconv.Itoa(i), ops)
			}
			return ops
		}
		var edits []jsonpatch.Operation
		if len(at) < len(bt) {
			idx, ok := subsequence(at, bt)
			if !ok {
				return ops
			}
			for _, i := range idx { // ascending: each insert lands at its final index
				edits = append(edits, jsonpatch.NewOperation("add", path+"/"+strconv.Itoa(i), bt[i]))
			}
		} else {
			idx, ok := subsequence(bt, at)
			if !ok {
				return ops
			}
			for _, i := range slices.Backward(idx) { // descending: lower indexes stay put
				edits = append(edits, jsonpatch.NewOperation("remove", path+"/"+strconv.Itoa(i), nil))
			}
		}
		ops = slices.DeleteFunc(ops, func(o jsonpatch.Operation) bool { return strings.HasPrefix(o.Path, path+"/") })
		ops = append(ops, edits...)
	}
	return ops
}

// subsequence reports whether short is long with some elements left out,
// and returns the indexes in long of the elements left out. It matches
// greedily, first element first.
func subsequence(short, long []any) ([]int, bool) {
	var extra []int
	j := 0
	for i := range long {
		if j < len(short) && reflect.DeepEqual(short[j], long[i]) {
			j++
			continue
		}
		extra = append(extra, i)
	}
	return extra, j == len(short)
}

var tokenEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapeToken(s string) string { return tokenEscaper.Replace(s) }

// compareOps orders operations by path, comparing list indexes as numbers,
// with removals of elements of one list from the highest index down.
func compareOps(a, b jsonpatch.Operation) int {
	ta, tb := strings.Split(a.Path, "/"), strings.Split(b.Path, "/")
	for i := 0; i < len(ta) && i < len(tb); i++ {
		if ta[i] == tb[i] {
			continue
		}
		na, errA := strconv.Atoi(ta[i])
		nb, errB := strconv.Atoi(tb[i])
		if errA != nil || errB != nil {
			return strings.Compare(ta[i], tb[i])
		}
		if a.Operation == "remove" && b.Operation == "remove" && i == len(ta)-1 && i == len(tb)-1 {
			return nb - na
		}
		return na - nb
	}
	return len(ta) - len(tb)
}
