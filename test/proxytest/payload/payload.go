// Package payload makes the deterministic byte streams of the proxy's
// end-to-end tests: the same seed always gives the same bytes, so a test can
// name a 100 MiB body by (size, seed) and check it by its SHA-256 without
// holding it anywhere.
package payload

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand/v2"
)

// NewReader returns a reader of exactly n bytes of the stream for seed.
func NewReader(seed uint64, n int64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	copy(key[8:], "sluice-testapp-payload")
	return io.LimitReader(rand.NewChaCha8(key), n)
}

// SHA256 returns the hex SHA-256 of the first n bytes of the stream for seed.
func SHA256(seed uint64, n int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, NewReader(seed, n)); err != nil {
		panic(err) // the stream never fails
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Bytes returns the first n bytes of the stream for seed.
func Bytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(NewReader(seed, int64(n)), b); err != nil {
		panic(err) // the stream never fails
	}
	return b
}
