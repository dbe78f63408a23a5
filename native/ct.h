/* The connection-tracking codec and cache: ctnetlink messages to records and back.
 *
 * Python opens the sockets (pyroute2) and moves the bytes; this code turns a
 * buffer of events or dump replies into records, records into a buffer of
 * requests, and keeps the backup's cache. pyroute2's messages cost tens of
 * microseconds an entry in Python, which a million-entry table or a 200,000
 * events/s master cannot afford (bench/conntrack.py measures both).
 */
#ifndef DPAGENT_CT_H
#define DPAGENT_CT_H

#include <stddef.h>
#include <stdint.h>

#include "ct_record.h"

#define DP_CT_MAX_IGNORE 64

/* dp_ct_encode options: NLM_F_CREATE, with the NAT set-up the status names; TCP
 * window tracking off for the entry, as conntrackd commits; NLM_F_ACK on every message. */
#define DP_CT_ENC_CREATE 0x01
#define DP_CT_ENC_LIBERAL 0x02
#define DP_CT_ENC_ACK 0x04

/* dp_ct_cache_export classes. Carrying: TCP established, or any other assured flow,
 * which a takeover replays first. */
#define DP_CT_CLASS_ALL 0
#define DP_CT_CLASS_CARRYING 1
#define DP_CT_CLASS_REST 2

struct dp_ct_prefix {
    uint8_t family;
    uint8_t len;
    uint8_t addr[16];
};

/* What the event reader leaves out, like conntrackd's Filter section. */
struct dp_ct_filter {
    uint32_t ignore_portid;   /* changes made by this netlink socket (our own injections); 0: none */
    uint8_t protocols[32];    /* bitmap of the IP protocols synced */
    uint32_t n_ignore;
    struct dp_ct_prefix ignore[DP_CT_MAX_IGNORE];   /* a flow either side of which is in one */
};

struct dp_ct_parse_stats {
    uint64_t messages;
    uint64_t records;
    uint64_t ignored;      /* by the filter, or our own injections */
    uint64_t malformed;    /* cut short, or without a usable original tuple */
    uint64_t errors;       /* NLMSG_ERROR with an errno */
    uint64_t acks;         /* NLMSG_ERROR 0 */
    uint64_t done;         /* NLMSG_DONE: the end of a dump */
    int32_t last_errno;
    uint32_t last_error_seq;
};

/* Parse the netlink messages in buf into at most max records; stops at a message
 * boundary when out is full. *used: bytes consumed. Returns the records written. */
size_t dp_ct_parse(const uint8_t *buf, size_t len, size_t *used, struct dp_ct_record *out, size_t max,
                   const struct dp_ct_filter *filter, struct dp_ct_parse_stats *stats);

/* Read what is queued on a non-blocking event socket, many events per recvmmsg (the
 * kernel queues one event per datagram), and parse them into at most max records; at
 * most `budget` recvmmsg calls. *overruns counts ENOBUFS (events lost). Returns the
 * records written, or -errno on another error. */
long dp_ct_read_events(int fd, struct dp_ct_record *out, size_t max, const struct dp_ct_filter *filter,
                       struct dp_ct_parse_stats *stats, uint32_t *overruns, int budget);

/* The NLMSG_ERROR messages in buf: their sequence numbers and errnos (0 for an ack).
 * Returns how many were written, at most max. */
size_t dp_ct_errors(const uint8_t *buf, size_t len, uint32_t *seqs, int32_t *errnos, size_t max);

/* Encode records as requests, upserts as IPCTNL_MSG_CT_NEW and destroys as
 * IPCTNL_MSG_CT_DELETE, message i with sequence number seq0 + i; stops when the
 * next message does not fit. *done: records encoded. Returns bytes written. */
size_t dp_ct_encode(const struct dp_ct_record *records, size_t n, size_t *done, uint8_t *buf, size_t cap,
                    uint32_t seq0, uint32_t options);

/* Write records as requests on a blocking ctnetlink socket, `per_send` per sendmsg, none
 * acknowledged but the very last, reading the answers as they come, all without returning
 * to Python (whose lock, held by a busy event loop, cost a replay 7 times its speed here).
 * Message i has sequence number seq0 + i. The records that failed go to failed_index and
 * failed_errno, at most max_failed (*n_failed says how many failed in all). Returns 0 once
 * the kernel answered the last request, -ETIMEDOUT if it did not within timeout_ms, or
 * another -errno. */
long dp_ct_write(int fd, const struct dp_ct_record *records, size_t n, uint32_t options, uint32_t seq0,
                 size_t per_send, uint32_t *failed_index, int32_t *failed_errno, size_t max_failed,
                 size_t *n_failed, int timeout_ms);

/* A dump request of the whole table (both families). Returns bytes written (cap >= 20). */
size_t dp_ct_encode_dump(uint8_t *buf, size_t cap, uint32_t seq);

struct dp_ct_cache;

struct dp_ct_cache *dp_ct_cache_new(void);
void dp_ct_cache_free(struct dp_ct_cache *cache);
/* Upserts merge what a record has into the entry, destroys remove it; every entry
 * touched is stamped with origin and generation. Returns the entries changed, or
 * (size_t)-1 when memory ran out (the cache is unchanged from that record on). */
size_t dp_ct_cache_apply(struct dp_ct_cache *cache, const struct dp_ct_record *records, size_t n,
                         uint8_t origin, uint32_t generation);
/* Remove origin's entries not stamped with this generation (the end of a resync). */
size_t dp_ct_cache_sweep(struct dp_ct_cache *cache, uint8_t origin, uint32_t generation);
size_t dp_ct_cache_count(const struct dp_ct_cache *cache);
size_t dp_ct_cache_bytes(const struct dp_ct_cache *cache);
/* Copy up to max entries of a class from *cursor on (start at 0); 0 at the end. */
size_t dp_ct_cache_export(const struct dp_ct_cache *cache, size_t *cursor, struct dp_ct_record *out, size_t max,
                          int klass);
void dp_ct_cache_clear(struct dp_ct_cache *cache);

#endif
