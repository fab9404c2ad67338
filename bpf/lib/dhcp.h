/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The DHCP fast path: DISCOVER -> OFFER and REQUEST -> ACK answered in the
 * kernel with XDP_TX, for clients with a binding in pb_dhcp_bindings and for
 * new clients from addresses userspace queued in pb_dhcp_free. Each reply
 * is byte-for-byte what the Go server sends for the same request: BOOTP
 * header, magic cookie, the pool's option block rendered by Go, END, zero
 * padding to 300 bytes. Whatever it cannot answer exactly goes to the Go
 * server with XDP_PASS; every address it hands out is reported to
 * userspace through pb_dhcp_events and persisted there. */
#pragma once

#include "common.h"
#include "counters.h"

#define PB_BOOTP_FIXED_LEN 236
#define PB_DHCP_OPTIONS_OFF 240 /* after the magic cookie */
#define PB_DHCP_MIN_PAYLOAD 300 /* BOOTP minimum, RFC 951 */
#define PB_DHCP_BLOCK_MAX 320
#define PB_DHCP_SCRATCH 576 /* >= 240 + PB_DHCP_BLOCK_MAX + 1, a multiple of 64 */
#define PB_DHCP_MAX_OPTIONS 64
#define PB_DHCP_VC_MAX 64 /* longest option 60 the fast path hashes */
#define PB_DHCP_MAGIC 0x63825363

enum pb_dhcp_msg {
	PB_DHCPDISCOVER = 1,
	PB_DHCPOFFER = 2,
	PB_DHCPREQUEST = 3,
	PB_DHCPACK = 5,
};

/* Per phone port (key: ifindex). */
struct pb_dhcp_port {
	__u8 mac[6];
	__u8 enabled;
	__u8 verify_chaddr; /* chaddr must equal the frame's source MAC */
};

enum pb_dhcp_pool_flags {
	/* Clients with no binding get an address from pb_dhcp_free. Off when
	 * a per-port lease cap applies: only the Go server counts those. */
	PB_POOL_ALLOCATE = 1,
	/* The pool has classes matched by prefix: an option 60 without an
	 * exact class must go to Go. */
	PB_POOL_PREFIX_CLASSES = 2,
};

/* Per VLAN (key: VLAN ID, 0 = untagged). */
struct pb_dhcp_pool {
	__u32 pool_id; /* 0: no pool, everything goes to Go */
	__be32 server_ip;
	__u32 default_block;
	__u32 lease_secs;
	__u32 offer_secs;
	__u32 flags;
};

/* An option block rendered by Go: every option of an OFFER, in order,
 * without END; type_off is where option 53's value sits (ACK patches it). */
struct pb_dhcp_block {
	__u16 len;
	__u16 type_off;
	__u8 data[PB_DHCP_BLOCK_MAX];
};

struct pb_dhcp_class_key {
	__u32 pool_id;
	__u32 pad;
	__u64 vc_hash; /* FNV-1a 64 of option 60 */
};

struct pb_dhcp_binding_key {
	__u16 vlan;
	__u8 mac[6];
};

enum pb_dhcp_state {
	PB_DHCP_OFFERED = 1,
	PB_DHCP_BOUND = 2,
};

struct pb_dhcp_binding {
	__be32 ip;
	__u32 state;
	__u64 expires_ns; /* CLOCK_BOOTTIME, as bpf_ktime_get_boot_ns */
	__u32 ifindex;
	__u32 pad;
};

enum pb_dhcp_event_type {
	PB_DHCP_EV_OFFERED = 1,   /* an existing offer renewed by a new DISCOVER */
	PB_DHCP_EV_ACKED = 2,     /* ACK sent: bound until expires_ns */
	PB_DHCP_EV_ALLOCATED = 3, /* a queued free address offered to a new client */
};

struct pb_dhcp_event {
	__u32 type;
	__u32 ifindex;
	__u32 pool_id;
	__be32 ip;
	__u64 expires_ns;
	__u16 vlan;
	__u8 mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct pb_dhcp_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pb_dhcp_pool);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_pools SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct pb_dhcp_block);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_blocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct pb_dhcp_class_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	/* Not preallocated: a quarter million entries would cost their memory
	 * up front on every load. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pb_dhcp_binding_key);
	__type(value, struct pb_dhcp_binding);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_bindings SEC(".maps");

/* Free addresses per pool: an array of queues, indexed by pool_id. */
struct pb_dhcp_free_queue {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 4096);
	__type(value, __be32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 256);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct pb_dhcp_free_queue);
} pb_dhcp_free SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_events SEC(".maps");

/* What the fast path keeps of a request before it overwrites the frame. */
struct dhcp_req {
	__u8 src_mac[6];
	__u8 chaddr[16];
	__u8 xid[4];
	__u8 flags[2];
	__u8 msg_type;
	__u8 has_req_ip;
	__u8 has_server_id;
	__u8 has_vc;
	__u16 vlan;
	__be32 ciaddr;
	__be32 req_ip;
	__be32 server_id;
	__be32 ip_dst;
	__u32 vc_off; /* option 60's value, offset from the start of the frame */
	__u32 vc_len;
};

/* Per-CPU working memory. The request and the options walk live here, not
 * on the stack: the verifier does not track values in map memory, so the
 * walk's states converge instead of multiplying with every option. */
struct pb_dhcp_scratch {
	__u8 buf[PB_DHCP_SCRATCH];
	struct dhcp_req r;
	__u32 off;     /* frame offset of the next option */
	__u32 end_off; /* frame offset where the UDP payload ends */
	__u32 state;   /* DHCP_WALK_RUNNING, _END or _BAD */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pb_dhcp_scratch);
} pb_dhcp_scratch_map SEC(".maps");

/* Keep the shared types in BTF for bpf2go. */
const struct pb_dhcp_event *unused_pb_dhcp_event __attribute__((unused));
const enum pb_dhcp_pool_flags *unused_pb_dhcp_pool_flags __attribute__((unused));
const enum pb_dhcp_state *unused_pb_dhcp_state __attribute__((unused));
const enum pb_dhcp_event_type *unused_pb_dhcp_event_type __attribute__((unused));

static __always_inline __u64 fnv1a64(const __u8 *p, __u32 len)
{
	__u64 h = 0xcbf29ce484222325ULL;

	for (int i = 0; i < PB_DHCP_VC_MAX; i++) {
		if (i >= len)
			break;
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Option codes whose handling the fast path matches the Go server on;
 * a request carrying any other option goes to Go. */
static __always_inline int dhcp_option_known(__u8 code)
{
	switch (code) {
	case 12: /* host name */
	case 55: /* parameter request list */
	case 57: /* maximum message size */
	case 61: /* client identifier */
		return 1;
	}
	return 0;
}

enum { DHCP_WALK_RUNNING, DHCP_WALK_END, DHCP_WALK_BAD };

/* dhcp_opt_step reads one option; bpf_loop runs it, so the verifier
 * checks one iteration rather than every path through all of them. */
static long dhcp_opt_step(__u32 i, void *arg)
{
	struct xdp_md *ctx = *(struct xdp_md **)arg;
	__u32 zero = 0, off;
	struct pb_dhcp_scratch *s = bpf_map_lookup_elem(&pb_dhcp_scratch_map, &zero);
	struct dhcp_req *r;
	__u8 hdr[2];

	if (!s)
		return 1;
	r = &s->r;
	off = s->off;
	if (off >= s->end_off || off > 2048)
		goto bad;
	if (bpf_xdp_load_bytes(ctx, off, hdr, 1))
		goto bad;
	if (hdr[0] == 0) { /* pad */
		s->off = off + 1;
		return 0;
	}
	if (hdr[0] == 255) {
		s->state = DHCP_WALK_END;
		return 1;
	}
	if (off + 2 > s->end_off || bpf_xdp_load_bytes(ctx, off, hdr, 2))
		goto bad;
	if (off + 2 + hdr[1] > s->end_off)
		goto bad;
	switch (hdr[0]) {
	case 53:
		if (hdr[1] != 1 || r->msg_type || bpf_xdp_load_bytes(ctx, off + 2, &r->msg_type, 1) ||
		    !r->msg_type)
			goto bad;
		break;
	case 50:
		if (hdr[1] != 4 || r->has_req_ip || bpf_xdp_load_bytes(ctx, off + 2, &r->req_ip, 4))
			goto bad;
		r->has_req_ip = 1;
		break;
	case 54:
		if (hdr[1] != 4 || r->has_server_id ||
		    bpf_xdp_load_bytes(ctx, off + 2, &r->server_id, 4))
			goto bad;
		r->has_server_id = 1;
		break;
	case 60:
		if (r->has_vc || hdr[1] == 0)
			goto bad;
		r->has_vc = 1;
		r->vc_off = off + 2;
		r->vc_len = hdr[1];
		break;
	default:
		if (!dhcp_option_known(hdr[0]))
			goto bad;
	}
	s->off = off + 2 + hdr[1];
	return 0;
bad:
	s->state = DHCP_WALK_BAD;
	return 1;
}

/* dhcp_parse reads a client's BOOTREQUEST (UDP header at l4) into r. It
 * returns non-zero for anything the fast path does not answer. */
static __always_inline int dhcp_parse(struct xdp_md *ctx, __u32 l4, struct pb_dhcp_scratch *s)
{
	struct dhcp_req *r = &s->r;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp;
	__u8 *p;
	__u32 plen;

	if (l4 > 128)
		return -1;
	udp = data + l4;
	if ((void *)(udp + 1) > end)
		return -1;
	if (udp->source != bpf_htons(PB_DHCP_CLIENT_PORT))
		return -1; /* relays (port 67) go to Go */
	plen = bpf_ntohs(udp->len);
	if (plen < 8 + PB_DHCP_OPTIONS_OFF || plen > 1500)
		return -1;
	plen -= 8;
	p = (void *)(udp + 1);
	if ((void *)p + plen > end)
		return -1;
	if ((void *)p + PB_DHCP_OPTIONS_OFF > end)
		return -1;
	if (p[0] != 1 || p[1] != 1 || p[2] != 6) /* BOOTREQUEST, Ethernet, 6-byte chaddr */
		return -1;
	if (p[24] | p[25] | p[26] | p[27]) /* giaddr: relayed */
		return -1;
	if (p[236] != 0x63 || p[237] != 0x82 || p[238] != 0x53 || p[239] != 0x63)
		return -1;
	__builtin_memcpy(r->xid, p + 4, 4);
	__builtin_memcpy(r->flags, p + 10, 2);
	__builtin_memcpy(&r->ciaddr, p + 12, 4);
	__builtin_memcpy(r->chaddr, p + 28, 16);

	s->off = l4 + 8 + PB_DHCP_OPTIONS_OFF;
	s->end_off = l4 + 8 + plen;
	s->state = DHCP_WALK_RUNNING;
	bpf_loop(PB_DHCP_MAX_OPTIONS, dhcp_opt_step, &ctx, 0);
	if (s->state != DHCP_WALK_END || !r->msg_type)
		return -1;
	return 0;
}

/* dhcp_block picks the option block: the exact option 60 class, else the
 * pool's default. Returns -1 when only Go can decide (prefix classes). */
static __always_inline int dhcp_block(struct xdp_md *ctx, const struct pb_dhcp_pool *pool,
				      const struct dhcp_req *r, __u32 *block)
{
	struct pb_dhcp_class_key key = { .pool_id = pool->pool_id };
	__u8 vc[PB_DHCP_VC_MAX];
	__u32 *b, len = r->vc_len;

	if (!r->has_vc) {
		*block = pool->default_block;
		return 0;
	}
	if (len == 0 || len > PB_DHCP_VC_MAX)
		return -1;
	if (bpf_xdp_load_bytes(ctx, r->vc_off, vc, len))
		return -1;
	key.vc_hash = fnv1a64(vc, len);
	b = bpf_map_lookup_elem(&pb_dhcp_classes, &key);
	if (b) {
		*block = *b;
		return 0;
	}
	if (pool->flags & PB_POOL_PREFIX_CLASSES)
		return -1;
	*block = pool->default_block;
	return 0;
}

static __always_inline int dhcp_event(__u32 type, const struct pb_dhcp_binding_key *key,
				      const struct pb_dhcp_binding *b, __u32 pool_id)
{
	struct pb_dhcp_event *ev = bpf_ringbuf_reserve(&pb_dhcp_events, sizeof(*ev), 0);

	if (!ev)
		return -1;
	ev->type = type;
	ev->ifindex = b->ifindex;
	ev->pool_id = pool_id;
	ev->ip = b->ip;
	ev->expires_ns = b->expires_ns;
	ev->vlan = key->vlan;
	__builtin_memcpy(ev->mac, key->mac, 6);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* dhcp_reply rewrites the frame into the reply: Ethernet (+ the request's
 * VLAN, PCP 0), IPv4, UDP with both checksums, and the BOOTP payload built
 * in the per-CPU scratch buffer. */
static __always_inline int dhcp_reply(struct xdp_md *ctx, const struct dhcp_req *r,
				      const struct pb_dhcp_port *port, const struct pb_dhcp_pool *pool,
				      const struct pb_dhcp_block *blk, __u8 reply_type, __be32 yiaddr)
{
	__u32 zero = 0, l2 = r->vlan ? 18 : 14, plen, total;
	__u64 cur;
	struct pb_dhcp_scratch *s = bpf_map_lookup_elem(&pb_dhcp_scratch_map, &zero);
	void *data, *end;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	__be32 dst_ip;
	const __u8 *dst_mac;
	__u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	__u64 sum;
	__u16 blen = blk->len, toff = blk->type_off;
	__u8 *b;

	if (!s || blen > PB_DHCP_BLOCK_MAX || toff >= PB_DHCP_BLOCK_MAX || toff >= blen)
		return -1;
	b = s->buf;
	__builtin_memset(b, 0, PB_DHCP_SCRATCH);
	b[0] = 2; /* BOOTREPLY */
	b[1] = 1;
	b[2] = 6;
	__builtin_memcpy(b + 4, r->xid, 4);
	__builtin_memcpy(b + 10, r->flags, 2);
	__builtin_memcpy(b + 12, &r->ciaddr, 4);
	__builtin_memcpy(b + 16, &yiaddr, 4);
	__builtin_memcpy(b + 28, r->chaddr, 16);
	b[236] = 0x63;
	b[237] = 0x82;
	b[238] = 0x53;
	b[239] = 0x63;
	__builtin_memcpy(b + PB_DHCP_OPTIONS_OFF, blk->data, PB_DHCP_BLOCK_MAX);
	b[PB_DHCP_OPTIONS_OFF + toff] = reply_type;
	b[PB_DHCP_OPTIONS_OFF + blen] = 255;
	plen = PB_DHCP_OPTIONS_OFF + blen + 1;
	if (plen < PB_DHCP_MIN_PAYLOAD)
		plen = PB_DHCP_MIN_PAYLOAD;

	if (r->ciaddr) {
		dst_ip = r->ciaddr;
		dst_mac = r->chaddr;
	} else if (r->flags[0] & 0x80) {
		dst_ip = 0xffffffff;
		dst_mac = bcast;
	} else {
		dst_ip = yiaddr;
		dst_mac = r->chaddr;
	}

	/* Checksum the payload while it is in the scratch buffer; the zeros
	 * past plen add nothing, so fixed sizes do. */
	sum = bpf_csum_diff(NULL, 0, (__be32 *)b, 512, 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)(b + 512), PB_DHCP_SCRATCH - 512, sum);

	/* A scalar length: pointer subtraction would be narrowed to 32 bits. */
	cur = bpf_xdp_get_buff_len(ctx);
	total = l2 + 20 + 8 + plen;
	if (bpf_xdp_adjust_head(ctx, (int)cur - (int)total))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + 18 + 20 + 8 > end)
		return -1;

	eth = data;
	__builtin_memcpy(eth->h_dest, dst_mac, 6);
	__builtin_memcpy(eth->h_source, port->mac, 6);
	if (r->vlan) {
		struct vlan_tag *tag = data + 14;

		eth->h_proto = bpf_htons(PB_ETH_P_8021Q);
		tag->tci = bpf_htons(r->vlan);
		tag->encapsulated_proto = bpf_htons(PB_ETH_P_IP);
		ip = data + 18;
	} else {
		eth->h_proto = bpf_htons(PB_ETH_P_IP);
		ip = data + 14;
	}
	if ((void *)(ip + 1) + 8 > end)
		return -1;
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(20 + 8 + plen);
	ip->id = 0;
	ip->frag_off = 0;
	ip->ttl = 64;
	ip->protocol = PB_IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = pool->server_ip;
	ip->daddr = dst_ip;
	ip->check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)ip, 20, 0));

	udp = (void *)(ip + 1);
	udp->source = bpf_htons(PB_DHCP_SERVER_PORT);
	udp->dest = bpf_htons(PB_DHCP_CLIENT_PORT);
	udp->len = bpf_htons(8 + plen);
	udp->check = 0;
	/* Pseudo-header and UDP header, added to the payload's sum. */
	sum += (pool->server_ip & 0xffff) + (pool->server_ip >> 16);
	sum += (dst_ip & 0xffff) + (dst_ip >> 16);
	sum += bpf_htons(PB_IPPROTO_UDP) + udp->len;
	sum += udp->source + udp->dest + udp->len;
	udp->check = csum_fold(sum);
	if (!udp->check)
		udp->check = 0xffff;

	if (plen > PB_DHCP_SCRATCH)
		return -1;
	if (bpf_xdp_store_bytes(ctx, l2 + 28, b, plen))
		return -1;
	return 0;
}

/* dhcp_fast answers a client's DISCOVER or REQUEST if it can: XDP_TX with
 * the frame rewritten into the reply, or XDP_PASS for the Go server. */
static __always_inline int dhcp_fast(struct xdp_md *ctx, __u32 l4, __u16 vlan, __be32 ip_dst,
				     const __u8 *src_mac)
{
	__u32 ifindex = ctx->ingress_ifindex, vlan_key = vlan, block_id = 0;
	struct pb_dhcp_port *port;
	struct pb_dhcp_pool *pool;
	struct pb_dhcp_block *blk;
	struct pb_dhcp_binding *b, nb = {};
	struct pb_dhcp_binding_key key = {};
	struct pb_dhcp_scratch *s;
	struct dhcp_req *r;
	__u32 zero = 0;
	__u64 now;
	int live;
	void *queue;
	__be32 ip;

	port = bpf_map_lookup_elem(&pb_dhcp_ports, &ifindex);
	if (!port || !port->enabled)
		return XDP_PASS;
	pool = bpf_map_lookup_elem(&pb_dhcp_pools, &vlan_key);
	if (!pool || !pool->pool_id)
		return XDP_PASS;
	s = bpf_map_lookup_elem(&pb_dhcp_scratch_map, &zero);
	if (!s)
		return XDP_PASS;
	r = &s->r;
	__builtin_memset(r, 0, sizeof(*r));
	r->vlan = vlan;
	r->ip_dst = ip_dst;
	__builtin_memcpy(r->src_mac, src_mac, 6);
	if (dhcp_parse(ctx, l4, s))
		return XDP_PASS;
	if (port->verify_chaddr && __builtin_memcmp(r->chaddr, r->src_mac, 6))
		return XDP_PASS;
	if (r->ip_dst != 0xffffffff && r->ip_dst != pool->server_ip)
		return XDP_PASS;
	if (dhcp_block(ctx, pool, r, &block_id))
		return XDP_PASS;
	blk = bpf_map_lookup_elem(&pb_dhcp_blocks, &block_id);
	if (!blk || !blk->len)
		return XDP_PASS;

	key.vlan = vlan;
	__builtin_memcpy(key.mac, r->chaddr, 6);
	b = bpf_map_lookup_elem(&pb_dhcp_bindings, &key);
	now = bpf_ktime_get_boot_ns();
	live = b && b->expires_ns > now;

	if (r->msg_type == PB_DHCPDISCOVER) {
		if (r->ciaddr || r->has_server_id)
			return XDP_PASS;
		if (live) {
			if (r->has_req_ip && r->req_ip != b->ip)
				return XDP_PASS; /* Go decides whether to honour option 50 */
			ip = b->ip;
			if (b->state == PB_DHCP_OFFERED) {
				nb = *b;
				nb.expires_ns = now + (__u64)pool->offer_secs * 1000000000ULL;
				nb.ifindex = ifindex;
				if (dhcp_event(PB_DHCP_EV_OFFERED, &key, &nb, pool->pool_id))
					return XDP_PASS;
				bpf_map_update_elem(&pb_dhcp_bindings, &key, &nb, BPF_ANY);
			}
		} else {
			__u32 pid = pool->pool_id;

			/* A binding that is not live (expired, released, reserved)
			 * means userspace knows this client: its address, its
			 * reservation. Only clients never seen get a queued address. */
			if (b || r->has_req_ip || !(pool->flags & PB_POOL_ALLOCATE))
				return XDP_PASS;
			queue = bpf_map_lookup_elem(&pb_dhcp_free, &pid);
			if (!queue || bpf_map_pop_elem(queue, &ip)) {
				count(PB_CNT_DHCP_FAST_NO_FREE, 0);
				return XDP_PASS;
			}
			nb.ip = ip;
			nb.state = PB_DHCP_OFFERED;
			nb.expires_ns = now + (__u64)pool->offer_secs * 1000000000ULL;
			nb.ifindex = ifindex;
			if (dhcp_event(PB_DHCP_EV_ALLOCATED, &key, &nb, pid) ||
			    bpf_map_update_elem(&pb_dhcp_bindings, &key, &nb, BPF_ANY)) {
				bpf_map_push_elem(queue, &ip, 0);
				return XDP_PASS;
			}
		}
		if (dhcp_reply(ctx, r, port, pool, blk, PB_DHCPOFFER, ip))
			return XDP_PASS;
		count(PB_CNT_DHCP_FAST_OFFER, 0);
		return XDP_TX;
	}

	if (r->msg_type != PB_DHCPREQUEST || !live)
		return XDP_PASS;
	if (r->has_server_id) { /* SELECTING */
		if (r->server_id != pool->server_ip || !r->has_req_ip || r->ciaddr || r->req_ip != b->ip)
			return XDP_PASS;
	} else if (r->has_req_ip) { /* INIT-REBOOT */
		if (r->ciaddr || r->req_ip != b->ip)
			return XDP_PASS;
	} else if (!r->ciaddr || r->ciaddr != b->ip) { /* RENEWING, REBINDING */
		return XDP_PASS;
	}
	nb = *b;
	nb.state = PB_DHCP_BOUND;
	nb.expires_ns = now + (__u64)pool->lease_secs * 1000000000ULL;
	nb.ifindex = ifindex;
	if (dhcp_event(PB_DHCP_EV_ACKED, &key, &nb, pool->pool_id))
		return XDP_PASS;
	bpf_map_update_elem(&pb_dhcp_bindings, &key, &nb, BPF_ANY);
	if (dhcp_reply(ctx, r, port, pool, blk, PB_DHCPACK, nb.ip))
		return XDP_PASS;
	count(PB_CNT_DHCP_FAST_ACK, 0);
	return XDP_TX;
}
