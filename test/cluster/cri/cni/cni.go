// Package cni sets up and tears down pod networks with the CNI plugins
// through libcni, and renders the cluster's bridge conflist.
package cni

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
)

var errNotImplemented = errors.New("not implemented")

// Network runs the CNI plugins of the first conflist in a directory.
type Network struct {
	log *slog.Logger
}

// New loads the network configuration from confDir.
func New(confDir string, binDirs []string, cacheDir string, log *slog.Logger) (*Network, error) {
	return &Network{log: log}, errNotImplemented
}

// Ready is nil when a conflist is loaded, else an error saying why not.
func (n *Network) Ready() error { return errNotImplemented }

// PodMeta identifies a pod sandbox to the plugins.
type PodMeta struct{ Namespace, Name, UID, SandboxID string }

// PortMapping is a host port forwarded to the pod.
type PortMapping struct {
	HostPort, ContainerPort int32
	Protocol                string
	HostIP                  string
}

// Result is the outcome of Setup.
type Result struct{ IPs []netip.Addr }

// Setup adds the pod's network namespace to the network.
func (n *Network) Setup(ctx context.Context, netnsPath string, m PodMeta, ports []PortMapping) (Result, error) {
	return Result{}, errNotImplemented
}

// Teardown removes the pod from the network.
func (n *Network) Teardown(ctx context.Context, netnsPath string, m PodMeta, ports []PortMapping) error {
	return errNotImplemented
}

// BridgeOptions configures BridgeConfList.
type BridgeOptions struct {
	Name, Bridge string
	Subnets      []netip.Prefix
	DataDir      string
	MTU          int
}

// BridgeConfList renders the cluster's conflist.
func BridgeConfList(o BridgeOptions) ([]byte, error) { return nil, errNotImplemented }
