// Package mesh is the mesh benchmark: the same workloads between a client
// pod and a server pod on the netns node, with no mesh, with Sluice proxies
// on both sides under iptables interception, under eBPF interception
// without and with the sk_msg redirect, under eBPF with sk_msg and mutual
// TLS between the proxies (certificates from the real identity service,
// test/proxytest/identitytest), and with nginx as the sidecar on both sides
// under iptables interception. The cost of mTLS is the mTLS case against
// the plaintext sk_msg case, plus a loop of complete handshakes with the
// proxy's own TLS code. `make bench` runs it
// (BenchmarkMesh) and writes docs/benchmarks.md with charts in
// docs/benchmarks/; TestMeshSmoke runs every case and workload briefly in
// `make test`, so a broken case fails there.
//
// This file's package holds what does not need the kernel: the cases and
// workloads, the validation of a load run, the figures, the report and its
// charts.
package mesh
