// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/* An XDP program that passes every frame. The lab attaches it to the
 * phones' end of each veth: a veth delivers frames sent with XDP_TX on its
 * peer only when this end has an XDP program of its own. */

#include "lib/common.h"

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
