/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Bounds-checked cursor parsing of the headers a phone port sees.
 *
 * Every helper takes a cursor, checks that the whole header lies before
 * data_end, and only then advances the cursor and hands out a pointer.
 * A helper that fails (non-zero) has not moved the cursor. */
#pragma once

#include "common.h"

struct cursor {
	void *pos;
	void *end;
};

struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* The LLC/SNAP header that follows an 802.3 length field. */
struct llc_snap {
	__u8 dsap;
	__u8 ssap;
	__u8 control;
	__u8 oui[3];
	__be16 pid;
};

/* cursor_take hands out the next len bytes as *hdr and advances, or
 * returns -1 when they run past the end. It reports through a status, not
 * a NULL pointer, so callers never test a packet pointer against NULL
 * (which the verifier treats as a pointer leak). */
static __always_inline int cursor_take(struct cursor *c, __u32 len, void **hdr)
{
	void *h = c->pos;

	if (h + len > c->end)
		return -1;
	c->pos = h + len;
	*hdr = h;
	return 0;
}

static __always_inline int parse_ethhdr(struct cursor *c, struct ethhdr **eth)
{
	return cursor_take(c, sizeof(**eth), (void **)eth);
}

static __always_inline int parse_vlan_tag(struct cursor *c, struct vlan_tag **tag)
{
	return cursor_take(c, sizeof(**tag), (void **)tag);
}

static __always_inline int parse_llc_snap(struct cursor *c, struct llc_snap **snap)
{
	return cursor_take(c, sizeof(**snap), (void **)snap);
}

static __always_inline int proto_is_vlan(__be16 proto)
{
	return proto == bpf_htons(PB_ETH_P_8021Q) ||
	       proto == bpf_htons(PB_ETH_P_8021AD);
}

enum parse_status {
	PARSE_OK = 0,
	PARSE_TRUNCATED,
	PARSE_MALFORMED,
};

/* parse_iphdr takes the IPv4 header including its options (IHL words).
 * It reports MALFORMED for a version other than 4 or an IHL below 5, and
 * TRUNCATED when the header or its options run past the frame. */
static __always_inline enum parse_status parse_iphdr(struct cursor *c,
						     struct iphdr **out)
{
	struct iphdr *ip = c->pos;
	__u32 hdr_len;

	if ((void *)(ip + 1) > c->end)
		return PARSE_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	hdr_len = ip->ihl * 4;
	if ((void *)ip + hdr_len > c->end)
		return PARSE_TRUNCATED;
	c->pos = (void *)ip + hdr_len;
	*out = ip;
	return PARSE_OK;
}

static __always_inline int parse_udphdr(struct cursor *c, struct udphdr **udp)
{
	return cursor_take(c, sizeof(**udp), (void **)udp);
}
