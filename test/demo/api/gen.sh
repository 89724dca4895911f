#!/usr/bin/env bash
# Regenerates the Go code of the demo application's protos with Debian's protoc
# and the plugin versions pinned in go.mod's tool block. Run from this folder
# (go generate does).
set -euo pipefail
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc
PATH="$bin:$PATH" protoc -I . -I /usr/include \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  $(find . -name "*.proto" -printf "%P\n" | LC_ALL=C sort)
