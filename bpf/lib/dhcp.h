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

#define PB_DHCP_OPTIONS_OFF 240 /* after the magic cookie */
#define PB_DHCP_MIN_PAYLOAD 300 /* BOOTP minimum, RFC 951 */
#define PB_DHCP_BLOCK_MAX 320
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
	__u64 vc_hash; /* vc_hash() of option 60 (VendorClassHash in Go) */
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
	 * up front on every load. A client's own binding is updated in place
	 * (renewed offer, ACK); only a new client's costs an allocation. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pb_dhcp_binding_key);
	__type(value, struct pb_dhcp_binding);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_bindings SEC(".maps");

/* Per pool (key: pool_id): non-zero when the pool has no exact vendor
 * class, so the kernel need not hash option 60 and look it up (about a
 * third of a new client's OFFER, cold): its default block, or Go for
 * prefix classes, is the answer either way. Zero, as in a map just
 * created under a running program, means look it up. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_dhcp_classless SEC(".maps");

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

/* Keep the shared types in BTF for bpf2go. */
const struct pb_dhcp_event *unused_pb_dhcp_event __attribute__((unused));
const enum pb_dhcp_pool_flags *unused_pb_dhcp_pool_flags __attribute__((unused));
const enum pb_dhcp_state *unused_pb_dhcp_state __attribute__((unused));
const enum pb_dhcp_event_type *unused_pb_dhcp_event_type __attribute__((unused));

/* Wide loads and stores at any alignment. The reply is written in 8-, 4-
 * and 2-byte words rather than bytes: clang expands byte arrays of unknown
 * alignment into single-byte moves, and on the hot path code size is
 * cache misses. The verifier accepts unaligned packet and map value access
 * where the CPU handles it (x86-64, arm64). */
static __always_inline __u64 ld64(const void *p) { return *(const __u64 *)p; }
static __always_inline __u32 ld32(const void *p) { return *(const __u32 *)p; }
static __always_inline __u16 ld16(const void *p) { return *(const __u16 *)p; }
static __always_inline void st64(void *p, __u64 v) { *(__u64 *)p = v; }
static __always_inline void st32(void *p, __u32 v) { *(__u32 *)p = v; }
static __always_inline void st16(void *p, __u16 v) { *(__u16 *)p = v; }

#define PB_MAC_MASK 0xffffffffffffULL /* the 6 bytes of a MAC in a 64-bit load */

/* What the fast path keeps of a request: the fields the reply repeats, the
 * options it acts on. Raw words are in network byte order as loaded. */
struct dhcp_req {
	__u64 chaddr[2];
	__u32 xid;
	__be32 ciaddr;
	__be32 req_ip;
	__be32 server_id;
	__u32 vc_off; /* option 60's value, offset from the start of the frame */
	__u32 vc_len;
	__u32 off; /* the options walk's position, from the BOOTP message */
	__u16 flags;
	__u8 msg_type;
	__u8 have; /* DHCP_HAVE_* */
};

/* Per-CPU home of the request while it is parsed. In map memory, not on
 * the stack, because the verifier does not track values there: the
 * options walk's flags stay unknown to it, so its states at the loop head
 * converge instead of splitting on every combination of options seen. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dhcp_req);
} pb_dhcp_scratch_map SEC(".maps");

enum {
	DHCP_HAVE_REQ_IP = 1,
	DHCP_HAVE_SERVER_ID = 2,
	DHCP_HAVE_VC = 4,
};

/* A real load from scratch memory each time. Without volatile, clang
 * keeps the walk's flags in registers or on the stack, where the verifier
 * tracks them exactly again (see pb_dhcp_scratch_map). */
#define SCRATCH(x) (*(volatile typeof(x) *)&(x))

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

/* dhcp_parse reads a client's BOOTREQUEST (UDP header at l4) into r. It
 * returns non-zero for anything the fast path does not answer.
 *
 * The options are walked in a plain loop with direct packet access; r in
 * scratch memory keeps the verifier's state count down (see
 * pb_dhcp_scratch_map), where a bpf_loop callback with a helper call per
 * byte read once did. */
static __always_inline int dhcp_parse(struct xdp_md *ctx, __u32 l4, struct dhcp_req *r)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp;
	__u8 *p, *q;
	__u32 plen, off, len;

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
	if (ld32(p + 24)) /* giaddr: relayed */
		return -1;
	if (ld32(p + 236) != bpf_htonl(PB_DHCP_MAGIC))
		return -1;
	r->xid = ld32(p + 4);
	r->flags = ld16(p + 10);
	r->ciaddr = ld32(p + 12);
	r->chaddr[0] = ld64(p + 28);
	r->chaddr[1] = ld64(p + 36);

	r->off = PB_DHCP_OPTIONS_OFF;
	for (int i = 0; i < PB_DHCP_MAX_OPTIONS; i++) {
		/* Read back from scratch memory on every step: to the
		 * verifier the offset is then the same unknown at every loop
		 * head, not one exact value per path taken so far. The
		 * constant bound is for it too (off < plen <= 1492). */
		off = SCRATCH(r->off);
		if (off >= plen || off > 2047)
			return -1;
		q = p + off;
		if ((void *)(q + 1) > end)
			return -1;
		if (q[0] == 0) { /* pad */
			r->off = off + 1;
			continue;
		}
		if (q[0] == 255)
			return SCRATCH(r->msg_type) ? 0 : -1;
		if (off + 2 > plen || (void *)(q + 2) > end)
			return -1;
		len = q[1];
		if (off + 2 + len > plen)
			return -1;
		switch (q[0]) {
		case 53:
			if (len != 1 || SCRATCH(r->msg_type) || (void *)(q + 3) > end || !q[2])
				return -1;
			r->msg_type = q[2];
			break;
		case 50:
			if (len != 4 || (SCRATCH(r->have) & DHCP_HAVE_REQ_IP) || (void *)(q + 6) > end)
				return -1;
			r->req_ip = ld32(q + 2);
			SCRATCH(r->have) |= DHCP_HAVE_REQ_IP;
			break;
		case 54:
			if (len != 4 || (SCRATCH(r->have) & DHCP_HAVE_SERVER_ID) || (void *)(q + 6) > end)
				return -1;
			r->server_id = ld32(q + 2);
			SCRATCH(r->have) |= DHCP_HAVE_SERVER_ID;
			break;
		case 60:
			if ((SCRATCH(r->have) & DHCP_HAVE_VC) || !len)
				return -1;
			SCRATCH(r->have) |= DHCP_HAVE_VC;
			r->vc_off = l4 + 8 + off + 2;
			r->vc_len = len;
			break;
		default:
			if (!dhcp_option_known(q[0]))
				return -1;
		}
		r->off = off + 2 + len;
	}
	return -1; /* no END within PB_DHCP_MAX_OPTIONS steps */
}

/* The class key's hash of option 60, VendorClassHash in Go: the value in
 * little-endian 64-bit words, the last one zero-padded, each mixed in with
 * a multiply. It replaced FNV-1a 64, whose dependent multiply per byte
 * cost 25-60 ns for a phone's 36-byte vendor class. */
#define PB_VC_SEED 0x9e3779b97f4a7c15ULL
#define PB_VC_MUL 0xff51afd7ed558ccdULL

static __always_inline __u64 vc_mix(__u64 h, __u64 w)
{
	h = (h ^ w) * PB_VC_MUL;
	return h ^ (h >> 32);
}

/* dhcp_block picks the option block: the exact option 60 class, else the
 * pool's default. Returns -1 when only Go can decide (prefix classes, or a
 * vendor class too long for the kernel to hash). */
static __always_inline int dhcp_block(struct xdp_md *ctx, const struct pb_dhcp_pool *pool,
				      const struct dhcp_req *r, __u32 *block)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pb_dhcp_class_key key = { .pool_id = pool->pool_id };
	__u32 *b, *classless, len = r->vc_len, off = r->vc_off, rest, pid = pool->pool_id;
	__u64 h = PB_VC_SEED ^ len, w;
	__u8 *vc;

	if (!(r->have & DHCP_HAVE_VC)) {
		*block = pool->default_block;
		return 0;
	}
	/* The walk put option 60's value after the BOOTP header (past 256)
	 * and inside the frame; the bounds restate that for the verifier,
	 * to which scratch memory is opaque. */
	if (len == 0 || len > PB_DHCP_VC_MAX || off < 256 || off > 4096)
		return -1;
	classless = bpf_map_lookup_elem(&pb_dhcp_classless, &pid);
	if (classless && *classless)
		goto unmatched;
	vc = data + off;
	for (int i = 0; i < PB_DHCP_VC_MAX / 8; i++) {
		if (i * 8 + 8 > len)
			break;
		if ((void *)(vc + i * 8 + 8) > end)
			return -1;
		h = vc_mix(h, ld64(vc + i * 8));
	}
	rest = len & 7;
	if (rest) {
		/* The 8 bytes that end with the value, shifted down to its
		 * last rest bytes: inside the frame however short the value,
		 * since the BOOTP header comes before it. */
		__u8 *last = data + (off + len - 8);

		if ((void *)(last + 8) > end)
			return -1;
		w = ld64(last) >> ((8 - rest) * 8);
		h = vc_mix(h, w);
	}
	key.vc_hash = h;
	b = bpf_map_lookup_elem(&pb_dhcp_classes, &key);
	if (b) {
		*block = *b;
		return 0;
	}
unmatched:
	if (pool->flags & PB_POOL_PREFIX_CLASSES)
		return -1;
	*block = pool->default_block;
	return 0;
}

static __always_inline int dhcp_event(__u32 type, const struct pb_dhcp_binding_key *key,
				      __be32 ip, __u64 expires_ns, __u32 ifindex, __u32 pool_id)
{
	struct pb_dhcp_event *ev = bpf_ringbuf_reserve(&pb_dhcp_events, sizeof(*ev), 0);

	if (!ev) {
		/* Nobody reads the ring (no daemon), or not fast enough: the
		 * request goes to Go, and the counter says why. */
		count(PB_CNT_DHCP_FAST_RING_FULL, 0);
		return -1;
	}
	ev->type = type;
	ev->ifindex = ifindex;
	ev->pool_id = pool_id;
	ev->ip = ip;
	ev->expires_ns = expires_ns;
	ev->vlan = key->vlan;
	__builtin_memcpy(ev->mac, key->mac, 6);
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

/* Adds a 32-bit word to a ones' complement sum kept in 64 bits: the
 * carries pile up above bit 32 and csum_fold folds them back. Summing
 * words as loaded (network byte order, read little-endian) gives the
 * checksum in the byte order it is stored in (RFC 1071, 2.(B)). */
static __always_inline __u64 csum_add32(__u64 sum, __u32 w)
{
	return sum + w;
}

static __always_inline __u64 csum_add64(__u64 sum, __u64 w)
{
	return sum + (__u32)w + (w >> 32);
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* A byte at an even offset of the checksummed data is the high byte of
 * its 16-bit word: in a sum of little-endian loads, the low one. */
static __always_inline __u64 csum_byte(__u32 off, __u8 v)
{
	return (__u64)v << ((off & 1) * 8);
}

/* dhcp_reply rewrites the frame into the reply: Ethernet (+ the request's
 * VLAN, PCP 0), IPv4, UDP with both checksums, the BOOTP header, and the
 * options: the block rendered by Go with the reply's message type patched
 * in, END, zero padding to the BOOTP minimum. Everything is stored straight
 * into the frame and both checksums are summed from the words stored, so
 * there is no scratch copy and no checksum helper. */
static __always_inline int dhcp_reply(struct xdp_md *ctx, const struct dhcp_req *r, __u16 vlan,
				      const struct pb_dhcp_port *port, const struct pb_dhcp_pool *pool,
				      const struct pb_dhcp_block *blk, __u8 reply_type, __be32 yiaddr)
{
	__u32 blen = blk->len, toff = blk->type_off, l2 = vlan ? 18 : 14;
	__u32 tl, plen, total, cur, i;
	__u64 sum, w, dst_mac;
	__be32 dst_ip, src_ip = pool->server_ip;
	void *data, *end;
	__u8 *ip, *bp, *t, old_type;

	if (blen > PB_DHCP_BLOCK_MAX || toff >= blen)
		return -1;
	/* Options, END, then zeros up to the 300-byte BOOTP minimum. */
	tl = blen + 1;
	if (tl < PB_DHCP_MIN_PAYLOAD - PB_DHCP_OPTIONS_OFF)
		tl = PB_DHCP_MIN_PAYLOAD - PB_DHCP_OPTIONS_OFF;
	plen = PB_DHCP_OPTIONS_OFF + tl;

	if (r->ciaddr) {
		dst_ip = r->ciaddr;
		dst_mac = r->chaddr[0];
	} else if (r->flags & bpf_htons(0x8000)) {
		dst_ip = 0xffffffff;
		dst_mac = PB_MAC_MASK;
	} else {
		dst_ip = yiaddr;
		dst_mac = r->chaddr[0];
	}

	/* A scalar length: pointer subtraction would be narrowed to 32 bits. */
	cur = bpf_xdp_get_buff_len(ctx);
	total = l2 + 20 + 8 + plen;
	if (bpf_xdp_adjust_head(ctx, (int)cur - (int)total))
		return -1;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + 18 > end)
		return -1;
	ip = data + l2;
	if ((void *)(ip + 20 + 8 + PB_DHCP_OPTIONS_OFF) > end)
		return -1;
	bp = ip + 28;
	t = bp + PB_DHCP_OPTIONS_OFF;

	/* The options: the block in whole words as far as they fit in tl,
	 * then the one word that ends at tl, overlapping the last stored.
	 * Past its length a block is zero (SetBlock writes the whole array),
	 * which is what the padding after END must be, so the block's words
	 * are also what the checksum adds up. */
	sum = 0;
#pragma clang loop unroll(disable)
	for (i = 0; i < PB_DHCP_BLOCK_MAX / 8; i++) {
		if (i * 8 + 8 > tl)
			break;
		if ((void *)(t + i * 8 + 8) > end)
			return -1;
		w = ld64(blk->data + i * 8);
		st64(t + i * 8, w);
		sum = csum_add64(sum, w);
	}
	if (tl & 7) {
		/* The block's word that tl cuts short is summed whole (its
		 * bytes past tl are zero). Only a block of PB_DHCP_BLOCK_MAX
		 * bytes has tl past the array: its final word is the block's
		 * last 7 bytes, then END (stored next). */
		__u32 last = tl & ~7U, from = tl - 8, shift = 0;

		if (last <= PB_DHCP_BLOCK_MAX - 8)
			sum = csum_add64(sum, ld64(blk->data + last));
		if (from > PB_DHCP_BLOCK_MAX - 8) {
			from = PB_DHCP_BLOCK_MAX - 8;
			shift = 8;
		}
		w = ld64(blk->data + from) >> shift;
		if ((void *)(t + tl) > end || tl < 8)
			return -1;
		st64(t + tl - 8, w);
	}
	/* END after the options, and the reply's message type in place of
	 * the block's, in the bytes and in the sum. */
	if ((void *)(t + blen + 1) > end)
		return -1;
	t[blen] = 255;
	sum += csum_byte(blen, 255);
	old_type = blk->data[toff];
	if ((void *)(t + toff + 1) > end)
		return -1;
	t[toff] = reply_type;
	sum += csum_byte(toff, reply_type) + (0xffff - csum_byte(toff, old_type));

	/* BOOTP header: op 2, htype 1, hlen 6, hops 0, the request's xid,
	 * secs 0, its flags, ciaddr and chaddr, yiaddr; the rest zero but the
	 * magic cookie. */
	st32(bp, 0x00060102);
	st32(bp + 4, r->xid);
	st32(bp + 8, (__u32)r->flags << 16);
	st32(bp + 12, r->ciaddr);
	st32(bp + 16, yiaddr);
	st64(bp + 20, 0);
	st64(bp + 28, r->chaddr[0]);
	st64(bp + 36, r->chaddr[1]);
#pragma unroll
	for (int j = 44; j < 236; j += 8)
		st64(bp + j, 0);
	st32(bp + 236, bpf_htonl(PB_DHCP_MAGIC));
	sum = csum_add32(sum, 0x00060102);
	sum = csum_add32(sum, r->xid);
	sum = csum_add32(sum, (__u32)r->flags << 16);
	sum = csum_add32(sum, r->ciaddr);
	sum = csum_add32(sum, yiaddr);
	sum = csum_add64(sum, r->chaddr[0]);
	sum = csum_add64(sum, r->chaddr[1]);
	sum = csum_add32(sum, bpf_htonl(PB_DHCP_MAGIC));

	/* UDP header and pseudo-header. */
	sum = csum_add32(sum, src_ip);
	sum = csum_add32(sum, dst_ip);
	sum += bpf_htons(PB_IPPROTO_UDP) + 2 * bpf_htons(8 + plen);
	sum += bpf_htons(PB_DHCP_SERVER_PORT) + bpf_htons(PB_DHCP_CLIENT_PORT);
	w = csum_fold(sum);
	if (!w)
		w = 0xffff;
	st64(ip + 20, bpf_htons(PB_DHCP_SERVER_PORT) | (__u64)bpf_htons(PB_DHCP_CLIENT_PORT) << 16 |
			      (__u64)bpf_htons(8 + plen) << 32 | w << 48);

	/* IPv4: version 4, IHL 5, tos 0, id 0, no fragment, TTL 64, UDP. */
	sum = 0x0045 + bpf_htons(20 + 8 + plen) + 0x1140;
	sum = csum_add32(sum, src_ip);
	sum = csum_add32(sum, dst_ip);
	st64(ip, 0x0045 | (__u64)bpf_htons(20 + 8 + plen) << 16);
	st32(ip + 8, 0x1140 | (__u32)csum_fold(sum) << 16);
	st32(ip + 12, src_ip);
	st32(ip + 16, dst_ip);

	/* Ethernet: to the client (or broadcast), from the port. */
	st64(data, (dst_mac & PB_MAC_MASK) | ld64(port->mac) << 48);
	st32(data + 8, ld64(port->mac) >> 16);
	if (vlan) {
		st16(data + 12, bpf_htons(PB_ETH_P_8021Q));
		st16(data + 14, bpf_htons(vlan));
		st16(data + 16, bpf_htons(PB_ETH_P_IP));
	} else {
		st16(data + 12, bpf_htons(PB_ETH_P_IP));
	}
	return 0;
}

/* dhcp_fast answers a client's DISCOVER or REQUEST if it can: XDP_TX with
 * the frame rewritten into the reply, or XDP_PASS for the Go server. */
static __always_inline int dhcp_fast(struct xdp_md *ctx, __u32 l4, __u16 vlan, __be32 ip_dst)
{
	__u32 ifindex = ctx->ingress_ifindex, vlan_key = vlan, block_id = 0;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct pb_dhcp_port *port;
	struct pb_dhcp_pool *pool;
	struct pb_dhcp_block *blk;
	struct pb_dhcp_binding *b, nb = {};
	struct pb_dhcp_binding_key key = {};
	struct dhcp_req *r;
	__u32 zero = 0;
	__u64 now, expires;
	int live, err;
	void *queue;
	__be32 ip;
	__u8 reply_type;

	port = bpf_map_lookup_elem(&pb_dhcp_ports, &ifindex);
	if (!port || !port->enabled)
		return XDP_PASS;
	pool = bpf_map_lookup_elem(&pb_dhcp_pools, &vlan_key);
	if (!pool || !pool->pool_id)
		return XDP_PASS;
	r = bpf_map_lookup_elem(&pb_dhcp_scratch_map, &zero);
	if (!r)
		return XDP_PASS;
	__builtin_memset(r, 0, sizeof(*r)); /* the last request's */
	if (dhcp_parse(ctx, l4, r))
		return XDP_PASS;
	/* chaddr must be the frame's source MAC (ld64 at 6 takes the
	 * EtherType along; the mask drops it). */
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + 14 > end)
		return XDP_PASS;
	if (port->verify_chaddr && ((r->chaddr[0] ^ ld64(data + 6)) & PB_MAC_MASK))
		return XDP_PASS;
	if (ip_dst != 0xffffffff && ip_dst != pool->server_ip)
		return XDP_PASS;
	if (dhcp_block(ctx, pool, r, &block_id))
		return XDP_PASS;
	blk = bpf_map_lookup_elem(&pb_dhcp_blocks, &block_id);
	if (!blk || !blk->len)
		return XDP_PASS;

	key.vlan = vlan;
	__builtin_memcpy(key.mac, &r->chaddr[0], 6);
	b = bpf_map_lookup_elem(&pb_dhcp_bindings, &key);
	now = bpf_ktime_get_boot_ns();
	live = b && b->expires_ns > now;

	if (r->msg_type == PB_DHCPDISCOVER) {
		if (r->ciaddr || (r->have & DHCP_HAVE_SERVER_ID))
			return XDP_PASS;
		if (live) {
			if ((r->have & DHCP_HAVE_REQ_IP) && r->req_ip != b->ip)
				return XDP_PASS; /* Go decides whether to honour option 50 */
			ip = b->ip;
			if (b->state == PB_DHCP_OFFERED) {
				/* Renew the offer in place: the binding's address
				 * and state stay, no new element is allocated. */
				expires = now + (__u64)pool->offer_secs * 1000000000ULL;
				if (dhcp_event(PB_DHCP_EV_OFFERED, &key, ip, expires, ifindex, pool->pool_id))
					return XDP_PASS;
				b->expires_ns = expires;
				b->ifindex = ifindex;
			}
		} else {
			__u32 pid = pool->pool_id;

			/* A binding that is not live (expired, released, reserved)
			 * means userspace knows this client: its address, its
			 * reservation. Only clients never seen get a queued address. */
			if (b || (r->have & DHCP_HAVE_REQ_IP) || !(pool->flags & PB_POOL_ALLOCATE))
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
			/* The binding before the event: an event is a lease
			 * userspace records, so it goes out only for an address
			 * the kernel really gave. */
			err = bpf_map_update_elem(&pb_dhcp_bindings, &key, &nb, BPF_ANY);
			if (err) {
				if (err == -PB_E2BIG) /* a hash map at max_entries */
					count(PB_CNT_DHCP_FAST_BINDINGS_FULL, 0);
				bpf_map_push_elem(queue, &ip, 0);
				return XDP_PASS;
			}
			if (dhcp_event(PB_DHCP_EV_ALLOCATED, &key, ip, nb.expires_ns, ifindex, pid)) {
				bpf_map_delete_elem(&pb_dhcp_bindings, &key);
				bpf_map_push_elem(queue, &ip, 0);
				return XDP_PASS;
			}
		}
		reply_type = PB_DHCPOFFER;
	} else {
		if (r->msg_type != PB_DHCPREQUEST || !live)
			return XDP_PASS;
		ip = b->ip;
		if (r->have & DHCP_HAVE_SERVER_ID) { /* SELECTING */
			if (r->server_id != pool->server_ip || !(r->have & DHCP_HAVE_REQ_IP) || r->ciaddr ||
			    r->req_ip != ip)
				return XDP_PASS;
		} else if (r->have & DHCP_HAVE_REQ_IP) { /* INIT-REBOOT */
			if (r->ciaddr || r->req_ip != ip)
				return XDP_PASS;
		} else if (!r->ciaddr || r->ciaddr != ip) { /* RENEWING, REBINDING */
			return XDP_PASS;
		}
		expires = now + (__u64)pool->lease_secs * 1000000000ULL;
		if (dhcp_event(PB_DHCP_EV_ACKED, &key, ip, expires, ifindex, pool->pool_id))
			return XDP_PASS;
		/* Bound in place, as for a renewed offer. */
		b->state = PB_DHCP_BOUND;
		b->expires_ns = expires;
		b->ifindex = ifindex;
		reply_type = PB_DHCPACK;
	}
	if (dhcp_reply(ctx, r, vlan, port, pool, blk, reply_type, ip))
		return XDP_PASS;
	count(reply_type == PB_DHCPOFFER ? PB_CNT_DHCP_FAST_OFFER : PB_CNT_DHCP_FAST_ACK, 0);
	return XDP_TX;
}
