/* The XDP cluster filter's maps, as the BPF program, the loader and cffi see them.
 *
 * xdp_filter.bpf.c (clang -target bpf), xdp_loader.c (the host compiler) and
 * the cffi cdef in native/build.py (which keeps only the integer #defines) all
 * read this one file; tests/bpf/test_layout.py compares the program's BTF with
 * cffi's layout, field by field. Fixed-width kernel types only, explicit padding.
 */
#ifndef DPAGENT_XDP_FILTER_H
#define DPAGENT_XDP_FILTER_H

/* Blocks one loaded filter serves, over all interfaces it is attached to. */
#define DP_MAX_BLOCKS 64
/* Counter slot of traffic that belongs to no block. */
#define DP_NO_BLOCK 64
/* Buckets per block at most: agent.config.schema.MAX_BUCKETS. */
#define DP_MAX_BUCKETS 1024
#define DP_OWNED_WORDS 32
/* Prefixes and single addresses of all blocks, per IP version. */
#define DP_MAX_PREFIXES 1048576
/* The indexes in front of the LPM tries. An entry 0: no block address in its network;
 * slot + 1: all of it is one block's; DP_ASK_TRIE: parts of it are (or, in the IPv6
 * index, several networks share the entry): ask the trie. */
#define DP_ASK_TRIE 0xffffffff
/* dpagent_v4_16: one entry per IPv4 /16. */
#define DP_V4_SIXTEENS 65536
/* dpagent_v6_116: IPv6 /116 networks (the widest a block prefix may be) by a 16-bit fold
 * of the network (dp_v6_fold), each entry naming the network it holds. */
#define DP_V6_PREFIXLEN 116
#define DP_V6_SLOTS 65536

/* dp_block.hash: the fields of agent.core.buckets.HashFields, in that order. */
#define DP_HASH_SOURCE 0
#define DP_HASH_SOURCE_PORT 1
#define DP_HASH_SOURCE_PORTS 2

/* VLAN tags parsed before the IP header (802.1Q and 802.1ad, like xdp-tools). */
#define DP_MAX_VLAN_TAGS 2
/* IPv6 extension headers walked to find the transport header. */
#define DP_MAX_EXT_HEADERS 8

/* dp_counters.count[] indexes. Each frame counts once, in its block's slot. */
#define DP_PASSED 0          /* owned: MAC rewritten, passed to the stack */
#define DP_DROPPED 1         /* a bucket this node does not own */
#define DP_EXPIRED 2         /* an owned bucket whose lease ran out: the agent stopped refreshing */
#define DP_NOT_BLOCK 3       /* not IP, or not to a block address: passed untouched */
#define DP_NOT_CLUSTER_MAC 4 /* to a unicast MAC (in no block's slot), or a block's but another MAC */
#define DP_MALFORMED 5       /* headers cut short or invalid; dropped once the block is known */
#define DP_COUNTERS 6

/* dpagent_v4 key: a prefix of a block, as struct bpf_lpm_trie_key wants it. */
struct dp_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

/* dpagent_v6 key. */
struct dp_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* dpagent_v6_116 value. */
struct dp_v6_net {
	__u8 net[16]; /* the /116 network, low 12 bits zero */
	__u32 value;  /* 0, slot + 1 or DP_ASK_TRIE, as for dpagent_v4_16 */
};

/* dpagent_blocks value: one block's filter; the agent writes it whole. */
struct dp_block {
	/* bpf_ktime_get_ns() after which owned buckets stop being served; 0: none owned */
	__u64 expires_ns;
	__u32 buckets;  /* 1..DP_MAX_BUCKETS; 0: the slot is free */
	__u32 seed;
	__u32 hash;     /* DP_HASH_* */
	__u8 cluster_mac[6];
	__u8 own_mac[6];
	__u32 owned[DP_OWNED_WORDS]; /* bit b % 32 of word b / 32: bucket b is this node's */
};

/* dpagent_counters value (per CPU). */
struct dp_counters {
	__u64 count[DP_COUNTERS];
};

#endif
