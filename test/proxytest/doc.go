// Package proxytest is the mesh fixture of the proxy's end-to-end tests: a
// netns node (test/netns) with the real node agent (test/agenttest), a
// Destination server on the node's bridge gateway (test/destinationtest),
// and meshed pods, each with a real sluice-proxy running as uid 2102 and
// steered by the agent in eBPF or iptables mode. With Options.Identity the
// mesh also runs the real identity service in process (identitytest) and
// every proxy gets an identity of its pod's service account, so the
// proxies talk mutual TLS; AddPlainPod adds an unmeshed pod. Applications
// in the pods are test/cmd/testapp processes run as uid 1000. Metrics
// parses and queries a proxy's Prometheus exposition.
//
// Start, Mesh.AddPod and MeshedPod.App need root on Linux; call
// netns.RequireRoot first. Everything they start is stopped by t.Cleanup,
// also when the test fails, and the proxies' logs are written to the test
// log on failure.
package proxytest
