// Package api holds the demo application's gRPC API: the books service's
// .proto file (in books/) and the Go code generated from it. The generated
// code is committed; `go generate ./test/demo/api/...` (run by
// `make generate`) reproduces it with Debian's protoc and the protoc-gen-go
// and protoc-gen-go-grpc versions pinned in go.mod.
package api

//go:generate bash gen.sh
