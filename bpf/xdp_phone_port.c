// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* The XDP entry program for phone-facing ports.
 *
 * It classifies every frame (CDP, LLDP, DHCP, other) and counts it, applies
 * the port's VLAN policy (lib/vlan.h), and sends DHCP requests to the
 * server through the DHCP fast path (lib/dhcp.h), which may answer them
 * with XDP_TX; everything else passes on. */

#include "lib/common.h"
#include "lib/parse.h"
#include "lib/counters.h"
#include "lib/config.h"
#include "lib/dhcp.h"
#include "lib/vlan.h"

/* CDP frames go to this multicast address with an LLC/SNAP header
 * carrying Cisco's OUI and protocol ID 0x2000. */
static const __u8 cdp_dst[PB_ETH_ALEN] = { 0x01, 0x00, 0x0c, 0xcc, 0xcc, 0xcc };
#define PB_CDP_SNAP_PID 0x2000

struct frame_info {
	__u8 vlan_tags;
	__u8 vlan_too_deep;
	__u8 dhcp_to_server; /* UDP to port 67: a candidate for the fast path */
	__u16 vlan;          /* the first tag's VLAN ID */
	__u32 l4_off;        /* offset of the UDP header */
	__be32 ip_dst;
};

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline enum pb_counter classify_llc(struct cursor *c,
						    struct ethhdr *eth)
{
	struct llc_snap *snap;

	if (!mac_equal(eth->h_dest, cdp_dst))
		return PB_CNT_OTHER;
	if (parse_llc_snap(c, &snap))
		return PB_CNT_TRUNCATED;
	if (snap->dsap == 0xAA && snap->ssap == 0xAA && snap->control == 0x03 &&
	    snap->oui[0] == 0x00 && snap->oui[1] == 0x00 && snap->oui[2] == 0x0C &&
	    snap->pid == bpf_htons(PB_CDP_SNAP_PID))
		return PB_CNT_CDP;
	return PB_CNT_OTHER;
}

static __always_inline enum pb_counter classify_ipv4(struct cursor *c, void *data,
						     struct frame_info *fi)
{
	struct iphdr *ip = NULL;
	struct udphdr *udp;

	switch (parse_iphdr(c, &ip)) {
	case PARSE_OK:
		break;
	case PARSE_TRUNCATED:
		return PB_CNT_TRUNCATED;
	default:
		return PB_CNT_MALFORMED;
	}
	if (ip->protocol != PB_IPPROTO_UDP)
		return PB_CNT_OTHER;
	/* A non-first fragment carries no UDP header to look at. */
	if (ip->frag_off & bpf_htons(PB_IP_OFFSET_MASK))
		return PB_CNT_OTHER;
	if (parse_udphdr(c, &udp))
		return PB_CNT_TRUNCATED;
	if (udp->dest == bpf_htons(PB_DHCP_SERVER_PORT)) {
		fi->dhcp_to_server = !(ip->frag_off & bpf_htons(0x3fff));
		fi->l4_off = (void *)udp - data;
		fi->ip_dst = ip->daddr;
		return PB_CNT_DHCP;
	}
	if (udp->dest == bpf_htons(PB_DHCP_CLIENT_PORT))
		return PB_CNT_DHCP;
	return PB_CNT_OTHER;
}

static __always_inline enum pb_counter classify(struct cursor *c,
						struct frame_info *fi)
{
	struct ethhdr *eth;
	struct vlan_tag *tag;
	__be16 proto;

	if (parse_ethhdr(c, &eth))
		return PB_CNT_TRUNCATED;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < PB_MAX_VLAN_TAGS; i++) {
		if (!proto_is_vlan(proto))
			break;
		if (parse_vlan_tag(c, &tag))
			return PB_CNT_TRUNCATED;
		if (!fi->vlan_tags)
			fi->vlan = bpf_ntohs(tag->tci) & PB_VLAN_VID_MASK;
		fi->vlan_tags++;
		proto = tag->encapsulated_proto;
	}
	if (proto_is_vlan(proto)) {
		fi->vlan_too_deep = 1;
		return PB_CNT_OTHER;
	}

	if (bpf_ntohs(proto) < PB_ETH_P_802_3_MIN)
		return classify_llc(c, eth);
	if (proto == bpf_htons(PB_ETH_P_LLDP))
		return PB_CNT_LLDP;
	if (proto == bpf_htons(PB_ETH_P_IP))
		return classify_ipv4(c, eth, fi);
	return PB_CNT_OTHER;
}

/* Returned by vlan_ingress when the frame goes on to the DHCP stage. */
#define PB_VLAN_CONTINUE -1

/* vlan_ingress applies a port's VLAN policy to a frame. It returns an XDP
 * verdict, or PB_VLAN_CONTINUE with *dhcp_vlan set when a DHCP request may
 * go on to the fast path. DHCP, CDP and LLDP frames keep their tag: the
 * Go server and the neighbour listeners read it from their raw sockets.
 * Other frames lose it, so the appliance's untagged stack delivers them. */
static __always_inline int vlan_ingress(struct xdp_md *ctx, const struct pb_vlan_port *vp,
					const struct frame_info *fi, enum pb_counter class,
					const __u8 *src, __u64 bytes, __u16 *dhcp_vlan)
{
	__u32 ifindex = ctx->ingress_ifindex;
	int keep_tag = class == PB_CNT_DHCP || class == PB_CNT_CDP || class == PB_CNT_LLDP;
	int fast = class == PB_CNT_DHCP && fi->dhcp_to_server;
	struct pb_vlan_member *m;

	/* A second tag from a phone port is the double-tagging VLAN-hopping
	 * attack, or a misconfiguration: either way nothing here serves it. */
	if (fi->vlan_tags >= 2 || fi->vlan_too_deep) {
		count(PB_CNT_VLAN_HOP_DROP, bytes);
		return XDP_DROP;
	}
	if (fi->vlan_tags == 1 && fi->vlan) {
		m = vlan_member(ifindex, fi->vlan);
		if (!m) {
			count(PB_CNT_VLAN_HOP_DROP, bytes);
			return XDP_DROP;
		}
		vlan_learn(ifindex, src, fi->vlan, PB_STATION_TAGGED);
		if (fast) {
			/* The fast path's reply copies this tag: give it the
			 * VLAN's priority, as the egress side gives Go's replies. */
			void *data = (void *)(long)ctx->data;
			void *data_end = (void *)(long)ctx->data_end;
			__be16 tci = bpf_htons(vlan_tci(fi->vlan, m->pcp));

			if (data + 18 > data_end)
				return XDP_PASS;
			*(__be16 *)(data + 14) = tci;
			*dhcp_vlan = fi->vlan;
			return PB_VLAN_CONTINUE;
		}
		if (keep_tag)
			return XDP_PASS;
		if (xdp_vlan_pop(ctx))
			return XDP_PASS;
		count(PB_CNT_VLAN_UNTAGGED, bytes);
		return XDP_PASS;
	}

	/* Untagged, or priority-tagged (VID 0), which 802.1Q treats alike. */
	if (vp->auto_voice_vlan && vlan_is_phone(src)) {
		m = vlan_member(ifindex, vp->auto_voice_vlan);
		if (!m)
			return XDP_PASS;
		vlan_learn(ifindex, src, vp->auto_voice_vlan, PB_STATION_PRIORITY);
		count(PB_CNT_VLAN_AUTO_VOICE, bytes);
		if (class == PB_CNT_DHCP) {
			/* Tagged with the voice VLAN, Go serves it from the voice
			 * pool; its reply leaves priority-tagged (the egress side).
			 * Not the fast path: its reply would carry the voice tag. */
			void *data = (void *)(long)ctx->data;
			void *data_end = (void *)(long)ctx->data_end;

			if (fi->vlan_tags) {
				if (data + 18 > data_end)
					return XDP_PASS;
				*(__be16 *)(data + 14) = bpf_htons(vlan_tci(vp->auto_voice_vlan, m->pcp));
				return XDP_PASS;
			}
			xdp_vlan_push(ctx, vlan_tci(vp->auto_voice_vlan, m->pcp));
			return XDP_PASS;
		}
	} else {
		vlan_learn(ifindex, src, 0, PB_STATION_UNTAGGED);
	}
	if (fi->vlan_tags && !keep_tag) {
		if (!xdp_vlan_pop(ctx))
			count(PB_CNT_VLAN_UNTAGGED, bytes);
		return XDP_PASS;
	}
	if (fast) {
		*dhcp_vlan = 0;
		return PB_VLAN_CONTINUE;
	}
	return XDP_PASS;
}

SEC("xdp")
int xdp_phone_port(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct cursor c = { .pos = data, .end = data_end };
	struct frame_info fi = {};
	struct pb_vlan_port *vp;
	enum pb_counter class;
	__u32 ifindex = ctx->ingress_ifindex;
	__u16 dhcp_vlan;
	__u8 src_mac[6];
	int verdict;

	if (!config_get()) {
		count(PB_CNT_UNCONFIGURED, bytes);
		return XDP_PASS;
	}

	class = classify(&c, &fi);
	count(class, bytes);
	if (fi.vlan_tags >= 1)
		count(PB_CNT_VLAN_TAGGED, bytes);
	if (fi.vlan_tags >= 2)
		count(PB_CNT_VLAN_DOUBLE_TAGGED, bytes);
	if (fi.vlan_too_deep)
		count(PB_CNT_VLAN_TOO_DEEP, bytes);
	if (data + 14 > data_end)
		return XDP_PASS;
	__builtin_memcpy(src_mac, ((struct ethhdr *)data)->h_source, 6);

	vp = bpf_map_lookup_elem(&pb_vlan_ports, &ifindex);
	if (vp) {
		verdict = vlan_ingress(ctx, vp, &fi, class, src_mac, bytes, &dhcp_vlan);
		if (verdict != PB_VLAN_CONTINUE)
			return verdict;
		return dhcp_fast(ctx, fi.l4_off, dhcp_vlan, fi.ip_dst);
	}
	if (class == PB_CNT_DHCP && fi.dhcp_to_server && fi.vlan_tags <= 1)
		return dhcp_fast(ctx, fi.l4_off, fi.vlan_tags ? fi.vlan : 0, fi.ip_dst);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
