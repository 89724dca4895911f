package mesh

import (
	"fmt"
	"strings"
)

// method says how the figures were measured.
func (r *Report) method() string {
	e, c := r.Env, r.Config
	var rates []string
	for _, x := range c.HTTPRates {
		rates = append(rates, fmt.Sprint(x))
	}
	var conns []string
	for _, x := range c.MaxConns {
		conns = append(conns, fmt.Sprint(x))
	}
	return fmt.Sprintf(`
## How it is measured

**Topology.** Two netns nodes (test/netns), each a bridge with pods on veth pairs, as issue 2's harness builds
them. The first runs the node agent in iptables mode, the second in eBPF mode. Every case has its own client pod and server
pod on one node; every request crosses the client pod's veth, the bridge and the server pod's veth. The server
pod runs `+"`loadgen serve`"+` as the application (HTTP/1.1 + h2c on :8080, gRPC health service on :9090, a TCP sink on
:5001; 64-byte answers) and the client pod runs `+"`loadgen`"+` as the client (test/cmd/loadgen).

- **%s**: neither pod has a proxy or any interception (pods of the iptables node that are not enrolled).
- **%s**: sluice-proxy in both pods as uid 2102, the pods enrolled with the iptables-mode agent (linkerd-init-style nat
  rules: outbound REDIRECT to 4140, inbound to 4143).
- **%s**: sluice-proxy in both pods, enrolled with the eBPF-mode agent with `+"`disableRedirect: true`"+`: cgroup
  connect4 rewrite outbound, sk_lookup inbound, no sk_msg.
- **%s**: the same with the sk_msg redirect between the app's and its proxy's loopback sockets (the agent's default).
- **%s**: the same with mutual TLS 1.3 between the two proxies: each proxy gets its certificate from Sluice's identity
  service (run in process, test/proxytest/identitytest, with a projected-token stand-in) at start, and discovery gives the
  server pod's endpoint the identity `+"`web-mtls.default.serviceaccount.identity.sluice.cluster.local`"+`.
- **%s**: nginx (Debian's nginx-light with libnginx-mod-stream, one worker, no access log) in both pods as uid 2102,
  with iptables nat rules of the same shape as the agent's, per port: outbound 8080/9090/5001 to nginx's
  HTTP, gRPC (h2c) and stream listeners, which forward to the server pod's address (static upstreams with keep-alive,
  no request limit per connection); inbound 8080/9090/5001 to nginx's inbound listeners, which forward to the app on
  127.0.0.1. nginx 1.22 cannot take HTTP/1.1 and h2c on one port, hence a port per protocol.

The Sluice proxies find each other through discovery, as in a cluster: the client asks for
`+"`web-<case>.default.svc.cluster.local:8080`"+` (Host header, gRPC :authority) at the server pod's address; the client proxy
resolves that name with an in-process destination server (test/destinationtest, the Destination.Get API the
controller serves) to the server pod's endpoint with an h2 protocol hint, so proxy-to-proxy traffic is HTTP/2
with HTTP/1.1 carried over it, as between meshed pods. The bulk port 5001 is in both proxies'
`+"`SLUICE_PROXY_OPAQUE_PORTS`"+`. The proxies run with their defaults and `+"`SLUICE_PROXY_LOG_LEVEL=warn`"+`.

**Placement.** Each pod's processes are pinned with taskset to one CPU, as if each pod were on its own node:
the client pod (load generator and client proxy) to CPU %s, the server pod (server proxy and application) to CPU %s.
The app↔proxy hop inside a pod therefore stays on one CPU, where the interception's own cost shows; the pod-to-pod
hop crosses CPUs like a network hop. The agents run unpinned.

**Load.** Fixed-rate runs schedule request i at start + i/rate over %d connections (gRPC: %d concurrent calls
on one HTTP/2 connection) and measure each latency from its scheduled send time (wrk2's correction of coordinated
omission) into a log-linear histogram with under 1 %% error: HTTP/1.1 keep-alive at %s req/s, gRPC unary at %d
req/s, and HTTP/1.1 with a new TCP connection per request (`+"`Connection: close`"+`, the connect included in the
latency) at %d req/s. Maximum-throughput runs are closed loops over %s keep-alive connections. The bulk run sends
%d MiB over one TCP connection to the sink, which answers with the byte count; MB/s is payload over the time to
that answer. Fixed-rate runs measure %v after %v of unmeasured load at the same rate, closed loops %v after %v.

**CPU and memory.** The proxies' CPU time is utime+stime from /proc/<pid>/stat (nginx: master + worker; the kernel
scales these to the task's exact run time). "Both pods" is the CPU time of everything in the case's two pods (load
generator, application, proxies, and the kernel's network work done in their context) from the pods' cgroup v2
`+"`cpu.stat`"+` usage_usec. The whole machine's /proc/stat was tried first and dropped: it is sampled at each timer
tick, and a fixed-rate load that wakes in step with the tick is mostly missed by it (a no-mesh run at 1000 req/s
showed 4 µs of machine CPU per request, less than either proxy alone used per request in the meshed runs). Every
CPU figure is read before and after a run and scaled to its measured part. "CPU s / 1000 req" divides it by the
measured requests. VmRSS comes from /proc/<pid>/status, sampled every 100 ms.

**Rounds and validity.** Each round runs every workload against every case, rotating the order of the cases;
"added" figures pair each case with the no-mesh run of the same round. A run that served no request, or whose
failed requests exceed %.1f %%, fails the benchmark instead of becoming a row (the "failed" columns count the
failures under that threshold).
`, CaseDirect, CaseIPTables, CaseEBPF, CaseSKMsg, CaseMTLS, CaseNginx, e.ClientCPU, e.ServerCPU,
		c.Conns, c.Conns, strings.Join(rates, ", "), c.GRPCRate, c.NewConnRate, strings.Join(conns, ", "),
		c.BulkBytes>>20, c.Duration, c.Warmup, c.MaxDuration, c.Warmup, 100*MaxErrorRatio)
}
