// Package api holds the control plane's gRPC APIs: each service's .proto
// file and the Go code generated from it, in one folder per service
// (destination, identity, tap, and the shared address types in net). The generated
// code is committed; `make generate` reproduces it with Debian's protoc and
// the protoc-gen-go and protoc-gen-go-grpc versions pinned in go.mod.
package api

//go:generate bash gen.sh
