// SPDX-License-Identifier: GPL-2.0-or-later
/* bench/xdp.py's traffic generator, as xdp-tools' xdp-trafficgen does it: run by
 * BPF_PROG_TEST_RUN with live frames, each run takes the template frame (IPv4,
 * to a destination in a /16), gives it a pseudo-random destination inside that
 * /16 (IPv4 checksum updated, RFC 1624) and redirects it out of the devmap's
 * one port. A veth delivers such frames to its peer as XDP frames, not socket
 * buffers: what a NIC's driver hands its XDP program. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Key 0: the interface the frames leave by. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} dpgen_port SEC(".maps");

SEC("xdp")
int dpgen_send(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u16 old, new;
	__u32 sum;

	if ((void *)(ip + 1) > end)
		return XDP_ABORTED;
	/* The low 16 bits of the destination: the second 16-bit word of daddr. */
	old = ((__u16 *)&ip->daddr)[1];
	new = (__u16)bpf_get_prandom_u32();
	((__u16 *)&ip->daddr)[1] = new;
	sum = (__u16)~ip->check + (__u16)~old + new;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = ~sum;
	return bpf_redirect_map(&dpgen_port, 0, 0);
}

char LICENSE[] SEC("license") = "GPL";
