// Package destination measures how long an endpoint change takes to reach
// a proxy through the destination service: from the write to the
// Kubernetes API server (an EndpointSlice's endpoint turned not ready, or
// ready again) through the API server's watch, the destination service's
// informers, watcher and translator, and its gRPC stream, to the proxy's
// own discovery client (proxy/discovery) publishing the new snapshot. The
// destination service is the real sluice-controller binary against the
// real API server of test/cluster; the endpoints' pods exist as API objects
// held back from scheduling, so that thousands of endpoints cost no
// processes. Run (a size) is used by the benchmark and by a smoke test of
// the end-to-end suite.
package destination
