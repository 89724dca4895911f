package payload

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"
)

func TestStreams(t *testing.T) {
	cases := []struct {
		name   string
		seed   uint64
		n      int
		sameAs uint64 // another seed: the bytes must differ
	}{
		{"empty", 1, 0, 2},
		{"one byte", 1, 1, 2},
		{"odd size", 7, 100_003, 8},
		{"seed zero", 0, 4096, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := Bytes(tc.seed, tc.n)
			if len(a) != tc.n {
				t.Fatalf("len %d, want %d", len(a), tc.n)
			}
			if b := Bytes(tc.seed, tc.n); !bytes.Equal(a, b) {
				t.Fatal("same seed gave different bytes")
			}
			got, err := io.ReadAll(NewReader(tc.seed, int64(tc.n)))
			if err != nil || !bytes.Equal(got, a) {
				t.Fatalf("reader gave %d bytes (%v), not the same stream", len(got), err)
			}
			sum := sha256.Sum256(a)
			if s := SHA256(tc.seed, int64(tc.n)); s != hex.EncodeToString(sum[:]) {
				t.Errorf("SHA256 = %s, want %x", s, sum)
			}
			if tc.n > 16 && bytes.Equal(a, Bytes(tc.sameAs, tc.n)) {
				t.Errorf("seeds %d and %d gave the same bytes", tc.seed, tc.sameAs)
			}
			// A prefix of a longer stream is the shorter stream.
			if long := Bytes(tc.seed, tc.n+10); !bytes.Equal(long[:tc.n], a) {
				t.Error("stream is not prefix-stable")
			}
		})
	}
}
