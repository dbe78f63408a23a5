/* One connection-tracking entry as dpagent caches it and sends it to its peers.
 *
 * A fixed 96-byte record, the same in the cache, in sync frames and in the
 * replay queue, so that nothing is converted between them. Little-endian
 * integers (every architecture dpagent runs on), addresses and ports in
 * network order as ctnetlink gives them. An IPv4 address takes the first 4
 * bytes of its 16. ICMP and ICMPv6 keep the id in the source port and
 * type << 8 | code in the destination port, as the kernel's tuple does.
 *
 * An UPDATE event carries only what changed (ctnetlink leaves out the TCP
 * protocol info when the state did not move): `have` says which optional
 * parts a record holds, and merging into the cache keeps the others.
 */
#ifndef DPAGENT_CT_RECORD_H
#define DPAGENT_CT_RECORD_H

#include <stdint.h>

#define DP_CT_RECORD_SIZE 96

/* op */
#define DP_CT_UPSERT 1
#define DP_CT_DESTROY 2

/* have */
#define DP_CT_HAVE_STATUS 0x01
#define DP_CT_HAVE_TIMEOUT 0x02
#define DP_CT_HAVE_MARK 0x04
#define DP_CT_HAVE_TCP 0x08
#define DP_CT_HAVE_ZONE 0x10

struct dp_ct_record {
    uint8_t op;
    uint8_t family;       /* AF_INET 2 or AF_INET6 10 */
    uint8_t proto;        /* IPPROTO_* of the original tuple */
    uint8_t tcp_state;    /* TCP_CONNTRACK_*, with DP_CT_HAVE_TCP */
    uint16_t zone;
    uint8_t have;
    uint8_t tcp_wscale_orig;
    uint8_t tcp_wscale_reply;
    uint8_t tcp_flags_orig;   /* IP_CT_TCP_FLAG_* */
    uint8_t tcp_flags_reply;
    uint8_t pad;
    uint32_t status;      /* IPS_* */
    uint32_t mark;
    uint32_t timeout;     /* seconds left when the record was made */
    uint8_t orig_src[16];
    uint8_t orig_dst[16];
    uint8_t reply_src[16];
    uint8_t reply_dst[16];
    uint16_t orig_sport;  /* network order */
    uint16_t orig_dport;
    uint16_t reply_sport;
    uint16_t reply_dport;
};

#endif
