/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Voice-VLAN policy for phone ports, without 8021q devices.
 *
 * On ingress (XDP) a frame's tag is checked against the VLANs its port
 * carries, the VLAN each station (port + source MAC) uses is learned, and
 * the tag is stripped from frames for the appliance's own IP services so
 * the untagged stack delivers them. On egress (TC) frames are tagged for
 * the station, or failing that the voice subnet, they go to. Userspace
 * writes the policy (ports, members, subnets, known phones); a port with
 * no pb_vlan_ports entry has no policy and frames pass as they come. */
#pragma once

#include "common.h"
#include "counters.h"

#define PB_VLAN_VID_MASK 0x0fff
#define PB_VLAN_PCP_SHIFT 13

/* Per port (key: ifindex). */
struct pb_vlan_port {
	/* Untagged frames from a known phone (pb_phone_macs, pb_phone_ouis)
	 * belong to this VLAN; 0 turns "auto voice VLAN" off. */
	__u16 auto_voice_vlan;
	__u8 pad[2];
};

/* A VLAN a port carries: the key is {ifindex, VLAN ID}. */
struct pb_vlan_member_key {
	__u32 ifindex;
	__u16 vlan;
	__u16 pad;
};

struct pb_vlan_member {
	__u8 pcp;      /* 802.1p priority of the frames this side tags */
	__u8 untagged; /* the port's native VLAN: its frames leave untagged */
	__u8 pad[2];
};

enum pb_vlan_station_mode {
	PB_STATION_UNTAGGED = 1, /* sends untagged: gets untagged frames */
	PB_STATION_TAGGED = 2,   /* tags with vlan: gets frames tagged vlan */
	/* an untagged phone put into the voice VLAN by auto voice: it gets
	 * priority-tagged frames (VID 0 with the voice priority), which any
	 * 802.1Q receiver takes as untagged */
	PB_STATION_PRIORITY = 3,
};
/* Keeps the enum in BTF so bpf2go exports it to Go. */
const enum pb_vlan_station_mode *unused_pb_vlan_station_mode __attribute__((unused));

struct pb_vlan_station_key {
	__u32 ifindex;
	__u8 mac[6];
	__u16 pad;
};

struct pb_vlan_station {
	__u16 vlan;
	__u8 mode; /* enum pb_vlan_station_mode */
	__u8 pad;
};

struct pb_vlan_subnet_key {
	__u32 prefixlen;
	__be32 addr;
};

struct pb_vlan_subnet {
	__u16 vlan;
	__u16 pad;
};

struct pb_phone_mac_key {
	__u8 mac[6];
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct pb_vlan_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_vlan_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pb_vlan_member_key);
	__type(value, struct pb_vlan_member);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_vlan_members SEC(".maps");

/* Learned, like a switch's MAC table; LRU so a flood of source MACs can
 * only evict stations, never fail the lookup of a frame. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct pb_vlan_station_key);
	__type(value, struct pb_vlan_station);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_vlan_stations SEC(".maps");

/* Voice subnets by VLAN, for frames to a station not yet learned (the
 * first ARP request towards a phone, say). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct pb_vlan_subnet_key);
	__type(value, struct pb_vlan_subnet);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_vlan_subnets SEC(".maps");

/* Phones known by MAC (learned by CDP/LLDP) and by OUI (configured),
 * for auto voice VLAN. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pb_phone_mac_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_phone_macs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32); /* the OUI in the low 24 bits, first octet highest */
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_phone_ouis SEC(".maps");

static __always_inline struct pb_vlan_member *vlan_member(__u32 ifindex, __u16 vlan)
{
	struct pb_vlan_member_key k = { .ifindex = ifindex, .vlan = vlan };

	return bpf_map_lookup_elem(&pb_vlan_members, &k);
}

static __always_inline struct pb_vlan_station *vlan_station(__u32 ifindex, const __u8 *mac)
{
	struct pb_vlan_station_key k = { .ifindex = ifindex };

	__builtin_memcpy(k.mac, mac, 6);
	return bpf_map_lookup_elem(&pb_vlan_stations, &k);
}

/* vlan_learn records the VLAN a station uses. It writes only on a change:
 * an update per frame would make every CPU fight over the same entry. */
static __always_inline void vlan_learn(__u32 ifindex, const __u8 *mac, __u16 vlan, __u8 mode)
{
	struct pb_vlan_station_key k = { .ifindex = ifindex };
	struct pb_vlan_station v = { .vlan = vlan, .mode = mode };
	struct pb_vlan_station *cur;

	__builtin_memcpy(k.mac, mac, 6);
	cur = bpf_map_lookup_elem(&pb_vlan_stations, &k);
	if (cur && cur->vlan == vlan && cur->mode == mode)
		return;
	bpf_map_update_elem(&pb_vlan_stations, &k, &v, BPF_ANY);
}

static __always_inline int vlan_is_phone(const __u8 *mac)
{
	struct pb_phone_mac_key k = {};
	__u32 oui = ((__u32)mac[0] << 16) | ((__u32)mac[1] << 8) | mac[2];

	__builtin_memcpy(k.mac, mac, 6);
	return bpf_map_lookup_elem(&pb_phone_macs, &k) ||
	       bpf_map_lookup_elem(&pb_phone_ouis, &oui);
}

static __always_inline int mac_is_group(const __u8 *mac)
{
	return mac[0] & 1;
}

/* xdp_vlan_pop removes the outer tag: the MAC addresses move up over it,
 * so the encapsulated EtherType becomes the frame's. */
static __always_inline int xdp_vlan_pop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 macs[12];

	if (data + 18 > data_end)
		return -1;
	__builtin_memcpy(macs, data, 12);
	if (bpf_xdp_adjust_head(ctx, 4))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 12 > data_end)
		return -1;
	__builtin_memcpy(data, macs, 12);
	return 0;
}

/* xdp_vlan_push inserts an 802.1Q tag after the MAC addresses. */
static __always_inline int xdp_vlan_push(struct xdp_md *ctx, __u16 tci)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 macs[12];

	if (data + 14 > data_end)
		return -1;
	__builtin_memcpy(macs, data, 12);
	if (bpf_xdp_adjust_head(ctx, -4))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + 18 > data_end)
		return -1;
	__builtin_memcpy(data, macs, 12);
	*(__be16 *)(data + 12) = bpf_htons(PB_ETH_P_8021Q);
	*(__be16 *)(data + 14) = bpf_htons(tci);
	return 0;
}

static __always_inline __u16 vlan_tci(__u16 vlan, __u8 pcp)
{
	return ((__u16)(pcp & 7) << PB_VLAN_PCP_SHIFT) | (vlan & PB_VLAN_VID_MASK);
}
