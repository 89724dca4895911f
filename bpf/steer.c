// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

// Sluice traffic steering. Every program here is attached by the node agent
// (agent/loader) and shares the maps below. See DESIGN.md, "Interception".
//
//   connect4/connect6   outbound: rewrite a TCP connect of an enrolled pod to
//                       its proxy on loopback, remembering the original
//                       destination by socket cookie.
//   sockops             hand the original destination to the proxy's accepted
//                       socket; put same-host loopback socket pairs of
//                       enrolled pods into the SOCKHASH.
//   sk_msg              redirect payload between those pairs; always passes.
//   getsockopt          answer SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST.
//   sk_lookup           inbound: hand TCP connections to the pod IP to the
//                       proxy's inbound listener.

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOL_IP 0
#define SOL_IPV6 41
#define SO_ORIGINAL_DST 80 /* IP6T_SO_ORIGINAL_DST has the same value */
#define PAGE_SIZE 4096

#define MAX_PORT_RANGES 16
#define MAX_SUBNETS 8

/* Map sizes, documented in bpf/README.md. */
#define MAX_PODS 1024
#define MAX_POD_IPS 4096
#define MAX_CONNS 65536

/* pod_config.flags */
#define POD_F_NO_REDIRECT 1 /* do not accelerate this pod's loopback pairs */

/* orig_dst.flags */
#define ORIG_F_NO_REDIRECT 1

/* Counter indexes; the Go side names them in bpf/counters.go. */
enum counter {
	C_STEERED_OUT4 = 0,
	C_STEERED_OUT6,
	C_STEERED_IN,
	C_SKIP_NOT_ENROLLED,
	C_SKIP_NOT_TCP,
	C_SKIP_PROXY_UID,
	C_SKIP_LOOPBACK,
	C_SKIP_PORT,
	C_SKIP_SUBNET,
	C_SKIP_IN_PORT,
	C_IN_NO_LISTENER,
	C_ORIGDST_HANDOFF,
	C_ORIGDST_ANSWERED,
	C_ORIGDST_MISSING,
	C_SOCKHASH_ADD_OK,
	C_SOCKHASH_ADD_FAILED,
	C_REDIRECT_OK,
	C_REDIRECT_FAILED,
	C_REDIRECT_BYPASSED,
	C_MAX,
};

struct port_range {
	__u16 lo;
	__u16 hi;
};

struct subnet {
	__u32 addr[4]; /* network byte order; IPv4 in addr[0] */
	__u8 family;
	__u8 prefix_len;
	__u8 pad[2];
};

/* Per-pod configuration, keyed by the pod's network-namespace cookie. */
struct pod_config {
	__u32 proxy_uid;
	__u16 outbound_port;
	__u16 inbound_port;
	__u32 slot; /* index of the proxy's inbound listener in inbound_listeners */
	__u32 flags;
	__u8 n_skip_in;
	__u8 n_skip_out;
	__u8 n_skip_subnets;
	__u8 pad;
	struct port_range skip_in[MAX_PORT_RANGES];
	struct port_range skip_out[MAX_PORT_RANGES];
	struct subnet skip_subnets[MAX_SUBNETS];
};

/* An address of an enrolled pod, for sk_lookup. */
struct ip_key {
	__u32 family;
	__u32 addr[4];
};

struct pod_ip {
	__u64 netns_cookie;
	__u32 slot;
	__u16 inbound_port;
	__u16 pad;
};

/* The original destination of a steered connection. */
struct orig_dst {
	__u64 netns_cookie;
	__u32 addr[4]; /* network byte order; IPv4 in addr[0] */
	__u16 port;    /* network byte order */
	__u8 family;
	__u8 flags;
	__u32 pad;
};

/* A TCP socket seen from its own side: local s*, remote d*. Ports in host
 * order. netns is 0 when the kernel lacks bpf_get_netns_cookie in sockops. */
struct sock_key {
	__u64 netns;
	__u32 sip[4];
	__u32 dip[4];
	__u32 sport;
	__u32 dport;
	__u32 family;
	__u32 pad;
};

/* Per-socket state of the sk_msg path. */
struct msg_state {
	__u32 bypass; /* a redirect failed once: the normal path from now on */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, __u64);
	__type(value, struct pod_config);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POD_IPS);
	__type(key, struct ip_key);
	__type(value, struct pod_ip);
} pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2 * MAX_PODS); /* slot*2: IPv4 listener, slot*2+1: IPv6 */
	__type(key, __u32);
	__type(value, __u64);
} inbound_listeners SEC(".maps");

/* Original destinations by socket cookie, from connect until the socket is
 * established. LRU: connects that never complete are evicted, never leak. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, struct orig_dst);
} orig_by_cookie SEC(".maps");

/* Original destinations keyed by the proxy-side view of the connection,
 * between the app side's and the proxy side's ESTABLISHED callbacks. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, struct orig_dst);
} orig_by_pair SEC(".maps");

/* The original destination, stored on the proxy's accepted socket; freed
 * with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct orig_dst);
} sk_orig SEC(".maps");

/* The original destination, stored on the app's steered socket, so
 * getpeername() shows the app the peer it connected to. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct orig_dst);
} sk_app_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct msg_state);
} sk_msg_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct sock_key);
	__type(value, __u64);
} sock_pairs SEC(".maps");

/* Netns cookies by socket cookie, for the agent on kernels without
 * SO_NETNS_COOKIE (before 5.14): see netns_probe() below. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u64);
} netns_probe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Set by the loader from feature probes before loading. With
 * sockops_netns_cookie the socket-pair keys carry the netns cookie; the
 * sk_msg redirect is only enabled when they do, so pairs of different pods
 * can never be confused. */
volatile const __u8 sockops_netns_cookie = 0;
volatile const __u8 redirect_enabled = 0;

/* Force BTF for the types the Go side generates. */
const struct pod_config *unused_pod_config __attribute__((unused));
const struct orig_dst *unused_orig_dst __attribute__((unused));
const struct sock_key *unused_sock_key __attribute__((unused));
const struct ip_key *unused_ip_key __attribute__((unused));
const struct pod_ip *unused_pod_ip __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline int port_in(const struct port_range *r, __u8 n, __u16 port)
{
	for (int i = 0; i < MAX_PORT_RANGES; i++) {
		if (i >= n)
			break;
		if (port >= r[i].lo && port <= r[i].hi)
			return 1;
	}
	return 0;
}

static __always_inline __u32 prefix_mask(int bits)
{
	if (bits <= 0)
		return 0;
	if (bits >= 32)
		return 0xffffffff;
	return bpf_htonl(~0U << (32 - bits));
}

static __always_inline int subnet_match(const struct subnet *s, __u8 family, const __u32 *addr)
{
	if (s->family != family)
		return 0;
	int words = family == AF_INET ? 1 : 4;
	for (int w = 0; w < 4; w++) {
		if (w >= words)
			break;
		__u32 m = prefix_mask((int)s->prefix_len - 32 * w);
		if ((addr[w] & m) != (s->addr[w] & m))
			return 0;
	}
	return 1;
}

static __always_inline int subnet_in(const struct pod_config *cfg, __u8 family, const __u32 *addr)
{
	for (int i = 0; i < MAX_SUBNETS; i++) {
		if (i >= cfg->n_skip_subnets)
			break;
		if (subnet_match(&cfg->skip_subnets[i], family, addr))
			return 1;
	}
	return 0;
}

static __always_inline int is_v4_loopback(__u32 a)
{
	return (bpf_ntohl(a) >> 24) == 127;
}

static __always_inline int is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_v6_loopback(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

/* steer decides whether a connect of an enrolled pod goes to its proxy, and
 * records the original destination. family/addr/port describe the real
 * destination (IPv4-mapped addresses already unmapped). */
static __always_inline int steer(struct bpf_sock_addr *ctx, __u8 family, const __u32 *addr,
				 __u16 port_be, struct pod_config **out_cfg)
{
	if (ctx->type != SOCK_STREAM)
		return 0;
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct pod_config *cfg = bpf_map_lookup_elem(&pods, &netns);
	if (!cfg) {
		count(C_SKIP_NOT_ENROLLED);
		return 0;
	}
	if (ctx->protocol != IPPROTO_TCP) {
		count(C_SKIP_NOT_TCP);
		return 0;
	}
	if ((__u32)bpf_get_current_uid_gid() == cfg->proxy_uid) {
		count(C_SKIP_PROXY_UID);
		return 0;
	}
	if ((family == AF_INET && is_v4_loopback(addr[0])) ||
	    (family == AF_INET6 && is_v6_loopback(addr))) {
		count(C_SKIP_LOOPBACK);
		return 0;
	}
	if (port_in(cfg->skip_out, cfg->n_skip_out, bpf_ntohs(port_be))) {
		count(C_SKIP_PORT);
		return 0;
	}
	if (subnet_in(cfg, family, addr)) {
		count(C_SKIP_SUBNET);
		return 0;
	}

	struct orig_dst o = {};
	o.netns_cookie = netns;
	o.family = family;
	o.port = port_be;
	o.addr[0] = addr[0];
	if (family == AF_INET6) {
		o.addr[1] = addr[1];
		o.addr[2] = addr[2];
		o.addr[3] = addr[3];
	}
	if (cfg->flags & POD_F_NO_REDIRECT)
		o.flags |= ORIG_F_NO_REDIRECT;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&orig_by_cookie, &cookie, &o, BPF_ANY))
		return 0;
	*out_cfg = cfg;
	return 1;
}

/* The agent connects a UDP socket to 127.0.0.254:1 from a thread inside a
 * pod's network namespace and reads that namespace's cookie back by the
 * socket's cookie. Connecting a UDP socket sends nothing. */
#define NETNS_PROBE_ADDR 0x7f0000fe
#define NETNS_PROBE_PORT 1

static __always_inline void netns_probe_record(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM || ctx->user_ip4 != bpf_htonl(NETNS_PROBE_ADDR) ||
	    ctx->user_port != bpf_htons(NETNS_PROBE_PORT))
		return;
	__u64 sock = bpf_get_socket_cookie(ctx);
	__u64 netns = bpf_get_netns_cookie(ctx);
	bpf_map_update_elem(&netns_probe, &sock, &netns, BPF_ANY);
}

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM) {
		netns_probe_record(ctx);
		return 1;
	}
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	struct pod_config *cfg = 0;
	if (!steer(ctx, AF_INET, addr, (__u16)ctx->user_port, &cfg) || !cfg)
		return 1;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(cfg->outbound_port);
	count(C_STEERED_OUT4);
	return 1;
}

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	struct pod_config *cfg = 0;
	if (is_v4_mapped(addr)) {
		__u32 v4[4] = {addr[3], 0, 0, 0};
		if (!steer(ctx, AF_INET, v4, (__u16)ctx->user_port, &cfg) || !cfg)
			return 1;
		/* ::ffff:127.0.0.1 reaches the proxy's IPv4 listener. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
		ctx->user_port = bpf_htons(cfg->outbound_port);
		count(C_STEERED_OUT4);
		return 1;
	}
	if (!steer(ctx, AF_INET6, addr, (__u16)ctx->user_port, &cfg) || !cfg)
		return 1;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = 0;
	ctx->user_ip6[3] = bpf_htonl(1);
	ctx->user_port = bpf_htons(cfg->outbound_port);
	count(C_STEERED_OUT6);
	return 1;
}

/* skops_key fills k with the socket's own view of its connection; IPv4-mapped
 * IPv6 sockets are keyed as IPv4 so both ends agree. */
static __always_inline void skops_key(struct bpf_sock_ops *s, struct sock_key *k, __u64 netns)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = netns;
	k->sport = s->local_port;
	k->dport = bpf_ntohl(s->remote_port);
	if (s->family == AF_INET) {
		k->family = AF_INET;
		k->sip[0] = s->local_ip4;
		k->dip[0] = s->remote_ip4;
		return;
	}
	__u32 l[4] = {s->local_ip6[0], s->local_ip6[1], s->local_ip6[2], s->local_ip6[3]};
	__u32 r[4] = {s->remote_ip6[0], s->remote_ip6[1], s->remote_ip6[2], s->remote_ip6[3]};
	if (is_v4_mapped(l) && is_v4_mapped(r)) {
		k->family = AF_INET;
		k->sip[0] = l[3];
		k->dip[0] = r[3];
		return;
	}
	k->family = AF_INET6;
	__builtin_memcpy(k->sip, l, sizeof(l));
	__builtin_memcpy(k->dip, r, sizeof(r));
}

static __always_inline void swap_key(const struct sock_key *in, struct sock_key *out)
{
	__builtin_memset(out, 0, sizeof(*out));
	out->netns = in->netns;
	out->family = in->family;
	out->sport = in->dport;
	out->dport = in->sport;
	__builtin_memcpy(out->sip, in->dip, sizeof(out->sip));
	__builtin_memcpy(out->dip, in->sip, sizeof(out->dip));
}

static __always_inline int key_is_loopback(const struct sock_key *k)
{
	if (k->family == AF_INET)
		return is_v4_loopback(k->sip[0]) && is_v4_loopback(k->dip[0]);
	return is_v6_loopback(k->sip) && is_v6_loopback(k->dip);
}

/* maybe_pair puts a loopback socket of an enrolled pod into sock_pairs, so
 * sk_msg can redirect between it and its peer. */
static __always_inline void maybe_pair(struct bpf_sock_ops *skops, struct sock_key *k, __u8 no_redirect)
{
	if (!redirect_enabled || !sockops_netns_cookie || no_redirect)
		return;
	if (!key_is_loopback(k))
		return;
	struct pod_config *cfg = bpf_map_lookup_elem(&pods, &k->netns);
	if (!cfg || (cfg->flags & POD_F_NO_REDIRECT))
		return;
	if (bpf_sock_hash_update(skops, &sock_pairs, k, BPF_ANY) == 0)
		count(C_SOCKHASH_ADD_OK);
	else
		count(C_SOCKHASH_ADD_FAILED);
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;

	__u64 netns = 0;
	if (sockops_netns_cookie)
		netns = bpf_get_netns_cookie(skops);
	struct sock_key k;
	skops_key(skops, &k, netns);
	__u8 no_redirect = 0;

	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		/* The app's socket: move its original destination to where the
		 * proxy's accepted socket will look for it. */
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct orig_dst *o = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
		if (o) {
			struct orig_dst copy = *o;
			struct sock_key peer;
			swap_key(&k, &peer);
			no_redirect = copy.flags & ORIG_F_NO_REDIRECT;
			bpf_map_update_elem(&orig_by_pair, &peer, &copy, BPF_ANY);
			bpf_map_delete_elem(&orig_by_cookie, &cookie);
			if (skops->sk) {
				struct orig_dst *st = bpf_sk_storage_get(&sk_app_orig, skops->sk, 0,
									 BPF_SK_STORAGE_GET_F_CREATE);
				if (st)
					*st = copy;
			}
		}
	} else {
		/* The proxy's accepted socket. */
		struct orig_dst *o = bpf_map_lookup_elem(&orig_by_pair, &k);
		if (o) {
			struct orig_dst copy = *o;
			no_redirect = copy.flags & ORIG_F_NO_REDIRECT;
			bpf_map_delete_elem(&orig_by_pair, &k);
			if (skops->sk) {
				struct orig_dst *st = bpf_sk_storage_get(&sk_orig, skops->sk, 0,
									 BPF_SK_STORAGE_GET_F_CREATE);
				if (st) {
					*st = copy;
					count(C_ORIGDST_HANDOFF);
				}
			}
		}
	}
	maybe_pair(skops, &k, no_redirect);
	return 1;
}

/* getpeername on a steered app socket answers the original destination,
 * as it does under iptables, instead of the proxy's loopback address. */
SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = bpf_sk_storage_get(&sk_app_orig, sk, 0, 0);
	if (!o || o->family != AF_INET)
		return 1;
	ctx->user_ip4 = o->addr[0];
	ctx->user_port = o->port;
	return 1;
}

SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = bpf_sk_storage_get(&sk_app_orig, sk, 0, 0);
	if (!o)
		return 1;
	if (o->family == AF_INET) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = o->addr[0];
	} else {
		ctx->user_ip6[0] = o->addr[0];
		ctx->user_ip6[1] = o->addr[1];
		ctx->user_ip6[2] = o->addr[2];
		ctx->user_ip6[3] = o->addr[3];
	}
	ctx->user_port = o->port;
	return 1;
}

SEC("sk_msg")
int sluice_sk_msg(struct sk_msg_md *msg)
{
	if (!redirect_enabled || !msg->sk)
		return SK_PASS;
	/* State exists only for sockets whose redirect once failed. */
	struct msg_state *st = bpf_sk_storage_get(&sk_msg_state, msg->sk, 0, 0);
	if (st && st->bypass) {
		count(C_REDIRECT_BYPASSED);
		return SK_PASS;
	}

	struct sock_key peer = {};
	peer.netns = bpf_get_netns_cookie(msg);
	peer.sport = bpf_ntohl(msg->remote_port);
	peer.dport = msg->local_port;
	if (msg->family == AF_INET) {
		peer.family = AF_INET;
		peer.sip[0] = msg->remote_ip4;
		peer.dip[0] = msg->local_ip4;
	} else {
		__u32 l[4] = {msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2], msg->local_ip6[3]};
		__u32 r[4] = {msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2], msg->remote_ip6[3]};
		if (is_v4_mapped(l) && is_v4_mapped(r)) {
			peer.family = AF_INET;
			peer.sip[0] = r[3];
			peer.dip[0] = l[3];
		} else {
			peer.family = AF_INET6;
			__builtin_memcpy(peer.sip, r, sizeof(r));
			__builtin_memcpy(peer.dip, l, sizeof(l));
		}
	}
	if (bpf_msg_redirect_hash(msg, &sock_pairs, &peer, BPF_F_INGRESS) == SK_PASS) {
		count(C_REDIRECT_OK);
		return SK_PASS;
	}
	/* Once a message took the normal path, every later one must too, or the
	 * peer could read them out of order. */
	st = bpf_sk_storage_get(&sk_msg_state, msg->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		st->bypass = 1;
	count(C_REDIRECT_FAILED);
	return SK_PASS;
}

SEC("cgroup/getsockopt")
int sluice_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6)) {
		/* Not ours: pass the kernel's answer through untouched, even for
		 * values larger than the page the program can see. */
		if (ctx->optlen > PAGE_SIZE)
			ctx->optlen = 0;
		return 1;
	}
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = bpf_sk_storage_get(&sk_orig, sk, 0, 0);
	if (!o) {
		count(C_ORIGDST_MISSING);
		return 1;
	}

	if (ctx->level == SOL_IP) {
		if (o->family != AF_INET)
			return 1;
		struct sockaddr_in *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->sin_family = AF_INET;
		sa->sin_port = o->port;
		sa->sin_addr.s_addr = o->addr[0];
		__builtin_memset(sa->__pad, 0, sizeof(sa->__pad));
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6 *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end)
			return 1;
		sa->sin6_family = AF_INET6;
		sa->sin6_port = o->port;
		sa->sin6_flowinfo = 0;
		sa->sin6_scope_id = 0;
		if (o->family == AF_INET) {
			sa->sin6_addr.in6_u.u6_addr32[0] = 0;
			sa->sin6_addr.in6_u.u6_addr32[1] = 0;
			sa->sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0x0000ffff);
			sa->sin6_addr.in6_u.u6_addr32[3] = o->addr[0];
		} else {
			sa->sin6_addr.in6_u.u6_addr32[0] = o->addr[0];
			sa->sin6_addr.in6_u.u6_addr32[1] = o->addr[1];
			sa->sin6_addr.in6_u.u6_addr32[2] = o->addr[2];
			sa->sin6_addr.in6_u.u6_addr32[3] = o->addr[3];
		}
		ctx->optlen = sizeof(*sa);
	}
	ctx->retval = 0;
	count(C_ORIGDST_ANSWERED);
	return 1;
}

SEC("sk_lookup")
int sluice_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;

	struct ip_key key = {};
	key.family = ctx->family;
	if (ctx->family == AF_INET) {
		if (is_v4_loopback(ctx->local_ip4))
			return SK_PASS;
		key.addr[0] = ctx->local_ip4;
	} else if (ctx->family == AF_INET6) {
		key.addr[0] = ctx->local_ip6[0];
		key.addr[1] = ctx->local_ip6[1];
		key.addr[2] = ctx->local_ip6[2];
		key.addr[3] = ctx->local_ip6[3];
		if (is_v6_loopback(key.addr))
			return SK_PASS;
	} else {
		return SK_PASS;
	}

	struct pod_ip *pip = bpf_map_lookup_elem(&pod_ips, &key);
	if (!pip)
		return SK_PASS;
	struct pod_config *cfg = bpf_map_lookup_elem(&pods, &pip->netns_cookie);
	if (!cfg)
		return SK_PASS;
	__u16 port = (__u16)ctx->local_port;
	if (port == cfg->inbound_port || port_in(cfg->skip_in, cfg->n_skip_in, port)) {
		count(C_SKIP_IN_PORT);
		return SK_PASS;
	}

	__u32 idx = pip->slot * 2 + (ctx->family == AF_INET6 ? 1 : 0);
	struct bpf_sock *sk = bpf_map_lookup_elem(&inbound_listeners, &idx);
	if (!sk) {
		/* Enrolled but its proxy is not listening (yet): refuse rather
		 * than let traffic reach the application unproxied. */
		count(C_IN_NO_LISTENER);
		return SK_DROP;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(C_IN_NO_LISTENER);
		return SK_DROP;
	}
	count(C_STEERED_IN);
	return SK_PASS;
}
