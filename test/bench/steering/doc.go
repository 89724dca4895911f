// Package steering benchmarks Sluice's traffic steering on the real kernel:
// connect() time, request/response latency and bulk throughput from an
// application process to its pod's sidecar, with no steering, with iptables
// REDIRECT, with eBPF steering and with eBPF steering plus the sk_msg
// redirect. Run it with `make bench-steering`; see docs/steering-benchmark.md.
package steering
