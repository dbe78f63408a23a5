/* The kernel's ceiling for a bulk conntrack replay: a minimal ctnetlink writer.
 *
 * Creates COUNT synthetic TCP ESTABLISHED entries in the calling process's
 * network namespace, IPCTNL_MSG_CT_NEW with NLM_F_CREATE | NLM_F_EXCL, PER_SEND
 * messages per sendmsg and no NLM_F_ACK: the kernel still reports every error,
 * matched here by sequence number only to count it by errno. The status must
 * include CONFIRMED, else the kernel answers EBUSY. The very last message asks
 * for an ACK, so that its answer says the kernel has processed all of them.
 *
 * Entry i, for i from OFFSET to OFFSET + COUNT - 1: 198.18.0.0 + i / 32768
 * port 32768 + i % 32768 to 198.19.0.1 port 443, so runs with disjoint ranges
 * create disjoint entries. Prints one JSON line, errors keyed by errno number:
 *   {"n": ..., "seconds": ..., "cpu_s": ..., "errors": {"17": k, ...}, "applied": ..., ...}
 *
 * Usage: ct_writer COUNT [OFFSET] [PER_SEND] [TIMEOUT_S]
 * Build: gcc -O2 -Wall -Werror -o ct_writer ct_writer.c
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_conntrack_common.h>
#include <linux/netfilter/nf_conntrack_tcp.h>

#define MSG_MAX 256
#define SOCK_BUF (256 * 1024 * 1024)
#define MAX_ERRNO 512

static uint64_t errors[MAX_ERRNO];
static uint64_t lost_reports;
static int final_seen;
static uint32_t final_seq;

/* One attribute at *off in buf; returns its start for nesting. */
static size_t put(char *buf, size_t *off, uint16_t type, const void *data, size_t len)
{
	struct nlattr *a = (struct nlattr *)(buf + *off);
	size_t start = *off;

	a->nla_type = type;
	a->nla_len = NLA_HDRLEN + len;
	if (len)
		memcpy(buf + *off + NLA_HDRLEN, data, len);
	memset(buf + *off + NLA_HDRLEN + len, 0, NLA_ALIGN(len) - len);
	*off += NLA_HDRLEN + NLA_ALIGN(len);
	return start;
}

static size_t nest(char *buf, size_t *off, uint16_t type)
{
	return put(buf, off, type | NLA_F_NESTED, NULL, 0);
}

static void end(char *buf, size_t *off, size_t start)
{
	((struct nlattr *)(buf + start))->nla_len = *off - start;
}

static void tuple(char *buf, size_t *off, uint16_t type, uint32_t src, uint32_t dst,
		  uint16_t sport, uint16_t dport)
{
	uint8_t proto = IPPROTO_TCP;
	size_t t = nest(buf, off, type);
	size_t ip = nest(buf, off, CTA_TUPLE_IP);

	put(buf, off, CTA_IP_V4_SRC, &src, 4);
	put(buf, off, CTA_IP_V4_DST, &dst, 4);
	end(buf, off, ip);
	size_t p = nest(buf, off, CTA_TUPLE_PROTO);
	put(buf, off, CTA_PROTO_NUM, &proto, 1);
	put(buf, off, CTA_PROTO_SRC_PORT, &sport, 2);
	put(buf, off, CTA_PROTO_DST_PORT, &dport, 2);
	end(buf, off, p);
	end(buf, off, t);
}

/* Entry i as one CT_NEW message at buf; returns its length. */
static size_t encode(char *buf, uint64_t i, uint32_t seq, int ack, uint32_t timeout_s)
{
	struct nlmsghdr *h = (struct nlmsghdr *)buf;
	struct nfgenmsg *g = (struct nfgenmsg *)(buf + NLMSG_HDRLEN);
	size_t off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(*g));
	uint32_t client = htonl(0xc6120000u + (uint32_t)(i >> 15));	/* 198.18.0.0 + i / 32768 */
	uint32_t server = htonl(0xc6130001u);				/* 198.19.0.1 */
	uint16_t cport = htons(32768 + (i & 0x7fff)), sport = htons(443);
	uint32_t status = htonl(IPS_CONFIRMED | IPS_ASSURED | IPS_SEEN_REPLY);
	uint32_t timeout = htonl(timeout_s);
	uint8_t state = TCP_CONNTRACK_ESTABLISHED;
	struct nf_ct_tcp_flags flags = { .flags = IP_CT_TCP_FLAG_SACK_PERM, .mask = IP_CT_TCP_FLAG_SACK_PERM };

	g->nfgen_family = AF_INET;
	g->version = NFNETLINK_V0;
	g->res_id = 0;
	tuple(buf, &off, CTA_TUPLE_ORIG, client, server, cport, sport);
	tuple(buf, &off, CTA_TUPLE_REPLY, server, client, sport, cport);
	put(buf, &off, CTA_STATUS, &status, 4);
	put(buf, &off, CTA_TIMEOUT, &timeout, 4);
	size_t pi = nest(buf, &off, CTA_PROTOINFO);
	size_t tcp = nest(buf, &off, CTA_PROTOINFO_TCP);
	put(buf, &off, CTA_PROTOINFO_TCP_STATE, &state, 1);
	put(buf, &off, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &flags, sizeof(flags));
	put(buf, &off, CTA_PROTOINFO_TCP_FLAGS_REPLY, &flags, sizeof(flags));
	end(buf, &off, tcp);
	end(buf, &off, pi);

	h->nlmsg_len = off;
	h->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | (ack ? NLM_F_ACK : 0);
	h->nlmsg_seq = seq;
	h->nlmsg_pid = 0;
	return NLMSG_ALIGN(off);
}

/* Read every report waiting (or, with wait, until the final ACK came); count errors by errno. */
static int drain(int fd, char *rbuf, size_t rlen, int wait)
{
	for (;;) {
		ssize_t got = recv(fd, rbuf, rlen, wait && !final_seen ? 0 : MSG_DONTWAIT);

		if (got < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) {
				lost_reports++;
				continue;
			}
			perror("recv");
			return -1;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)rbuf; NLMSG_OK(h, (size_t)got); h = NLMSG_NEXT(h, got)) {
			if (h->nlmsg_type != NLMSG_ERROR)
				continue;
			int err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;

			if (h->nlmsg_seq == final_seq)
				final_seen = 1;
			if (err > 0)
				errors[err < MAX_ERRNO ? err : 0]++;
		}
		if (wait && final_seen)
			wait = 0;
	}
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* CPU seconds of this process, user and system: the kernel creates the entries in sendmsg, on our time. */
static double cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s COUNT [OFFSET] [PER_SEND] [TIMEOUT_S]\n", argv[0]);
		return 2;
	}
	uint64_t count = strtoull(argv[1], NULL, 10);
	uint64_t offset = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
	unsigned per_send = argc > 3 ? strtoul(argv[3], NULL, 10) : 1024;
	uint32_t timeout_s = argc > 4 ? strtoul(argv[4], NULL, 10) : 3600;
	int one = 1, bufsize = SOCK_BUF;
	size_t rlen = 1 << 20;
	char *buf = malloc((size_t)per_send * MSG_MAX), *rbuf = malloc(rlen);
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };

	if (!count || !per_send || !buf || !rbuf)
		return 2;
	/* Room for a whole send and for every error it may cause; errors carry only the header. */
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof(bufsize)) ||
	    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof(bufsize)) ||
	    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one))) {
		perror("socket");
		return 1;
	}

	uint32_t seq = (uint32_t)time(NULL);
	uint64_t sends = 0;
	double started = now(), cpu_started = cpu();

	for (uint64_t done = 0; done < count; sends++) {
		size_t len = 0;

		for (unsigned k = 0; k < per_send && done < count; k++, done++) {
			int last = done + 1 == count;

			if (last)
				final_seq = seq;
			len += encode(buf + len, offset + done, seq++, last, timeout_s);
		}
		struct iovec iov = { .iov_base = buf, .iov_len = len };
		struct msghdr msg = { .msg_name = &kernel, .msg_namelen = sizeof(kernel), .msg_iov = &iov, .msg_iovlen = 1 };

		while (sendmsg(fd, &msg, 0) < 0) {
			if (errno == EINTR)
				continue;
			perror("sendmsg");
			return 1;
		}
		if (drain(fd, rbuf, rlen, 0))
			return 1;
	}
	if (drain(fd, rbuf, rlen, 1))
		return 1;
	double seconds = now() - started, cpu_s = cpu() - cpu_started;

	uint64_t failed = 0;
	printf("{\"n\": %llu, \"per_send\": %u, \"sends\": %llu, \"seconds\": %.6f, \"cpu_s\": %.6f, "
	       "\"lost_reports\": %llu, \"errors\": {", (unsigned long long)count, per_send,
	       (unsigned long long)sends, seconds, cpu_s, (unsigned long long)lost_reports);
	const char *sep = "";
	for (int e = 0; e < MAX_ERRNO; e++) {
		if (!errors[e])
			continue;
		failed += errors[e];
		printf("%s\"%d\": %llu", sep, e, (unsigned long long)errors[e]);
		sep = ", ";
	}
	printf("}, \"applied\": %llu}\n", (unsigned long long)(count - failed));
	return 0;
}
