// SPDX-License-Identifier: GPL-2.0-or-later
/* dpagent's cluster-MAC filter at the driver: the CLUSTERIP replacement before the stack.
 *
 * Every node of a cluster-mac block receives every frame sent to the block's
 * multicast MAC. For a frame to a block address (indexes of IPv4 /16s and IPv6
 * /116s, then LPM tries where they say so) and its cluster
 * MAC, this hashes the flow exactly as agent/core/buckets.py and the nft
 * backend do (the kernel's jhash over the same bytes, then reciprocal_scale)
 * and accepts it only if this node owns the bucket and the agent's lease on
 * the block still runs: then the destination MAC becomes the interface's own,
 * so the stack sees PACKET_HOST. Everything else not to a block address passes
 * untouched; the ARP/NDP side stays in nftables.
 *
 * TCP and UDP hash with their ports when the block's mode says so; fragments
 * (IPv4 MF or offset, any IPv6 Fragment header) and every other protocol hash
 * on the source address alone, so all fragments of a datagram meet in one
 * bucket (agent.core.buckets.flow_fields).
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xdp_filter.h"

#define JHASH_INITVAL 0xdeadbeef
#define IP_MF_OFFSET 0x3fff

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* An IPv4 /16 -> whose it is (DP_ASK_TRIE: see dpagent_v4): a block of /16s or
 * shorter prefixes costs one array lookup, inlined, instead of a trie walk. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DP_V4_SIXTEENS);
	__type(key, __u32);
	__type(value, __u32);
} dpagent_v4_16 SEC(".maps");

/* IPv4 prefixes and single addresses of every block -> its slot. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DP_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dp_v4_key);
	__type(value, __u32);
} dpagent_v4 SEC(".maps");

/* An IPv6 /116 network, by dp_v6_fold -> whose it is: a block's /116 prefix costs an
 * inlined array lookup and a 16-byte compare instead of a trie walk. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DP_V6_SLOTS);
	__type(key, __u32);
	__type(value, struct dp_v6_net);
} dpagent_v6_116 SEC(".maps");

/* IPv6 prefixes and single addresses of every block -> its slot. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DP_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dp_v6_key);
	__type(value, __u32);
} dpagent_v6 SEC(".maps");

/* Slot -> the block's MACs, hash, owned buckets and lease. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DP_MAX_BLOCKS);
	__type(key, __u32);
	__type(value, struct dp_block);
} dpagent_blocks SEC(".maps");

/* Slot (DP_NO_BLOCK: no block) -> what happened to its frames, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_MAX_BLOCKS + 1);
	__type(key, __u32);
	__type(value, struct dp_counters);
} dpagent_counters SEC(".maps");

/* A flow key: the source address and, for TCP and UDP, each port in a 32-bit word
 * (network byte order, zero-padded), as nft lays a concatenation out in registers. */
struct flow {
	__u32 words[6];
	__u32 len;
};

/* The dpagent_v6_116 entry of a /116 network (its four words, in packet order): the
 * 16-bit halves of the words' xor, xored; agent.dataplane.xdp.v6_fold is the same. */
static __always_inline __u32 v6_fold(const __u32 *net)
{
	__u32 x = net[0] ^ net[1] ^ net[2] ^ net[3];

	return (x ^ (x >> 16)) & 0xffff;
}

static __always_inline int count(__u32 slot, __u32 what, int verdict)
{
	struct dp_counters *counters = bpf_map_lookup_elem(&dpagent_counters, &slot);

	if (counters && what < DP_COUNTERS)
		counters->count[what]++;
	return verdict;
}

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> (32 - shift));
}

/* The kernel's jhash (include/linux/jhash.h) of a key of whole words: for these
 * lengths the same value as jhash() over the key's bytes on a little-endian CPU. */
static __always_inline __u32 flow_hash(const struct flow *flow, __u32 seed)
{
	__u32 a, b, c, len = flow->len;
	const __u32 *k = flow->words;

	a = b = c = JHASH_INITVAL + (len << 2) + seed;
	if (len > 3) {
		/* __jhash_mix: at most one full block before the last, for 24-byte keys. */
		a += k[0]; b += k[1]; c += k[2];
		a -= c; a ^= rol32(c, 4); c += b;
		b -= a; b ^= rol32(a, 6); a += c;
		c -= b; c ^= rol32(b, 8); b += a;
		a -= c; a ^= rol32(c, 16); c += b;
		b -= a; b ^= rol32(a, 19); a += c;
		c -= b; c ^= rol32(b, 4); b += a;
		k += 3;
		len -= 3;
	}
	switch (len) {
	case 3: c += k[2]; /* fallthrough */
	case 2: b += k[1]; /* fallthrough */
	case 1: a += k[0];
		/* __jhash_final */
		c ^= b; c -= rol32(b, 14);
		a ^= c; a -= rol32(c, 11);
		b ^= a; b -= rol32(a, 25);
		c ^= b; c -= rol32(b, 16);
		a ^= c; a -= rol32(c, 4);
		b ^= a; b -= rol32(a, 14);
		c ^= b; c -= rol32(b, 24);
	}
	return c;
}

/* Add the ports of the transport header at `l4` to the key; false if it is cut short
 * (nft's `th sport` loads 2 bytes, `th sport . th dport` 4). */
static __always_inline bool add_ports(struct flow *flow, __u32 hash, void *l4, void *end)
{
	__be16 *ports = l4;
	__u32 n = flow->len;

	if (n > 4 || (void *)(ports + 1) > end)
		return false;
	flow->words[n] = ports[0];
	flow->len = n + 1;
	if (hash != DP_HASH_SOURCE_PORTS)
		return true;
	if ((void *)(ports + 2) > end)
		return false;
	flow->words[n + 1] = ports[1];
	flow->len = n + 2;
	return true;
}

static __always_inline bool mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

/* The transport protocol of an IPv6 packet and where its header starts, past the
 * extension headers; *fragment is set when one of them is a Fragment header.
 * Returns the protocol, or -1 if the headers are cut short or too many. */
static __always_inline int ipv6_transport(struct ipv6hdr *ip6, void *end, void **l4, bool *fragment)
{
	struct ipv6_opt_hdr *opt = (void *)(ip6 + 1);
	__u8 next = ip6->nexthdr;
	__u32 size;
	int i;

	for (i = 0; i < DP_MAX_EXT_HEADERS; i++) {
		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
		case IPPROTO_AH:
		case IPPROTO_FRAGMENT:
			break;
		default:
			*l4 = opt;
			return next;
		}
		if ((void *)(opt + 1) > end)
			return -1;
		if (next == IPPROTO_FRAGMENT) {
			*fragment = true;
			return opt->nexthdr;
		}
		/* AH counts its length in 4-byte units less 2, the others in 8-byte units less 1. */
		size = next == IPPROTO_AH ? (opt->hdrlen + 2) * 4 : (opt->hdrlen + 1) * 8;
		next = opt->nexthdr;
		opt = (void *)opt + size;
	}
	return -1;
}

SEC("xdp")
int dpagent_filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct flow flow = {};
	struct dp_block *block;
	void *pos, *l4 = NULL;
	bool fragment = false;
	int protocol = -1;
	__u32 slot, *found, bucket, word, sixteen, net[4];
	struct dp_v6_net *entry;
	__u16 ethertype;
	int i;

	/* Ethernet and at most two VLAN tags. */
	if ((void *)(eth + 1) > end)
		return count(DP_NO_BLOCK, DP_MALFORMED, XDP_PASS);
	/* Cluster MACs are multicast: a frame to a unicast MAC (this host's, most of an
	 * interface's traffic) is none of the filter's business, and costs no lookup. */
	if (!(eth->h_dest[0] & 1))
		return count(DP_NO_BLOCK, DP_NOT_CLUSTER_MAC, XDP_PASS);
	ethertype = eth->h_proto;
	pos = eth + 1;
	for (i = 0; i < DP_MAX_VLAN_TAGS; i++) {
		struct vlan_hdr *vlan = pos;

		if (ethertype != bpf_htons(ETH_P_8021Q) && ethertype != bpf_htons(ETH_P_8021AD))
			break;
		if ((void *)(vlan + 1) > end)
			return count(DP_NO_BLOCK, DP_MALFORMED, XDP_PASS);
		ethertype = vlan->proto;
		pos = vlan + 1;
	}

	/* The destination address's block, the source address into the key. */
	if (ethertype == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = pos;
		struct dp_v4_key key = { .prefixlen = 32 };

		if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
			return count(DP_NO_BLOCK, DP_MALFORMED, XDP_PASS);
		sixteen = bpf_ntohl(ip->daddr) >> 16;
		found = bpf_map_lookup_elem(&dpagent_v4_16, &sixteen);
		if (!found || !*found)
			return count(DP_NO_BLOCK, DP_NOT_BLOCK, XDP_PASS);
		if (*found == DP_ASK_TRIE) {
			__builtin_memcpy(key.addr, &ip->daddr, 4);
			found = bpf_map_lookup_elem(&dpagent_v4, &key);
			if (!found)
				return count(DP_NO_BLOCK, DP_NOT_BLOCK, XDP_PASS);
			slot = *found;
		} else {
			slot = *found - 1;
		}
		flow.words[0] = ip->saddr;
		flow.len = 1;
		fragment = (ip->frag_off & bpf_htons(IP_MF_OFFSET)) != 0;
		protocol = ip->protocol;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (ethertype == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = pos;
		struct dp_v6_key key = { .prefixlen = 128 };

		if ((void *)(ip6 + 1) > end || ip6->version != 6)
			return count(DP_NO_BLOCK, DP_MALFORMED, XDP_PASS);
		__builtin_memcpy(key.addr, &ip6->daddr, 16);
		net[0] = ((__u32 *)key.addr)[0];
		net[1] = ((__u32 *)key.addr)[1];
		net[2] = ((__u32 *)key.addr)[2];
		net[3] = ((__u32 *)key.addr)[3] & bpf_htonl(~0xfffu);
		sixteen = v6_fold(net);
		entry = bpf_map_lookup_elem(&dpagent_v6_116, &sixteen);
		if (!entry || !entry->value)
			return count(DP_NO_BLOCK, DP_NOT_BLOCK, XDP_PASS);
		if (entry->value != DP_ASK_TRIE) {
			const __u32 *held = (const __u32 *)entry->net;

			/* Another network's entry: no block address is in this one. */
			if (held[0] != net[0] || held[1] != net[1] || held[2] != net[2] || held[3] != net[3])
				return count(DP_NO_BLOCK, DP_NOT_BLOCK, XDP_PASS);
			slot = entry->value - 1;
		} else {
			found = bpf_map_lookup_elem(&dpagent_v6, &key);
			if (!found)
				return count(DP_NO_BLOCK, DP_NOT_BLOCK, XDP_PASS);
			slot = *found;
		}
		__builtin_memcpy(flow.words, &ip6->saddr, 16);
		flow.len = 4;
		l4 = ip6;
	} else {
		return count(DP_NO_BLOCK, DP_NOT_BLOCK, XDP_PASS);
	}

	/* Only frames to the block's cluster MAC are the filter's to decide. */
	block = bpf_map_lookup_elem(&dpagent_blocks, &slot);
	if (!block || !block->buckets)
		return count(DP_NO_BLOCK, DP_NOT_BLOCK, XDP_PASS);
	if (!mac_equal(eth->h_dest, block->cluster_mac))
		return count(slot, DP_NOT_CLUSTER_MAC, XDP_PASS);

	/* Ports, for TCP and UDP that are not fragments, when the block hashes on them. */
	if (block->hash != DP_HASH_SOURCE) {
		if (ethertype == bpf_htons(ETH_P_IPV6))
			protocol = ipv6_transport(l4, end, &l4, &fragment);
		if (protocol < 0)
			return count(slot, DP_MALFORMED, XDP_DROP);
		if ((protocol == IPPROTO_TCP || protocol == IPPROTO_UDP) && !fragment &&
		    !add_ports(&flow, block->hash, l4, end))
			return count(slot, DP_MALFORMED, XDP_DROP);
	}

	/* The bucket: reciprocal_scale(jhash, buckets), as nft's `jhash ... mod B`. */
	bucket = ((__u64)flow_hash(&flow, block->seed) * block->buckets) >> 32;
	word = bucket / 32;
	/* Bound the very register that indexes the bitmap, not one of clang's copies. */
	barrier_var(word);
	if (word >= DP_OWNED_WORDS || !(block->owned[word] & (1u << (bucket % 32))))
		return count(slot, DP_DROPPED, XDP_DROP);
	if (bpf_ktime_get_ns() >= block->expires_ns)
		return count(slot, DP_EXPIRED, XDP_DROP);

	/* Addressed to this host from here on: TCP drops what is not PACKET_HOST. */
	__builtin_memcpy(eth->h_dest, block->own_mac, ETH_ALEN);
	return count(slot, DP_PASSED, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
