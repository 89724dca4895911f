// Package demoapp holds the demo application that `make demo` and the
// end-to-end tests run in the mesh: its roles (web, books, authors, ticker
// and the load generator loadgen), each a Run function that serves on a
// listener the caller opened until its context ends, and the sluice-demo
// command tree (NewRootCmd) that test/demo/cmd/sluice-demo executes.
//
// The traffic graph: loadgen sends HTTP/1.1 to web and holds WebSocket
// connections to it; web calls books over gRPC, authors over HTTP/1.1 and
// relays its WebSocket connections to ticker. Every socket is plain TCP
// (never MPTCP), so that the mesh's steering programs can see it, and every
// listener on ":port" accepts IPv4 and IPv6.
package demoapp
