package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sluice-mesh/sluice/test/cluster/pki"
)

// The sysctls the cluster sets. Up sets clusterSysctls and leaves them set
// (they are what the CNI bridge plugin and any Kubernetes node want, and
// other users of bridges on this machine may rely on them). The kubelet
// sets kubeletSysctls when it starts (with protectKernelDefaults it would
// refuse to run with other values instead): Up records the machine's values
// before the kubelet first runs and Down puts them back, so that a test run
// does not leave, say, kernel.panic_on_oops=1 on a shared machine.
var (
	clusterSysctls = map[string]string{
		// Traffic between pods on the same bridge goes through iptables, so
		// that kube-proxy's DNAT to a pod on the same bridge is undone on the
		// way back (br_netfilter is built into this kernel).
		"net.bridge.bridge-nf-call-iptables":  "1",
		"net.bridge.bridge-nf-call-ip6tables": "1",
	}
	kubeletSysctls = []string{
		"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
		"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
	}
)

func (l layout) savedSysctls() string { return l.path("sysctls.json") }

// setKernelSettings records the machine's values of kubeletSysctls (once)
// and sets clusterSysctls.
func (c *Cluster) setKernelSettings() error {
	if _, err := os.Stat(c.l.savedSysctls()); errors.Is(err, os.ErrNotExist) {
		saved := map[string]string{}
		for _, name := range kubeletSysctls {
			if v, err := sysctl(name); err == nil {
				saved[name] = v
			}
		}
		data, _ := json.MarshalIndent(saved, "", "  ")
		if err := pki.WriteFile(c.l.savedSysctls(), data, 0o644); err != nil {
			return err
		}
	}
	for name, v := range clusterSysctls {
		if err := setSysctl(name, v); err != nil {
			return err
		}
	}
	return nil
}

// restoreKernelSettings puts back what setKernelSettings recorded.
func restoreKernelSettings(l layout) error {
	data, err := os.ReadFile(l.savedSysctls())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read saved sysctls: %w", err)
	}
	var saved map[string]string
	if err := json.Unmarshal(data, &saved); err != nil {
		return fmt.Errorf("parse %s: %w", filepath.Base(l.savedSysctls()), err)
	}
	var errs []error
	for name, v := range saved {
		if cur, err := sysctl(name); err == nil && cur == v {
			continue
		}
		errs = append(errs, setSysctl(name, v))
	}
	return errors.Join(errs...)
}
