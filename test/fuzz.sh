#!/usr/bin/env bash
# Runs every fuzz target of the module for a bounded budget each
# (FUZZTIME, default 100000x), one after another. Fails on the first crash;
# the failing input is left in the package's testdata/fuzz for `go test` to
# replay.
#
# The default budget is a count of executions, not a duration: with a
# duration, Go 1.26's fuzz coordinator can report "context deadline exceeded"
# at the deadline with no failing input (golang/go#75804, fixed in Go 1.27),
# which failed CI once. A count never arms that deadline. 100000 executions
# take 2-20 s per target here; FUZZTIME=5m still works for long runs.
set -euo pipefail
fuzztime=${FUZZTIME:-100000x}
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
