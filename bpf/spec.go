package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Options select what the programs do, from the feature probes and the
// agent's settings. They are compiled into the programs as constants, so the
// verifier of an older kernel never sees a helper it lacks.
type Options struct {
	// SockopsNetnsCookie: sockops may call bpf_get_netns_cookie (Linux 5.15).
	SockopsNetnsCookie bool
	// Redirect turns on the sk_msg acceleration. It requires
	// SockopsNetnsCookie, so that pairs of different pods never collide.
	Redirect bool
	// GetPeerName attaches cgroup/getpeername4/6 (Linux 5.8, with
	// bpf_sk_storage_get in sock_addr programs); without it a steered app's
	// getpeername() shows the proxy's loopback address.
	GetPeerName bool
	// MaxPods overrides the size of the pods and inbound_listeners maps
	// (default 1024); tests use it to reach a full map.
	MaxPods uint32
}

// Spec returns the collection spec of steer.c with opts applied.
func Spec(opts Options) (*ebpf.CollectionSpec, error) {
	spec, err := LoadSteer()
	if err != nil {
		return nil, fmt.Errorf("load steer spec: %w", err)
	}
	if opts.Redirect && !opts.SockopsNetnsCookie {
		return nil, fmt.Errorf("sk_msg redirect needs bpf_get_netns_cookie in sockops")
	}
	for name, on := range map[string]bool{"sockops_netns_cookie": opts.SockopsNetnsCookie, "redirect_enabled": opts.Redirect} {
		v := uint8(0)
		if on {
			v = 1
		}
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	if !opts.GetPeerName {
		delete(spec.Programs, ProgGetPeerName4)
		delete(spec.Programs, ProgGetPeerName6)
	}
	if opts.MaxPods > 0 {
		spec.Maps[MapPods].MaxEntries = opts.MaxPods
		spec.Maps[MapInboundListeners].MaxEntries = 2 * opts.MaxPods
	}
	return spec, nil
}

// Names of the programs and maps in steer.c, as pinned by the agent.
const (
	ProgConnect4     = "sluice_connect4"
	ProgConnect6     = "sluice_connect6"
	ProgSockops      = "sluice_sockops"
	ProgSkMsg        = "sluice_sk_msg"
	ProgGetsockopt   = "sluice_getsockopt"
	ProgSkLookup     = "sluice_sk_lookup"
	ProgGetPeerName4 = "sluice_getpeername4"
	ProgGetPeerName6 = "sluice_getpeername6"

	MapPods             = "pods"
	MapPodIPs           = "pod_ips"
	MapInboundListeners = "inbound_listeners"
	MapOrigByCookie     = "orig_by_cookie"
	MapOrigByPair       = "orig_by_pair"
	MapSkOrig           = "sk_orig"
	MapSkMsgState       = "sk_msg_state"
	MapSkAppOrig        = "sk_app_orig"
	MapSockPairs        = "sock_pairs"
	MapCounters         = "counters"
	MapNetnsProbe       = "netns_probe"

	// NetnsProbeAddr is where a UDP connect records its netns cookie in
	// MapNetnsProbe, keyed by the socket's cookie.
	NetnsProbeAddr = "127.0.0.254:1"
)

// Counter names the per-CPU counters of steer.c, indexed by SteerCounter.
var Counter = [SteerCounterC_MAX]string{
	SteerCounterC_STEERED_OUT4:        "steered_outbound_ipv4",
	SteerCounterC_STEERED_OUT6:        "steered_outbound_ipv6",
	SteerCounterC_STEERED_IN:          "steered_inbound",
	SteerCounterC_SKIP_NOT_ENROLLED:   "skipped_not_enrolled",
	SteerCounterC_SKIP_NOT_TCP:        "skipped_not_tcp",
	SteerCounterC_SKIP_PROXY_UID:      "skipped_proxy_uid",
	SteerCounterC_SKIP_LOOPBACK:       "skipped_loopback",
	SteerCounterC_SKIP_PORT:           "skipped_outbound_port",
	SteerCounterC_SKIP_SUBNET:         "skipped_subnet",
	SteerCounterC_SKIP_IN_PORT:        "skipped_inbound_port",
	SteerCounterC_IN_NO_LISTENER:      "inbound_no_listener",
	SteerCounterC_ORIGDST_HANDOFF:     "origdst_handoff",
	SteerCounterC_ORIGDST_ANSWERED:    "origdst_answered",
	SteerCounterC_ORIGDST_MISSING:     "origdst_missing",
	SteerCounterC_SOCKHASH_ADD_OK:     "sockhash_add_ok",
	SteerCounterC_SOCKHASH_ADD_FAILED: "sockhash_add_failed",
	SteerCounterC_REDIRECT_OK:         "redirect_ok",
	SteerCounterC_REDIRECT_FAILED:     "redirect_failed",
	SteerCounterC_REDIRECT_BYPASSED:   "redirect_bypassed",
}
