#!/usr/bin/env bash
# Runs every fuzz target of the module for a bounded time each
# (FUZZTIME, default 10s), one after another. Fails on the first crash;
# the failing input is left in the package's testdata/fuzz for `go test` to
# replay.
set -euo pipefail
fuzztime=${FUZZTIME:-10s}
found=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  names=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' || true)
  for name in $names; do
    found=$((found + 1))
    echo "fuzz $pkg $name for $fuzztime"
    go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg"
  done
done
echo "ran $found fuzz targets"
[ "$found" -gt 0 ]
