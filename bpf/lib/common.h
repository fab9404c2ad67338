/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared includes and wire constants for phoneboot's BPF programs. */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* vmlinux.h carries types only, not the uapi #defines, so the wire
 * constants the parsers need are spelled out here. */
#define PB_ETH_ALEN 6
#define PB_ETH_P_IP 0x0800
#define PB_ETH_P_8021Q 0x8100
#define PB_ETH_P_8021AD 0x88A8
#define PB_ETH_P_LLDP 0x88CC
/* EtherType values below this are 802.3 length fields (LLC follows). */
#define PB_ETH_P_802_3_MIN 0x0600

#define PB_IPPROTO_UDP 17
#define PB_IP_OFFSET_MASK 0x1FFF

#define PB_DHCP_SERVER_PORT 67
#define PB_DHCP_CLIENT_PORT 68

/* errno values helpers return (negated); vmlinux.h has no uapi defines. */
#define PB_E2BIG 7

/* The parsers look through at most this many 802.1Q/802.1ad tags:
 * a phone tags once, a trunk from a QinQ access switch twice. */
#ifndef PB_MAX_VLAN_TAGS
#define PB_MAX_VLAN_TAGS 2
#endif
