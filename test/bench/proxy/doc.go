// Package proxy benchmarks sluice-proxy against nginx as the one proxy
// between a client and its server: latency added per proxied hop at a fixed
// request rate (HTTP/1.1 and gRPC), maximum request rate per proxy core, CPU
// per request and proxy memory. Run it with `make bench-proxy`; see
// docs/proxy-benchmark.md. Without -bench only the unit tests of its helpers
// run.
package proxy
