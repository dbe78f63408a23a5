/* ctnetlink codec and the backup's cache (see ct.h). */
#define _GNU_SOURCE
#include "ct.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_conntrack_tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

/* The timeout a created entry gets when its record carries none (ctnetlink requires one). */
#define DEFAULT_TIMEOUT 120
#define NLA_ALIGNED(n) (((n) + NLA_ALIGNTO - 1) & ~(NLA_ALIGNTO - 1))

/* --- parsing ------------------------------------------------------------------------ */

struct attrs {
    const struct nlattr *at[CTA_MAX + 1];
};

/* Index the attributes of [p, p + len) by type, up to max; 0 if one overruns. */
static int index_attrs(const uint8_t *p, size_t len, const struct nlattr **at, int max)
{
    memset(at, 0, sizeof(*at) * (max + 1));
    while (len >= sizeof(struct nlattr)) {
        const struct nlattr *a = (const struct nlattr *)p;
        if (a->nla_len < sizeof(struct nlattr) || a->nla_len > len)
            return 0;
        int type = a->nla_type & NLA_TYPE_MASK;
        if (type <= max)
            at[type] = a;
        size_t step = NLA_ALIGNED(a->nla_len);
        if (step >= len)
            break;
        p += step;
        len -= step;
    }
    return 1;
}

static const uint8_t *payload(const struct nlattr *a, size_t need)
{
    if (a == NULL || a->nla_len < NLA_HDRLEN + need)
        return NULL;
    return (const uint8_t *)a + NLA_HDRLEN;
}

static size_t payload_len(const struct nlattr *a)
{
    return a->nla_len - NLA_HDRLEN;
}

static int get_u8(const struct nlattr *a, uint8_t *v)
{
    const uint8_t *p = payload(a, 1);
    if (p == NULL)
        return 0;
    *v = p[0];
    return 1;
}

static int get_be16(const struct nlattr *a, uint16_t *v)
{
    const uint8_t *p = payload(a, 2);
    if (p == NULL)
        return 0;
    memcpy(v, p, 2);
    return 1;
}

static int get_be32(const struct nlattr *a, uint32_t *v)
{
    const uint8_t *p = payload(a, 4);
    if (p == NULL)
        return 0;
    memcpy(v, p, 4);
    *v = ntohl(*v);
    return 1;
}

/* A tuple: addresses, protocol, ports (ICMP: id and type << 8 | code). */
static int parse_tuple(const struct nlattr *tuple, uint8_t family, uint8_t *src, uint8_t *dst,
                       uint8_t *proto, uint16_t *sport, uint16_t *dport)
{
    const struct nlattr *t[CTA_TUPLE_MAX + 1], *ip[CTA_IP_MAX + 1], *pr[CTA_PROTO_MAX + 1];
    if (tuple == NULL || !index_attrs(payload(tuple, 0), payload_len(tuple), t, CTA_TUPLE_MAX))
        return 0;
    if (t[CTA_TUPLE_IP] == NULL || t[CTA_TUPLE_PROTO] == NULL)
        return 0;
    if (!index_attrs(payload(t[CTA_TUPLE_IP], 0), payload_len(t[CTA_TUPLE_IP]), ip, CTA_IP_MAX))
        return 0;
    size_t alen = family == AF_INET ? 4 : 16;
    const uint8_t *s = payload(ip[family == AF_INET ? CTA_IP_V4_SRC : CTA_IP_V6_SRC], alen);
    const uint8_t *d = payload(ip[family == AF_INET ? CTA_IP_V4_DST : CTA_IP_V6_DST], alen);
    if (s == NULL || d == NULL)
        return 0;
    memset(src, 0, 16);
    memset(dst, 0, 16);
    memcpy(src, s, alen);
    memcpy(dst, d, alen);
    if (!index_attrs(payload(t[CTA_TUPLE_PROTO], 0), payload_len(t[CTA_TUPLE_PROTO]), pr, CTA_PROTO_MAX))
        return 0;
    if (!get_u8(pr[CTA_PROTO_NUM], proto))
        return 0;
    *sport = *dport = 0;
    if (*proto == IPPROTO_ICMP || *proto == IPPROTO_ICMPV6) {
        int v6 = *proto == IPPROTO_ICMPV6;
        uint8_t type = 0, code = 0;
        get_be16(pr[v6 ? CTA_PROTO_ICMPV6_ID : CTA_PROTO_ICMP_ID], sport);
        get_u8(pr[v6 ? CTA_PROTO_ICMPV6_TYPE : CTA_PROTO_ICMP_TYPE], &type);
        get_u8(pr[v6 ? CTA_PROTO_ICMPV6_CODE : CTA_PROTO_ICMP_CODE], &code);
        *dport = htons((uint16_t)(type << 8 | code));
    } else {
        get_be16(pr[CTA_PROTO_SRC_PORT], sport);
        get_be16(pr[CTA_PROTO_DST_PORT], dport);
    }
    return 1;
}

static void parse_tcp(const struct nlattr *protoinfo, struct dp_ct_record *r)
{
    const struct nlattr *pi[CTA_PROTOINFO_MAX + 1], *tcp[CTA_PROTOINFO_TCP_MAX + 1];
    if (protoinfo == NULL || !index_attrs(payload(protoinfo, 0), payload_len(protoinfo), pi, CTA_PROTOINFO_MAX))
        return;
    const struct nlattr *t = pi[CTA_PROTOINFO_TCP];
    if (t == NULL || !index_attrs(payload(t, 0), payload_len(t), tcp, CTA_PROTOINFO_TCP_MAX))
        return;
    if (!get_u8(tcp[CTA_PROTOINFO_TCP_STATE], &r->tcp_state))
        return;
    get_u8(tcp[CTA_PROTOINFO_TCP_WSCALE_ORIGINAL], &r->tcp_wscale_orig);
    get_u8(tcp[CTA_PROTOINFO_TCP_WSCALE_REPLY], &r->tcp_wscale_reply);
    const uint8_t *fo = payload(tcp[CTA_PROTOINFO_TCP_FLAGS_ORIGINAL], 2);
    const uint8_t *fr = payload(tcp[CTA_PROTOINFO_TCP_FLAGS_REPLY], 2);
    if (fo != NULL)
        r->tcp_flags_orig = fo[0];
    if (fr != NULL)
        r->tcp_flags_reply = fr[0];
    r->have |= DP_CT_HAVE_TCP;
}

static int in_prefix(const struct dp_ct_prefix *p, uint8_t family, const uint8_t *addr)
{
    if (p->family != family)
        return 0;
    unsigned bytes = p->len / 8, bits = p->len % 8;
    if (memcmp(p->addr, addr, bytes) != 0)
        return 0;
    if (bits == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - bits));
    return (p->addr[bytes] & mask) == (addr[bytes] & mask);
}

static int filtered(const struct dp_ct_filter *f, const struct dp_ct_record *r)
{
    if (!(f->protocols[r->proto / 8] >> (r->proto % 8) & 1))
        return 1;
    for (uint32_t i = 0; i < f->n_ignore && i < DP_CT_MAX_IGNORE; i++)
        if (in_prefix(&f->ignore[i], r->family, r->orig_src) || in_prefix(&f->ignore[i], r->family, r->reply_src))
            return 1;
    return 0;
}

/* One CT_NEW / CT_DELETE message into a record; 0 when it has no usable tuple. */
static int parse_conntrack(const struct nlmsghdr *h, struct dp_ct_record *r)
{
    size_t head = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
    if (h->nlmsg_len < head)
        return 0;
    const struct nfgenmsg *g = (const struct nfgenmsg *)((const uint8_t *)h + NLMSG_HDRLEN);
    if (g->nfgen_family != AF_INET && g->nfgen_family != AF_INET6)
        return 0;
    const struct nlattr *at[CTA_MAX + 1];
    if (!index_attrs((const uint8_t *)h + head, h->nlmsg_len - head, at, CTA_MAX))
        return 0;
    memset(r, 0, sizeof(*r));
    r->family = g->nfgen_family;
    r->op = (h->nlmsg_type & 0xff) == IPCTNL_MSG_CT_DELETE ? DP_CT_DESTROY : DP_CT_UPSERT;
    uint8_t reply_proto = 0;
    if (!parse_tuple(at[CTA_TUPLE_ORIG], r->family, r->orig_src, r->orig_dst, &r->proto, &r->orig_sport,
                     &r->orig_dport))
        return 0;
    if (!parse_tuple(at[CTA_TUPLE_REPLY], r->family, r->reply_src, r->reply_dst, &reply_proto, &r->reply_sport,
                     &r->reply_dport) || reply_proto != r->proto)
        return 0;
    uint16_t zone;
    if (get_be16(at[CTA_ZONE], &zone)) {
        r->zone = ntohs(zone);
        r->have |= DP_CT_HAVE_ZONE;
    }
    if (get_be32(at[CTA_STATUS], &r->status))
        r->have |= DP_CT_HAVE_STATUS;
    if (get_be32(at[CTA_TIMEOUT], &r->timeout))
        r->have |= DP_CT_HAVE_TIMEOUT;
    if (get_be32(at[CTA_MARK], &r->mark))
        r->have |= DP_CT_HAVE_MARK;
    if (r->proto == IPPROTO_TCP)
        parse_tcp(at[CTA_PROTOINFO], r);
    return 1;
}

size_t dp_ct_parse(const uint8_t *buf, size_t len, size_t *used, struct dp_ct_record *out, size_t max,
                   const struct dp_ct_filter *filter, struct dp_ct_parse_stats *stats)
{
    size_t off = 0, n = 0;
    while (len - off >= NLMSG_HDRLEN && n < max) {
        const struct nlmsghdr *h = (const struct nlmsghdr *)(buf + off);
        if (h->nlmsg_len < NLMSG_HDRLEN || h->nlmsg_len > len - off) {
            stats->malformed++;
            off = len;
            break;
        }
        stats->messages++;
        if (h->nlmsg_type == NLMSG_DONE) {
            stats->done++;
        } else if (h->nlmsg_type == NLMSG_ERROR) {
            const struct nlmsgerr *e = (const struct nlmsgerr *)NLMSG_DATA(h);
            if (h->nlmsg_len < NLMSG_HDRLEN + sizeof(int)) {
                stats->malformed++;
            } else if (e->error == 0) {
                stats->acks++;
            } else {
                stats->errors++;
                stats->last_errno = -e->error;
                stats->last_error_seq = h->nlmsg_seq;
            }
        } else if (h->nlmsg_type >> 8 == NFNL_SUBSYS_CTNETLINK &&
                   ((h->nlmsg_type & 0xff) == IPCTNL_MSG_CT_NEW || (h->nlmsg_type & 0xff) == IPCTNL_MSG_CT_DELETE)) {
            if (!parse_conntrack(h, &out[n])) {
                stats->malformed++;
            } else if (filter != NULL &&
                       ((filter->ignore_portid != 0 && h->nlmsg_pid == filter->ignore_portid) ||
                        filtered(filter, &out[n]))) {
                stats->ignored++;
            } else {
                stats->records++;
                n++;
            }
        }
        off += NLMSG_ALIGN(h->nlmsg_len);
        if (off > len)
            off = len;
    }
    *used = off;
    return n;
}

/* Datagrams read per recvmmsg, and the room for each (an event is a few hundred bytes). */
#define EVENT_VLEN 128
#define EVENT_SIZE 4096

long dp_ct_read_events(int fd, struct dp_ct_record *out, size_t max, const struct dp_ct_filter *filter,
                       struct dp_ct_parse_stats *stats, uint32_t *overruns, int budget)
{
    static __thread uint8_t (*bufs)[EVENT_SIZE];
    struct mmsghdr msgs[EVENT_VLEN];
    struct iovec iovs[EVENT_VLEN];
    if (bufs == NULL && (bufs = malloc(EVENT_VLEN * EVENT_SIZE)) == NULL)
        return -ENOMEM;
    size_t n = 0;
    for (int round = 0; round < budget && n + EVENT_VLEN <= max; round++) {
        memset(msgs, 0, sizeof(msgs));
        for (int i = 0; i < EVENT_VLEN; i++) {
            iovs[i].iov_base = bufs[i];
            iovs[i].iov_len = EVENT_SIZE;
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, msgs, EVENT_VLEN, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == ENOBUFS) {
                (*overruns)++;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            return -errno;
        }
        for (int i = 0; i < got; i++) {
            size_t used;
            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                stats->malformed++;
                continue;
            }
            n += dp_ct_parse(bufs[i], msgs[i].msg_len, &used, out + n, max - n, filter, stats);
        }
        if (got < EVENT_VLEN)
            break;
    }
    return (long)n;
}

size_t dp_ct_errors(const uint8_t *buf, size_t len, uint32_t *seqs, int32_t *errnos, size_t max)
{
    size_t off = 0, n = 0;
    while (len - off >= NLMSG_HDRLEN && n < max) {
        const struct nlmsghdr *h = (const struct nlmsghdr *)(buf + off);
        if (h->nlmsg_len < NLMSG_HDRLEN || h->nlmsg_len > len - off)
            break;
        if (h->nlmsg_type == NLMSG_ERROR && h->nlmsg_len >= NLMSG_HDRLEN + sizeof(int)) {
            const struct nlmsgerr *e = (const struct nlmsgerr *)NLMSG_DATA(h);
            seqs[n] = h->nlmsg_seq;
            errnos[n] = -e->error;
            n++;
        }
        off += NLMSG_ALIGN(h->nlmsg_len);
    }
    return n;
}

/* --- encoding ------------------------------------------------------------------------ */

struct writer {
    uint8_t *buf;
    size_t cap, len;
    int full;
};

static struct nlattr *put(struct writer *w, uint16_t type, const void *data, size_t size)
{
    size_t total = NLA_ALIGNED(NLA_HDRLEN + size);
    if (w->full || w->len + total > w->cap) {
        w->full = 1;
        return NULL;
    }
    struct nlattr *a = (struct nlattr *)(w->buf + w->len);
    a->nla_type = type;
    a->nla_len = (uint16_t)(NLA_HDRLEN + size);
    if (size)
        memcpy((uint8_t *)a + NLA_HDRLEN, data, size);
    memset((uint8_t *)a + NLA_HDRLEN + size, 0, total - NLA_HDRLEN - size);
    w->len += total;
    return a;
}

static void put_u8(struct writer *w, uint16_t type, uint8_t v) { put(w, type, &v, 1); }
static void put_be16(struct writer *w, uint16_t type, uint16_t be) { put(w, type, &be, 2); }
static void put_be32(struct writer *w, uint16_t type, uint32_t v)
{
    uint32_t be = htonl(v);
    put(w, type, &be, 4);
}

static size_t nest_start(struct writer *w, uint16_t type)
{
    size_t at = w->len;
    put(w, type | NLA_F_NESTED, NULL, 0);
    return at;
}

static void nest_end(struct writer *w, size_t at)
{
    if (!w->full)
        ((struct nlattr *)(w->buf + at))->nla_len = (uint16_t)(w->len - at);
}

static void put_tuple(struct writer *w, uint16_t type, uint8_t family, uint8_t proto, const uint8_t *src,
                      const uint8_t *dst, uint16_t sport, uint16_t dport, uint16_t zone, int with_zone)
{
    size_t tuple = nest_start(w, type);
    size_t ip = nest_start(w, CTA_TUPLE_IP);
    if (family == AF_INET) {
        put(w, CTA_IP_V4_SRC, src, 4);
        put(w, CTA_IP_V4_DST, dst, 4);
    } else {
        put(w, CTA_IP_V6_SRC, src, 16);
        put(w, CTA_IP_V6_DST, dst, 16);
    }
    nest_end(w, ip);
    size_t pr = nest_start(w, CTA_TUPLE_PROTO);
    put_u8(w, CTA_PROTO_NUM, proto);
    if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6) {
        int v6 = proto == IPPROTO_ICMPV6;
        uint16_t tc = ntohs(dport);
        put_be16(w, v6 ? CTA_PROTO_ICMPV6_ID : CTA_PROTO_ICMP_ID, sport);
        put_u8(w, v6 ? CTA_PROTO_ICMPV6_TYPE : CTA_PROTO_ICMP_TYPE, (uint8_t)(tc >> 8));
        put_u8(w, v6 ? CTA_PROTO_ICMPV6_CODE : CTA_PROTO_ICMP_CODE, (uint8_t)tc);
    } else if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
               proto == IPPROTO_SCTP || proto == IPPROTO_DCCP) {
        put_be16(w, CTA_PROTO_SRC_PORT, sport);
        put_be16(w, CTA_PROTO_DST_PORT, dport);
    }
    nest_end(w, pr);
    if (with_zone)
        put_be16(w, CTA_TUPLE_ZONE, htons(zone));
    nest_end(w, tuple);
}

/* The NAT a created entry needs to translate as the original did (conntrackd's way):
 * source NAT to where replies are sent, destination NAT from where they come. */
static void put_nat(struct writer *w, uint16_t type, uint8_t family, uint8_t proto, const uint8_t *addr,
                    uint16_t port)
{
    size_t nat = nest_start(w, type);
    if (family == AF_INET) {
        put(w, CTA_NAT_V4_MINIP, addr, 4);
        put(w, CTA_NAT_V4_MAXIP, addr, 4);
    } else {
        put(w, CTA_NAT_V6_MINIP, addr, 16);
        put(w, CTA_NAT_V6_MAXIP, addr, 16);
    }
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE || proto == IPPROTO_SCTP ||
        proto == IPPROTO_DCCP) {
        size_t pn = nest_start(w, CTA_NAT_PROTO);
        put_be16(w, CTA_PROTONAT_PORT_MIN, port);
        put_be16(w, CTA_PROTONAT_PORT_MAX, port);
        nest_end(w, pn);
    }
    nest_end(w, nat);
}

static void put_tcp(struct writer *w, const struct dp_ct_record *r, int liberal)
{
    size_t pi = nest_start(w, CTA_PROTOINFO);
    size_t tcp = nest_start(w, CTA_PROTOINFO_TCP);
    put_u8(w, CTA_PROTOINFO_TCP_STATE, r->tcp_state);
    put_u8(w, CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, r->tcp_wscale_orig);
    put_u8(w, CTA_PROTOINFO_TCP_WSCALE_REPLY, r->tcp_wscale_reply);
    uint8_t keep = IP_CT_TCP_FLAG_WINDOW_SCALE | IP_CT_TCP_FLAG_SACK_PERM;
    struct nf_ct_tcp_flags fo = {.flags = r->tcp_flags_orig & keep, .mask = keep};
    struct nf_ct_tcp_flags fr = {.flags = r->tcp_flags_reply & keep, .mask = keep};
    if (liberal) {
        fo.flags |= IP_CT_TCP_FLAG_BE_LIBERAL;
        fo.mask |= IP_CT_TCP_FLAG_BE_LIBERAL;
        fr.flags |= IP_CT_TCP_FLAG_BE_LIBERAL;
        fr.mask |= IP_CT_TCP_FLAG_BE_LIBERAL;
    }
    put(w, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &fo, sizeof(fo));
    put(w, CTA_PROTOINFO_TCP_FLAGS_REPLY, &fr, sizeof(fr));
    nest_end(w, tcp);
    nest_end(w, pi);
}

/* ICMP echo and its reply, whose inverse tuple the kernel knows; other ICMP types keep
 * the reply tuple they came with. */
static int echo_reply_type(uint8_t proto, uint8_t type)
{
    if (proto == IPPROTO_ICMP)
        return type == 8 ? 0 : type == 0 ? 8 : -1;
    return type == 128 ? 129 : type == 129 ? 128 : -1;
}

static int invertible(const struct dp_ct_record *r)
{
    if (r->proto != IPPROTO_ICMP && r->proto != IPPROTO_ICMPV6)
        return 1;
    return echo_reply_type(r->proto, (uint8_t)(ntohs(r->orig_dport) >> 8)) >= 0;
}

/* A port of the original tuple's inverse: its source (src 1) or destination. */
static uint16_t inverse_port(const struct dp_ct_record *r, int src)
{
    if (r->proto == IPPROTO_ICMP || r->proto == IPPROTO_ICMPV6) {
        if (src)
            return r->orig_sport;
        uint16_t tc = ntohs(r->orig_dport);
        return htons((uint16_t)(echo_reply_type(r->proto, (uint8_t)(tc >> 8)) << 8 | (tc & 0xff)));
    }
    return src ? r->orig_dport : r->orig_sport;
}

static int encode_one(struct writer *w, const struct dp_ct_record *r, uint32_t seq, uint32_t options)
{
    size_t start = w->len;
    if (w->len + NLMSG_HDRLEN + sizeof(struct nfgenmsg) > w->cap)
        return 0;
    struct nlmsghdr *h = (struct nlmsghdr *)(w->buf + w->len);
    int destroy = r->op == DP_CT_DESTROY;
    int create = !destroy && (options & DP_CT_ENC_CREATE);
    h->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | (destroy ? IPCTNL_MSG_CT_DELETE : IPCTNL_MSG_CT_NEW);
    h->nlmsg_flags = NLM_F_REQUEST | (create ? NLM_F_CREATE : 0) | (options & DP_CT_ENC_ACK ? NLM_F_ACK : 0);
    h->nlmsg_seq = seq;
    h->nlmsg_pid = 0;
    struct nfgenmsg *g = (struct nfgenmsg *)(w->buf + w->len + NLMSG_HDRLEN);
    g->nfgen_family = r->family;
    g->version = NFNETLINK_V0;
    g->res_id = 0;
    w->len += NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
    int zone = r->zone != 0;
    put_tuple(w, CTA_TUPLE_ORIG, r->family, r->proto, r->orig_src, r->orig_dst, r->orig_sport, r->orig_dport,
              r->zone, 0);
    if (zone)
        put_be16(w, CTA_ZONE, htons(r->zone));
    if (!destroy) {
        if (create && r->status & (IPS_SRC_NAT | IPS_DST_NAT) && invertible(r)) {
            /* As conntrackd does (NFCT_SOPT_SETUP_REPLY): the kernel derives the
             * translated reply from the NAT set-up, and sets no NAT at all when the
             * reply it is given is already the translated one. */
            put_tuple(w, CTA_TUPLE_REPLY, r->family, r->proto, r->orig_dst, r->orig_src, inverse_port(r, 1),
                      inverse_port(r, 0), r->zone, 0);
        } else {
            put_tuple(w, CTA_TUPLE_REPLY, r->family, r->proto, r->reply_src, r->reply_dst, r->reply_sport,
                      r->reply_dport, r->zone, 0);
        }
        if (r->have & DP_CT_HAVE_STATUS || create)
            put_be32(w, CTA_STATUS, r->status | (create ? IPS_CONFIRMED : 0));
        if (r->have & DP_CT_HAVE_TIMEOUT || create)
            put_be32(w, CTA_TIMEOUT, r->have & DP_CT_HAVE_TIMEOUT ? r->timeout : DEFAULT_TIMEOUT);
        if (r->have & DP_CT_HAVE_MARK)
            put_be32(w, CTA_MARK, r->mark);
        if (r->have & DP_CT_HAVE_TCP)
            put_tcp(w, r, options & DP_CT_ENC_LIBERAL);
        if (create && r->status & IPS_SRC_NAT)
            put_nat(w, CTA_NAT_SRC, r->family, r->proto, r->reply_dst, r->reply_dport);
        if (create && r->status & IPS_DST_NAT)
            put_nat(w, CTA_NAT_DST, r->family, r->proto, r->reply_src, r->reply_sport);
    }
    if (w->full) {
        w->len = start;
        w->full = 0;
        return 0;
    }
    h->nlmsg_len = (uint32_t)(w->len - start);
    return 1;
}

size_t dp_ct_encode(const struct dp_ct_record *records, size_t n, size_t *done, uint8_t *buf, size_t cap,
                    uint32_t seq0, uint32_t options)
{
    struct writer w = {.buf = buf, .cap = cap};
    size_t i = 0;
    for (; i < n; i++)
        if (!encode_one(&w, &records[i], seq0 + (uint32_t)i, options))
            break;
    *done = i;
    return w.len;
}

/* The answers queued on fd: failures recorded, *acked set when the last request's came. */
static int collect(int fd, uint8_t *rbuf, size_t rcap, uint32_t seq0, size_t n, uint32_t *failed_index,
                   int32_t *failed_errno, size_t max_failed, size_t *n_failed, int *acked, int wait_ms)
{
    for (;;) {
        if (wait_ms >= 0) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            int ready = poll(&pfd, 1, wait_ms);
            if (ready < 0)
                return errno == EINTR ? 0 : -errno;
            if (ready == 0)
                return 0;
            wait_ms = 0;
        }
        ssize_t got = recv(fd, rbuf, rcap, MSG_DONTWAIT);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 0;
            if (errno == ENOBUFS) {
                /* Answers were lost: counted as one failure without a record. */
                (*n_failed)++;
                continue;
            }
            return -errno;
        }
        size_t off = 0, len = (size_t)got;
        while (len - off >= NLMSG_HDRLEN) {
            const struct nlmsghdr *h = (const struct nlmsghdr *)(rbuf + off);
            if (h->nlmsg_len < NLMSG_HDRLEN || h->nlmsg_len > len - off)
                break;
            if (h->nlmsg_type == NLMSG_ERROR && h->nlmsg_len >= NLMSG_HDRLEN + sizeof(int)) {
                int err = -((const struct nlmsgerr *)NLMSG_DATA(h))->error;
                uint32_t index = h->nlmsg_seq - seq0;
                if (err != 0 && index < n) {
                    if (*n_failed < max_failed) {
                        failed_index[*n_failed] = index;
                        failed_errno[*n_failed] = err;
                    }
                    (*n_failed)++;
                }
                if (index == n - 1)
                    *acked = 1;
            }
            off += NLMSG_ALIGN(h->nlmsg_len);
        }
    }
}

long dp_ct_write(int fd, const struct dp_ct_record *records, size_t n, uint32_t options, uint32_t seq0,
                 size_t per_send, uint32_t *failed_index, int32_t *failed_errno, size_t max_failed,
                 size_t *n_failed, int timeout_ms)
{
    const size_t cap = 4 << 20, rcap = 1 << 20;
    uint8_t *buf = malloc(cap), *rbuf = malloc(rcap);
    long result = 0;
    int acked = 0;
    *n_failed = 0;
    if (buf == NULL || rbuf == NULL) {
        result = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n;) {
        /* The last record goes alone, asking for the ack that says all are answered. */
        size_t count = i == n - 1 ? 1 : (n - 1 - i < per_send ? n - 1 - i : per_send);
        size_t done;
        uint32_t opts = options | (i == n - 1 ? DP_CT_ENC_ACK : 0);
        size_t len = dp_ct_encode(records + i, count, &done, buf, cap, seq0 + (uint32_t)i, opts);
        if (done == 0) {
            result = -EMSGSIZE;
            goto out;
        }
        if (send(fd, buf, len, 0) < 0) {
            if (errno == EINTR)
                continue;
            result = -errno;
            goto out;
        }
        i += done;
        result = collect(fd, rbuf, rcap, seq0, n, failed_index, failed_errno, max_failed, n_failed, &acked, -1);
        if (result < 0)
            goto out;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!acked) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (spent >= timeout_ms) {
            result = -ETIMEDOUT;
            goto out;
        }
        result = collect(fd, rbuf, rcap, seq0, n, failed_index, failed_errno, max_failed, n_failed, &acked,
                         (int)(timeout_ms - spent));
        if (result < 0)
            goto out;
    }
out:
    free(buf);
    free(rbuf);
    return result;
}

size_t dp_ct_encode_dump(uint8_t *buf, size_t cap, uint32_t seq)
{
    size_t len = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
    if (cap < len)
        return 0;
    memset(buf, 0, len);
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    h->nlmsg_len = (uint32_t)len;
    h->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    h->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    h->nlmsg_seq = seq;
    struct nfgenmsg *g = (struct nfgenmsg *)(buf + NLMSG_HDRLEN);
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    return len;
}

/* --- the cache ----------------------------------------------------------------------- */

/* Entries are dense in `entries` (a removal moves the last one into the hole), found
 * through an open-addressing index of entry numbers + 1 (0 empty, TOMB removed). */
#define TOMB UINT32_MAX

struct dp_ct_cache {
    struct dp_ct_record *entries;
    uint32_t *stamp;     /* origin << 24 | generation & 0xffffff */
    size_t count, capacity;
    uint32_t *slots;
    size_t nslots, used;  /* used: filled or tombstoned slots */
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

static uint64_t key_hash(const struct dp_ct_record *r)
{
    uint64_t w[4], h = (uint64_t)r->family << 40 | (uint64_t)r->proto << 32 | r->zone;
    memcpy(w, r->orig_src, 32);
    for (int i = 0; i < 4; i++)
        h = mix(h, w[i]);
    h = mix(h, (uint64_t)r->orig_sport << 16 | r->orig_dport);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static int same_key(const struct dp_ct_record *a, const struct dp_ct_record *b)
{
    return a->family == b->family && a->proto == b->proto && a->zone == b->zone &&
           a->orig_sport == b->orig_sport && a->orig_dport == b->orig_dport &&
           memcmp(a->orig_src, b->orig_src, 32) == 0;
}

/* The slot holding the key, or the first free one on its probe path (*found 0). */
static size_t probe(const struct dp_ct_cache *c, const struct dp_ct_record *key, int *found)
{
    size_t mask = c->nslots - 1, i = key_hash(key) & mask, free_slot = SIZE_MAX;
    for (;;) {
        uint32_t s = c->slots[i];
        if (s == 0) {
            *found = 0;
            return free_slot != SIZE_MAX ? free_slot : i;
        }
        if (s == TOMB) {
            if (free_slot == SIZE_MAX)
                free_slot = i;
        } else if (same_key(&c->entries[s - 1], key)) {
            *found = 1;
            return i;
        }
        i = (i + 1) & mask;
    }
}

static int reindex(struct dp_ct_cache *c, size_t nslots)
{
    uint32_t *slots = calloc(nslots, sizeof(*slots));
    if (slots == NULL)
        return 0;
    free(c->slots);
    c->slots = slots;
    c->nslots = nslots;
    c->used = c->count;
    for (size_t e = 0; e < c->count; e++) {
        int found;
        c->slots[probe(c, &c->entries[e], &found)] = (uint32_t)(e + 1);
    }
    return 1;
}

static int reserve(struct dp_ct_cache *c)
{
    if (c->count == c->capacity) {
        size_t cap = c->capacity ? c->capacity + c->capacity / 2 : 1024;
        struct dp_ct_record *e = realloc(c->entries, cap * sizeof(*e));
        if (e == NULL)
            return 0;
        c->entries = e;
        uint32_t *s = realloc(c->stamp, cap * sizeof(*s));
        if (s == NULL)
            return 0;
        c->stamp = s;
        c->capacity = cap;
    }
    /* At most 3/4 of the slots filled or tombstoned. */
    if ((c->used + 1) * 4 > c->nslots * 3) {
        size_t n = c->nslots ? c->nslots : 2048;
        while ((c->count + 1) * 2 > n)
            n *= 2;
        if (!reindex(c, n))
            return 0;
    }
    return 1;
}

struct dp_ct_cache *dp_ct_cache_new(void)
{
    struct dp_ct_cache *c = calloc(1, sizeof(*c));
    if (c != NULL && !reserve(c)) {
        free(c);
        return NULL;
    }
    return c;
}

void dp_ct_cache_free(struct dp_ct_cache *c)
{
    if (c == NULL)
        return;
    free(c->entries);
    free(c->stamp);
    free(c->slots);
    free(c);
}

static void merge(struct dp_ct_record *e, const struct dp_ct_record *r)
{
    memcpy(e->reply_src, r->reply_src, 32);
    e->reply_sport = r->reply_sport;
    e->reply_dport = r->reply_dport;
    if (r->have & DP_CT_HAVE_STATUS)
        e->status = r->status;
    if (r->have & DP_CT_HAVE_TIMEOUT)
        e->timeout = r->timeout;
    if (r->have & DP_CT_HAVE_MARK)
        e->mark = r->mark;
    if (r->have & DP_CT_HAVE_TCP) {
        e->tcp_state = r->tcp_state;
        e->tcp_wscale_orig = r->tcp_wscale_orig;
        e->tcp_wscale_reply = r->tcp_wscale_reply;
        e->tcp_flags_orig = r->tcp_flags_orig;
        e->tcp_flags_reply = r->tcp_flags_reply;
    }
    e->have |= r->have;
}

static void remove_at(struct dp_ct_cache *c, size_t slot)
{
    size_t e = c->slots[slot] - 1, last = c->count - 1;
    c->slots[slot] = TOMB;
    if (e != last) {
        int found;
        size_t moved = probe(c, &c->entries[last], &found);
        c->entries[e] = c->entries[last];
        c->stamp[e] = c->stamp[last];
        c->slots[moved] = (uint32_t)(e + 1);
    }
    c->count--;
}

size_t dp_ct_cache_apply(struct dp_ct_cache *c, const struct dp_ct_record *records, size_t n, uint8_t origin,
                         uint32_t generation)
{
    size_t changed = 0;
    uint32_t stamp = (uint32_t)origin << 24 | (generation & 0xffffff);
    for (size_t i = 0; i < n; i++) {
        const struct dp_ct_record *r = &records[i];
        int found;
        if (r->op == DP_CT_DESTROY) {
            size_t slot = probe(c, r, &found);
            if (found) {
                remove_at(c, slot);
                changed++;
            }
            continue;
        }
        if (r->op != DP_CT_UPSERT)
            continue;
        if (!reserve(c))
            return (size_t)-1;
        size_t slot = probe(c, r, &found);
        if (found) {
            size_t e = c->slots[slot] - 1;
            merge(&c->entries[e], r);
            c->stamp[e] = stamp;
        } else {
            size_t e = c->count++;
            c->entries[e] = *r;
            c->stamp[e] = stamp;
            if (c->slots[slot] == 0)
                c->used++;
            c->slots[slot] = (uint32_t)(e + 1);
        }
        changed++;
    }
    return changed;
}

size_t dp_ct_cache_sweep(struct dp_ct_cache *c, uint8_t origin, uint32_t generation)
{
    size_t removed = 0;
    uint32_t stamp = (uint32_t)origin << 24 | (generation & 0xffffff);
    for (size_t e = c->count; e-- > 0;) {
        if (c->stamp[e] >> 24 == origin && c->stamp[e] != stamp) {
            int found;
            size_t slot = probe(c, &c->entries[e], &found);
            if (found) {
                remove_at(c, slot);
                removed++;
            }
        }
    }
    return removed;
}

size_t dp_ct_cache_count(const struct dp_ct_cache *c)
{
    return c->count;
}

static int in_class(const struct dp_ct_record *r, int klass)
{
    if (klass == DP_CT_CLASS_ALL)
        return 1;
    int carrying = r->proto == IPPROTO_TCP ? r->tcp_state == TCP_CONNTRACK_ESTABLISHED
                                           : (r->status & IPS_ASSURED) != 0;
    return klass == DP_CT_CLASS_CARRYING ? carrying : !carrying;
}

size_t dp_ct_cache_bytes(const struct dp_ct_cache *c)
{
    return sizeof(*c) + c->capacity * (sizeof(*c->entries) + sizeof(*c->stamp)) + c->nslots * sizeof(*c->slots);
}

size_t dp_ct_cache_export(const struct dp_ct_cache *c, size_t *cursor, struct dp_ct_record *out, size_t max,
                          int klass)
{
    size_t n = 0, e = *cursor;
    for (; e < c->count && n < max; e++)
        if (in_class(&c->entries[e], klass))
            out[n++] = c->entries[e];
    *cursor = e;
    return n;
}

void dp_ct_cache_clear(struct dp_ct_cache *c)
{
    c->count = 0;
    c->used = 0;
    memset(c->slots, 0, c->nslots * sizeof(*c->slots));
}
