/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Runtime configuration written by userspace into a one-entry array. */
#pragma once

#include "common.h"

/* Bumped whenever struct pb_config changes meaning. A program that finds
 * another version in the (pinned, possibly older) map passes every frame
 * untouched and counts PB_CNT_UNCONFIGURED instead of misreading it. */
enum pb_config_version { PB_CONFIG_VERSION = 1 };
/* Keeps the enum in BTF so bpf2go exports the version to Go. */
const enum pb_config_version *unused_pb_config_version __attribute__((unused));

struct pb_config {
	__u32 version;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pb_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pb_config_map SEC(".maps");

static __always_inline struct pb_config *config_get(void)
{
	__u32 zero = 0;
	struct pb_config *cfg = bpf_map_lookup_elem(&pb_config_map, &zero);

	if (!cfg || cfg->version != PB_CONFIG_VERSION)
		return NULL;
	return cfg;
}
