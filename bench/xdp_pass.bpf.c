// SPDX-License-Identifier: GPL-2.0-or-later
/* The baseline: an XDP program that passes every frame, for bench/xdp.py's
 * per-packet cost and for the test of an operator's own program left alone. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass_only(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
