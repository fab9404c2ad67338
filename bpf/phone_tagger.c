// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* The simulated phone's side of the voice VLAN, for the lab and the
 * tests: what a real phone's VLAN-aware NIC does once CDP or LLDP-MED has
 * told it its voice VLAN. There are no 8021q devices here, so:
 *
 *  - xdp_phone_untag (XDP, on the phone's interface) removes the tag of
 *    frames arriving tagged, so the phone's untagged stack and sockets get
 *    them. A veth also delivers its peer's XDP_TX frames only when this end
 *    has an XDP program, which this is.
 *  - tc_phone_tag (TC egress) tags what the phone sends with the VLAN and
 *    priority set for its source MAC, if any: before the phone knows its
 *    voice VLAN it sends untagged, as a real one does. */

#include "lib/common.h"
#include "lib/parse.h"

struct phone_tag_key {
	__u8 mac[6];
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct phone_tag_key);
	__type(value, __u16); /* TCI: priority << 13 | VLAN ID */
} phone_tags SEC(".maps");

SEC("xdp")
int xdp_phone_untag(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 macs[12];

	if ((void *)(eth + 1) + sizeof(struct vlan_tag) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(PB_ETH_P_8021Q))
		return XDP_PASS;
	__builtin_memcpy(macs, data, 12);
	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 12 > data_end)
		return XDP_PASS;
	__builtin_memcpy(data, macs, 12);
	return XDP_PASS;
}

SEC("tc")
int tc_phone_tag(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct phone_tag_key k = {};
	__u16 *tci;

	if ((void *)(eth + 1) > data_end || skb->vlan_present ||
	    eth->h_proto == bpf_htons(PB_ETH_P_8021Q))
		return 0; /* TC_ACT_OK */
	__builtin_memcpy(k.mac, eth->h_source, 6);
	tci = bpf_map_lookup_elem(&phone_tags, &k);
	if (!tci)
		return 0;
	if (bpf_skb_vlan_push(skb, bpf_htons(PB_ETH_P_8021Q), *tci))
		return 2; /* TC_ACT_SHOT */
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
