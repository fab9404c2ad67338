/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU packet and byte counters keyed by enum pb_counter.
 *
 * Go reads the enum's names from the object's BTF (bpf2go -type), and a
 * test fails if its own name table drifts from this list. Append new
 * counters before PB_CNT__MAX; never renumber, pinned maps outlive us. */
#pragma once

#include "common.h"

enum pb_counter {
	/* Frame classes: every frame the program sees lands in exactly one. */
	PB_CNT_CDP = 0,
	PB_CNT_LLDP,
	PB_CNT_DHCP,
	PB_CNT_OTHER,
	PB_CNT_TRUNCATED,    /* the frame ends inside a header it announces */
	PB_CNT_MALFORMED,    /* a header with impossible values (IPv4 IHL < 5) */
	PB_CNT_UNCONFIGURED, /* userspace has not written a matching config */
	/* Attributes: counted in addition to the frame's class. */
	PB_CNT_VLAN_TAGGED,        /* at least one 802.1Q/802.1ad tag */
	PB_CNT_VLAN_DOUBLE_TAGGED, /* two tags */
	PB_CNT_VLAN_TOO_DEEP,      /* more tags than PB_MAX_VLAN_TAGS */
	PB_CNT_DHCP_FAST_OFFER,    /* OFFERs sent by the fast path */
	PB_CNT_DHCP_FAST_ACK,      /* ACKs sent by the fast path */
	PB_CNT_DHCP_FAST_NO_FREE,  /* new client, but no queued free address */
	PB_CNT_VLAN_HOP_DROP,      /* dropped: a tag the port does not carry, or two */
	PB_CNT_VLAN_UNTAGGED,      /* ingress tag stripped for the appliance's stack */
	PB_CNT_VLAN_AUTO_VOICE,    /* untagged frame of a known phone put in the voice VLAN */
	PB_CNT_VLAN_EGRESS_TAGGED, /* egress: tag pushed for the station or subnet */
	PB_CNT_VLAN_EGRESS_PRIORITY, /* egress: priority-tagged (VID 0) for an auto-voice phone */
	PB_CNT_VLAN_EGRESS_DROP,   /* egress: to a VLAN the port does not carry */
	PB_CNT_DHCP_FAST_RING_FULL, /* answerable, but no room for its event: passed to Go */
	PB_CNT_DHCP_FAST_BINDINGS_FULL, /* new client, but the bindings map is full: passed to Go */
	PB_CNT__MAX,
};

/* Keeps the enum in BTF so bpf2go and the drift test can read it. */
const enum pb_counter *unused_pb_counter __attribute__((unused));

struct pb_counter_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PB_CNT__MAX);
	__type(key, __u32);
	__type(value, struct pb_counter_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_counters SEC(".maps");

static __always_inline void count(enum pb_counter key, __u64 bytes)
{
	__u32 k = key;
	struct pb_counter_value *v = bpf_map_lookup_elem(&pb_counters, &k);

	if (!v)
		return;
	/* Per-CPU slots: no other CPU writes this one, no atomics needed. */
	v->packets++;
	v->bytes += bytes;
}
