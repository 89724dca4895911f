// Package netns is the "netns node" harness that kernel tests share: a Node is a
// bridge in the host network namespace with its own IPv4 /24 and IPv6 /64 and a
// cgroup v2 directory; a Pod on it is a network namespace with a veth on that
// bridge, its own addresses, a cgroup below the node's and optionally a private
// mount namespace. Processes run inside a pod as a given uid.
//
// Everything is torn down by t.Cleanup, and again by the next NewNode (in any test
// process) if the owning process died before it could clean up. Nodes of test
// processes running in parallel never share addresses: allocation happens under a
// lock in /run/sluice-test, where each live node is recorded with its owner pid.
//
// Tests using this package must run as root on Linux; call RequireRoot first.
package netns
