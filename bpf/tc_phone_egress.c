// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* The TC egress program for phone-facing ports: the other half of the
 * VLAN policy in lib/vlan.h. Frames the appliance sends towards a phone
 * leave tagged with the VLAN that phone uses, with the VLAN's 802.1p
 * priority. The VLAN comes from the station table the XDP program learns
 * (by destination MAC, or by chaddr for a broadcast DHCP reply), else from
 * the voice subnet of the destination (IPv4, or the ARP target). Frames
 * already tagged (the DHCP server's, written with their VLAN) get the
 * priority, or VID 0 for a phone put into the voice VLAN by auto voice.
 * It shares its maps with xdp_phone_port through pinning by name. */

#include "lib/common.h"
#include "lib/parse.h"
#include "lib/counters.h"
#include "lib/config.h"
#include "lib/vlan.h"

#define PB_TC_ACT_OK 0
#define PB_TC_ACT_SHOT 2
#define PB_ETH_P_ARP 0x0806
/* Ethernet + IPv4 (with up to 40 bytes of options) + UDP + BOOTP up to
 * chaddr: what must be in the linear area to read a DHCP reply's chaddr. */
#define PB_EGRESS_PULL (14 + 4 + 60 + 8 + 34)

struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__be32 spa;
	__u8 tha[6];
	__be32 tpa;
} __attribute__((packed));

/* dhcp_reply_chaddr finds the client a DHCP server-to-client frame is
 * for: a broadcast reply's only address for the phone. l3 is the offset of
 * the IPv4 header. */
static __always_inline const __u8 *dhcp_reply_chaddr(void *data, void *data_end, __u32 l3)
{
	struct cursor c = { .pos = data + l3, .end = data_end };
	struct iphdr *ip;
	struct udphdr *udp;
	__u8 *bootp;

	if (l3 > 18)
		return NULL;
	if (parse_iphdr(&c, &ip) != PARSE_OK || ip->protocol != PB_IPPROTO_UDP)
		return NULL;
	if (ip->frag_off & bpf_htons(PB_IP_OFFSET_MASK))
		return NULL;
	if (parse_udphdr(&c, &udp) || udp->dest != bpf_htons(PB_DHCP_CLIENT_PORT))
		return NULL;
	if (cursor_take(&c, 34, (void **)&bootp))
		return NULL;
	return bootp + 28;
}

/* subnet_vlan looks the destination up among the voice subnets. */
static __always_inline __u16 subnet_vlan(void *data, void *data_end, __be16 proto)
{
	struct pb_vlan_subnet_key k = { .prefixlen = 32 };
	struct pb_vlan_subnet *v;

	if (proto == bpf_htons(PB_ETH_P_IP)) {
		struct iphdr *ip = data + 14;

		if ((void *)(ip + 1) > data_end)
			return 0;
		k.addr = ip->daddr;
	} else if (proto == bpf_htons(PB_ETH_P_ARP)) {
		struct arp_ipv4 *arp = data + 14;

		if ((void *)(arp + 1) > data_end || arp->plen != 4)
			return 0;
		k.addr = arp->tpa;
	} else {
		return 0;
	}
	v = bpf_map_lookup_elem(&pb_vlan_subnets, &k);
	return v ? v->vlan : 0;
}

SEC("tc")
int tc_phone_egress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct pb_vlan_station *st = NULL;
	struct pb_vlan_member *m;
	struct ethhdr *eth;
	void *data, *data_end;
	const __u8 *client;
	__u16 vlan, vid;
	__u64 bytes = skb->len;

	if (!config_get())
		return PB_TC_ACT_OK;
	if (!bpf_map_lookup_elem(&pb_vlan_ports, &ifindex))
		return PB_TC_ACT_OK;
	/* The headers may sit partly in paged data; a short frame fails the
	 * pull and is read as far as it goes. */
	bpf_skb_pull_data(skb, skb->len < PB_EGRESS_PULL ? skb->len : PB_EGRESS_PULL);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return PB_TC_ACT_OK;

	if (skb->vlan_present) {
		/* Tagged out of band (a sender that set the skb's VLAN field):
		 * the same rules as for a tag in the frame, below. */
		__u16 tci;

		vlan = skb->vlan_tci & PB_VLAN_VID_MASK;
		m = vlan_member(ifindex, vlan);
		if (!m) {
			count(PB_CNT_VLAN_EGRESS_DROP, bytes);
			return PB_TC_ACT_SHOT;
		}
		if (!mac_is_group(eth->h_dest))
			st = vlan_station(ifindex, eth->h_dest);
		vid = vlan;
		if (st && st->mode == PB_STATION_PRIORITY && st->vlan == vlan) {
			vid = 0;
			count(PB_CNT_VLAN_EGRESS_PRIORITY, bytes);
		}
		tci = vlan_tci(vid, m->pcp);
		if (tci != skb->vlan_tci &&
		    (bpf_skb_vlan_pop(skb) || bpf_skb_vlan_push(skb, bpf_htons(PB_ETH_P_8021Q), tci)))
			return PB_TC_ACT_SHOT;
		return PB_TC_ACT_OK;
	}
	if (eth->h_proto == bpf_htons(PB_ETH_P_8021Q)) {
		/* Written tagged, by the DHCP server: keep the VLAN, set the
		 * priority, and VID 0 for a phone that does not tag. */
		struct vlan_tag *tag = data + 14;
		__be16 tci;

		if ((void *)(tag + 1) > data_end)
			return PB_TC_ACT_OK;
		vlan = bpf_ntohs(tag->tci) & PB_VLAN_VID_MASK;
		m = vlan_member(ifindex, vlan);
		if (!m) {
			count(PB_CNT_VLAN_EGRESS_DROP, bytes);
			return PB_TC_ACT_SHOT;
		}
		client = mac_is_group(eth->h_dest) ? dhcp_reply_chaddr(data, data_end, 18) : eth->h_dest;
		if (client)
			st = vlan_station(ifindex, client);
		vid = vlan;
		if (st && st->mode == PB_STATION_PRIORITY && st->vlan == vlan) {
			vid = 0;
			count(PB_CNT_VLAN_EGRESS_PRIORITY, bytes);
		}
		tci = bpf_htons(vlan_tci(vid, m->pcp));
		if (tag->tci != tci)
			tag->tci = tci;
		return PB_TC_ACT_OK;
	}

	client = mac_is_group(eth->h_dest) ? dhcp_reply_chaddr(data, data_end, 14) : eth->h_dest;
	if (client)
		st = vlan_station(ifindex, client);
	if (st)
		vlan = st->mode == PB_STATION_UNTAGGED ? 0 : st->vlan;
	else
		vlan = subnet_vlan(data, data_end, eth->h_proto);
	if (!vlan)
		return PB_TC_ACT_OK;
	m = vlan_member(ifindex, vlan);
	if (!m) {
		/* Routed here, but the port does not carry that VLAN: sending
		 * it untagged would leak voice traffic into the native VLAN. */
		count(PB_CNT_VLAN_EGRESS_DROP, bytes);
		return PB_TC_ACT_SHOT;
	}
	if (m->untagged)
		return PB_TC_ACT_OK;
	vid = vlan;
	if (st && st->mode == PB_STATION_PRIORITY) {
		vid = 0;
		count(PB_CNT_VLAN_EGRESS_PRIORITY, bytes);
	} else {
		count(PB_CNT_VLAN_EGRESS_TAGGED, bytes);
	}
	/* Through the skb's VLAN field rather than rewritten in place: the
	 * kernel inserts it for devices without VLAN offload and segments
	 * GSO frames with it. */
	if (bpf_skb_vlan_push(skb, bpf_htons(PB_ETH_P_8021Q), vlan_tci(vid, m->pcp)))
		return PB_TC_ACT_SHOT;
	return PB_TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
