// Package e2e is the local cluster's end-to-end suite: Go tests that bring
// the cluster up (package cluster), run the echo program (cmd/echo) in it
// through the real Kubernetes API, and check what a user would check with
// kubectl: Deployments and Services becoming Ready, traffic by DNS name
// through kube-proxy, EndpointSlices following scaling, rolling updates,
// deleted pods and probes, native sidecars and postStart hooks, host-network
// DaemonSets, `kubectl logs`, projected service-account tokens passing a
// TokenReview, and a pod the runtime cannot run failing with an event that
// says why. Its last test brings the cluster down and checks that nothing
// is left behind.
//
// Run it as root from test/cluster:
//
//	go test -count=1 -timeout 40m ./e2e/
//
// A cluster already up is reused. The suite holds the machine's cluster
// lock (cluster.LockMachine) from its first test to its end, so other
// packages' cluster tests (one cluster per machine) wait their turn. Each test works in a namespace of its
// own and deletes it; on failure it first logs the namespace's events, its
// pods' statuses and the tails of the runtime's and the kubelet's logs.
// With SLUICE_E2E_KEEP_CLUSTER=1 the last test leaves the cluster up (to
// look at it with `go run ./cmd/cluster kubectl -- ...`).
package e2e
