package proxytest

import (
	"bytes"
	"encoding/json"
	"testing"
)

// Lines decodes out, JSON values one per line as testapp prints them, into
// a slice of T. It fails t on anything that is not JSON.
func Lines[T any](t testing.TB, out []byte) []T {
	t.Helper()
	var res []T
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var v T
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("proxytest: decode JSON lines: %v in %q", err, out)
		}
		res = append(res, v)
	}
	return res
}

// Line decodes out, which must hold exactly one JSON value, into a T.
func Line[T any](t testing.TB, out []byte) T {
	t.Helper()
	res := Lines[T](t, out)
	if len(res) != 1 {
		t.Fatalf("proxytest: want one JSON line, got %d in %q", len(res), out)
	}
	return res[0]
}
