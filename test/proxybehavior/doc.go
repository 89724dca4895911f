// Package proxybehavior holds end-to-end tests of sluice-proxy's behaviour
// as a user of the mesh sees it, in netns pods steered by the real node
// agent (test/proxytest): load balancing away from a slow endpoint, failure
// accrual and recovery, discovery changes and a discovery outage while
// traffic flows, tap, malformed and hostile clients, and graceful shutdown.
// The package has only tests and reqloop, the client application they run
// in pods.
package proxybehavior
