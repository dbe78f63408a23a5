// SPDX-License-Identifier: GPL-2.0-or-later
/* Batched gratuitous ARP / unsolicited neighbour advertisement sender.
 *
 * One AF_PACKET socket per interface. A round builds one frame template,
 * then for every batch writes it with only the bytes that change per
 * address patched (and the ICMPv6 checksum, incrementally) and hands the
 * whole batch to the kernel at once. The cancel flag is polled before every
 * batch and while pacing, so a node leaving MASTER stops at once. Errors
 * are counted per errno, never fatal to the caller.
 *
 * The batch goes through a PACKET_TX_RING (TPACKET_V2) when the kernel
 * allows it: frames are written into the mmap'ed ring and one send()
 * flushes them all, with no msghdr/iovec copy-in per frame. Every slot
 * starts with a virtio_net_hdr (PACKET_VNET_HDR) whose hdr_len covers the
 * whole frame, so the kernel copies it into a linear skb instead of
 * attaching the ring page as a fragment: a fragment of user memory must be
 * copied again (skb_copy_ubufs, a page per frame) as soon as the frame
 * crosses into another namespace or is looped back to a packet tap.
 * Without a ring, sendmmsg() over GARP_BATCH prebuilt messages is used.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "garp.h"

/* Largest frame: Ethernet 14 + IPv6 40 + NA 24 + link-layer option 8. */
#define GARP_FRAME_MAX 86
/* First flush of an unpaced round; each later one doubles up to a full batch. */
#define GARP_FIRST_FLUSH 64
#define ARP_FRAME_LEN 42
#define NA_FRAME_LEN 86

/* Byte offsets inside the frames. */
#define ARP_OP 20
#define ARP_SHA 22
#define ARP_SPA 28
#define ARP_THA 32
#define ARP_TPA 38
#define IP6_SRC 22
#define IP6_DST 38
#define NA_CSUM 56
#define NA_FLAGS 58
#define NA_TARGET 62

#define NA_FLAG_ROUTER 0x80
#define NA_FLAG_OVERRIDE 0x20

/* Ask for this much socket send buffer so batches never wait on it. */
#define GARP_SNDBUF (8 << 20)
/* Longest single sleep while pacing, so cancel is seen within it. */
#define GARP_SLEEP_SLICE_NS 5000000ULL
/* First ENOBUFS back-off; doubled per retry up to 64 times this. */
#define GARP_BACKOFF_NS 50000ULL

/* TX ring geometry: TPACKET_V2 header, virtio_net_hdr, then the frame. */
#define GARP_RING_FRAME 128
#define GARP_RING_BLOCK 65536
#define GARP_RING_DATA (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))
#define GARP_VNET_LEN sizeof(struct virtio_net_hdr)
/* How long a slot may stay with the kernel (frame still queued) before the round gives up. */
#define GARP_SLOT_WAIT_NS 1000000000ULL
/* Poll interval while waiting for a slot. */
#define GARP_SLOT_POLL_NS 20000ULL

_Static_assert(GARP_RING_DATA + GARP_VNET_LEN + GARP_FRAME_MAX <= GARP_RING_FRAME,
	       "a ring slot holds header, vnet header and the largest frame");
_Static_assert(GARP_RING_FRAMES % (GARP_RING_BLOCK / GARP_RING_FRAME) == 0,
	       "the ring is whole blocks");

/* The fixed part of one round: frame kind, length and template. */
struct garp_round {
	const uint8_t *tmpl;
	uint64_t base;
	unsigned int flen;
	unsigned int alen;
	uint8_t kind;
};

struct garp_sender {
	int fd;
	int bound_ifindex;
	/* TX ring, or NULL when sending with sendmmsg(). */
	uint8_t *ring;
	/* Next slot to fill; equals the kernel's send head whenever no slot is pending. */
	unsigned int head;
	struct iovec iov[GARP_BATCH];
	struct mmsghdr msgs[GARP_BATCH];
	uint8_t frames[GARP_BATCH][GARP_FRAME_MAX];
};

static const uint8_t bcast_mac[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static const uint8_t allnodes_mac[6] = { 0x33, 0x33, 0x00, 0x00, 0x00, 0x01 };
static const uint8_t allnodes_ip6[16] = { 0xff, 0x02, [15] = 0x01 };

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { .tv_sec = ns / 1000000000ULL, .tv_nsec = ns % 1000000000ULL };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static int is_cancelled(const volatile int32_t *cancel)
{
	return cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED);
}

/* Ones' complement sum of native 16-bit words; byte order cancels out (RFC 1071). */
static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t len)
{
	uint16_t w;

	for (; len >= 2; p += 2, len -= 2) {
		memcpy(&w, p, 2);
		sum += w;
	}
	return sum;
}

static uint16_t csum_fold(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* A send-only packet socket with a big send buffer, or -errno. */
static int open_socket(void)
{
	int sndbuf = GARP_SNDBUF;
	int fd;

	/* Protocol 0: this socket sends only and never queues received frames. */
	fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A big send buffer; FORCE needs CAP_NET_ADMIN, plain SO_SNDBUF is capped by wmem_max. */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)))
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	return fd;
}

/* Sets up and maps the TX ring; returns 0 or -errno (the socket is then unusable for sendmmsg). */
static int ring_setup(struct garp_sender *s)
{
	struct tpacket_req req = {
		.tp_block_size = GARP_RING_BLOCK,
		.tp_block_nr = GARP_RING_FRAMES / (GARP_RING_BLOCK / GARP_RING_FRAME),
		.tp_frame_size = GARP_RING_FRAME,
		.tp_frame_nr = GARP_RING_FRAMES,
	};
	int one = 1, version = TPACKET_V2;
	void *ring;

	/* A vnet header per slot lets the frame be copied whole into the skb (see top). */
	if (setsockopt(s->fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)))
		return -errno;
	if (setsockopt(s->fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)))
		return -errno;
	/* A malformed slot (longer than the MTU) is skipped rather than blocking the ring head. */
	if (setsockopt(s->fd, SOL_PACKET, PACKET_LOSS, &one, sizeof(one)))
		return -errno;
	if (setsockopt(s->fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)))
		return -errno;
	ring = mmap(NULL, (size_t)GARP_RING_FRAMES * GARP_RING_FRAME, PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, s->fd, 0);
	if (ring == MAP_FAILED)
		return -errno;
	s->ring = ring;
	return 0;
}

struct garp_sender *garp_sender_new(uint32_t flags, int32_t *err)
{
	struct garp_sender *s;
	int i;

	s = calloc(1, sizeof(*s));
	if (!s) {
		*err = -ENOMEM;
		return NULL;
	}
	s->fd = open_socket();
	if (s->fd < 0) {
		*err = s->fd;
		free(s);
		return NULL;
	}
	/* The ring if possible; a socket that refused it half way is replaced by a fresh one. */
	if (!(flags & GARP_F_NO_RING) && ring_setup(s)) {
		close(s->fd);
		s->fd = open_socket();
		if (s->fd < 0) {
			*err = s->fd;
			free(s);
			return NULL;
		}
	}
	/* Wire every message to its frame slot once; only lengths change per round. */
	for (i = 0; i < GARP_BATCH; i++) {
		s->iov[i].iov_base = s->frames[i];
		s->msgs[i].msg_hdr.msg_iov = &s->iov[i];
		s->msgs[i].msg_hdr.msg_iovlen = 1;
	}
	*err = 0;
	return s;
}

void garp_sender_free(struct garp_sender *s)
{
	if (!s)
		return;
	if (s->ring)
		munmap(s->ring, (size_t)GARP_RING_FRAMES * GARP_RING_FRAME);
	close(s->fd);
	free(s);
}

int garp_sender_uses_ring(const struct garp_sender *s)
{
	return s->ring != NULL;
}

int garp_ifinfo(struct garp_sender *s, const char *ifname, struct garp_ifinfo *out)
{
	struct ifreq ifr;

	memset(out, 0, sizeof(*out));
	if (strlen(ifname) >= IFNAMSIZ)
		return -EINVAL;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, ifname);
	/* The socket's network namespace decides which interface the name means. */
	if (ioctl(s->fd, SIOCGIFINDEX, &ifr))
		return -errno;
	out->ifindex = ifr.ifr_ifindex;
	if (ioctl(s->fd, SIOCGIFHWADDR, &ifr))
		return -errno;
	memcpy(out->mac, ifr.ifr_hwaddr.sa_data, 6);
	if (ioctl(s->fd, SIOCGIFFLAGS, &ifr))
		return -errno;
	out->flags = (uint16_t)ifr.ifr_flags;
	out->up = !!(ifr.ifr_flags & IFF_UP);
	return 0;
}

static void build_arp(uint8_t *f, const struct garp_params *p)
{
	static const uint8_t hdr[8] = { 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01 };

	memset(f, 0, ARP_FRAME_LEN);
	/* Ethernet: broadcast from us, ARP. */
	memcpy(f, bcast_mac, 6);
	memcpy(f + 6, p->mac, 6);
	f[12] = 0x08;
	f[13] = 0x06;
	/* ARP: Ethernet/IPv4, request; sender is us for every address. */
	memcpy(f + 14, hdr, sizeof(hdr));
	memcpy(f + ARP_SHA, p->mac, 6);
	/* Reply form: broadcast target MAC, which Linux treats as gratuitous (arp_is_garp). */
	if (p->kind == GARP_KIND_ARP_REPLY) {
		f[ARP_OP + 1] = 0x02;
		memcpy(f + ARP_THA, bcast_mac, 6);
	}
}

/* Builds the NA template and returns the checksum sum of its constant part. */
static uint64_t build_na(uint8_t *f, const struct garp_params *p)
{
	uint8_t pseudo[8] = { 0, 0, 0, 32, 0, 0, 0, 58 };
	uint64_t sum;

	memset(f, 0, NA_FRAME_LEN);
	/* Ethernet: all-nodes multicast from us, IPv6. */
	memcpy(f, allnodes_mac, 6);
	memcpy(f + 6, p->mac, 6);
	f[12] = 0x86;
	f[13] = 0xdd;
	/* IPv6: payload 32, ICMPv6, hop limit 255 (RFC 4861 7.1.2), to ff02::1. */
	f[14] = 0x60;
	f[19] = 32;
	f[20] = 58;
	f[21] = 255;
	memcpy(f + IP6_DST, allnodes_ip6, 16);
	/* ICMPv6 NA: unsolicited, override; router flag as configured. */
	f[54] = 136;
	f[NA_FLAGS] = NA_FLAG_OVERRIDE | (p->na_router ? NA_FLAG_ROUTER : 0);
	/* Target link-layer address option. */
	f[78] = 2;
	f[79] = 1;
	memcpy(f + 80, p->mac, 6);
	/* Checksum of everything but source and target, which change per address. */
	sum = csum_add(0, allnodes_ip6, 16);
	sum = csum_add(sum, pseudo, sizeof(pseudo));
	return csum_add(sum, f + 54, 32);
}

static void patch_arp(uint8_t *f, const uint8_t *addr)
{
	memcpy(f + ARP_SPA, addr, 4);
	memcpy(f + ARP_TPA, addr, 4);
}

static void patch_na(uint8_t *f, const uint8_t *addr, uint64_t base)
{
	uint16_t csum;

	memcpy(f + IP6_SRC, addr, 16);
	memcpy(f + NA_TARGET, addr, 16);
	/* The address appears twice: as IPv6 source (pseudo header) and as target. */
	csum = csum_fold(base + 2 * csum_add(0, addr, 16));
	memcpy(f + NA_CSUM, &csum, 2);
}

static void count_error(struct garp_result *res, int e)
{
	res->send_errors++;
	res->errors[e > 0 && e < GARP_ERRNO_SLOTS ? e : 0]++;
}

/* Binds to the interface, protocol 0 so still send-only: about 6% faster than an address per message. */
static int bind_to(struct garp_sender *s, int ifindex)
{
	struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_ifindex = ifindex };

	if (s->bound_ifindex == ifindex)
		return 0;
	if (bind(s->fd, (struct sockaddr *)&sll, sizeof(sll)))
		return -errno;
	s->bound_ifindex = ifindex;
	return 0;
}

static int is_fatal(int e)
{
	return e == ENETDOWN || e == ENXIO || e == ENODEV || e == EBADF || e == ENOTSOCK;
}

/* Sends msgs[0..n); returns 0 or the -errno that must end the round. */
static int send_batch(struct garp_sender *s, unsigned int n, const volatile int32_t *cancel,
		      struct garp_result *res)
{
	unsigned int off = 0, retries = 0;
	int r, e;

	while (off < n) {
		r = sendmmsg(s->fd, s->msgs + off, n - off, 0);
		if (r > 0) {
			off += r;
			res->frames_sent += r;
			retries = 0;
			continue;
		}
		e = errno;
		if (e == EINTR)
			continue;
		count_error(res, e);
		if (is_fatal(e))
			return -e;
		/* A full queue: back off briefly, retry the rest a bounded number of times. */
		if (e == ENOBUFS || e == EAGAIN) {
			if (++retries > GARP_MAX_RETRIES)
				return -e;
			if (is_cancelled(cancel))
				return 0;
			sleep_ns(GARP_BACKOFF_NS << (retries < 6 ? retries : 6));
			continue;
		}
		/* Anything else is about this one frame: skip it. */
		off++;
	}
	return 0;
}

static volatile struct tpacket2_hdr *ring_slot(struct garp_sender *s, unsigned int i)
{
	return (volatile struct tpacket2_hdr *)(s->ring + (size_t)(i % GARP_RING_FRAMES) * GARP_RING_FRAME);
}

static uint32_t slot_status(volatile struct tpacket2_hdr *h)
{
	return __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
}

/* Waits until the kernel hands the slot back; 1 if cancelled, -ETIMEDOUT if it never does. */
static int wait_slot(volatile struct tpacket2_hdr *h, const volatile int32_t *cancel)
{
	uint64_t deadline = 0;

	while (slot_status(h) != TP_STATUS_AVAILABLE) {
		if (is_cancelled(cancel))
			return 1;
		if (!deadline)
			deadline = now_ns() + GARP_SLOT_WAIT_NS;
		else if (now_ns() > deadline)
			return -ETIMEDOUT;
		sleep_ns(GARP_SLOT_POLL_NS);
	}
	return 0;
}

/* Writes one frame into a free slot and passes the slot to the kernel. */
static void ring_fill(struct garp_sender *s, unsigned int i, const struct garp_round *r, const uint8_t *addr)
{
	volatile struct tpacket2_hdr *h = ring_slot(s, i);
	uint8_t *data = (uint8_t *)h + GARP_RING_DATA;
	struct virtio_net_hdr vnet = { .hdr_len = r->flen };

	/* hdr_len = the whole frame: copied into the skb, never referenced in the ring. */
	memcpy(data, &vnet, sizeof(vnet));
	data += GARP_VNET_LEN;
	memcpy(data, r->tmpl, r->flen);
	if (r->kind == GARP_KIND_NA)
		patch_na(data, addr, r->base);
	else
		patch_arp(data, addr);
	h->tp_len = GARP_VNET_LEN + r->flen;
	__atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
}

/* Moves head over the slots the kernel has taken (sent or skipped), at most n; returns how many. */
static unsigned int ring_advance(struct garp_sender *s, unsigned int n)
{
	unsigned int k;

	for (k = 0; k < n && slot_status(ring_slot(s, s->head)) != TP_STATUS_SEND_REQUEST; k++)
		s->head = (s->head + 1) % GARP_RING_FRAMES;
	return k;
}

/* Takes back slots the kernel has not sent, so the next round starts at the kernel's head. */
static void ring_abandon(struct garp_sender *s, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		__atomic_store_n(&ring_slot(s, s->head + i)->tp_status, TP_STATUS_AVAILABLE, __ATOMIC_RELEASE);
}

/* Flushes n filled slots with send(); returns 0 or the -errno that must end the round. */
static int ring_flush(struct garp_sender *s, const struct garp_round *r, unsigned int n,
		      const volatile int32_t *cancel, struct garp_result *res)
{
	unsigned int left = n, retries = 0, k, skipped;
	ssize_t sent;
	int e;

	while (left) {
		/* One call sends every queued slot; MSG_DONTWAIT: never wait for the device to free them. */
		sent = send(s->fd, NULL, 0, MSG_DONTWAIT);
		e = sent < 0 ? errno : 0;
		k = ring_advance(s, left);
		left -= k;
		/* On success the kernel returns the bytes of the frames it sent; slots it skipped are the rest. */
		skipped = sent >= 0 && k * r->flen > sent ? (k * r->flen - sent) / r->flen : 0;
		res->frames_sent += k - skipped;
		while (skipped--)
			count_error(res, EMSGSIZE);
		if (k)
			retries = 0;
		if (!e && k)
			continue;
		/* Success without progress: the ring is out of step with the kernel. */
		if (!e)
			e = EIO;
		if (e == EINTR)
			continue;
		count_error(res, e);
		if (is_fatal(e) || e == EIO)
			goto abandon;
		/* A full queue (or any other refusal, since a slot cannot be skipped): back off, retry a bounded number of times. */
		if (++retries > GARP_MAX_RETRIES)
			goto abandon;
		if (is_cancelled(cancel)) {
			e = 0;
			goto abandon;
		}
		sleep_ns(GARP_BACKOFF_NS << (retries < 6 ? retries : 6));
	}
	return 0;
abandon:
	ring_abandon(s, left);
	return -e;
}

/* Writes n frames into the ring and flushes them; returns 0 or the -errno that must end the round. */
static int ring_batch(struct garp_sender *s, const struct garp_round *r, const uint8_t *addrs,
		      unsigned int n, const volatile int32_t *cancel, struct garp_result *res)
{
	unsigned int i;
	int w;

	for (i = 0; i < n; i++) {
		/* A slot may still be with the kernel if the device has not freed its frame yet. */
		w = wait_slot(ring_slot(s, s->head + i), cancel);
		if (w) {
			if (w < 0)
				count_error(res, -w);
			ring_abandon(s, i);
			return w < 0 ? w : 0;
		}
		ring_fill(s, s->head + i, r, addrs + (size_t)i * r->alen);
	}
	return ring_flush(s, r, n, cancel, res);
}

/* Sleeps until the deadline in slices; returns 1 if cancelled meanwhile. */
static int wait_until(uint64_t deadline, const volatile int32_t *cancel)
{
	uint64_t t;

	for (t = now_ns(); t < deadline; t = now_ns()) {
		if (is_cancelled(cancel))
			return 1;
		sleep_ns(deadline - t < GARP_SLEEP_SLICE_NS ? deadline - t : GARP_SLEEP_SLICE_NS);
	}
	return 0;
}

int garp_send(struct garp_sender *s, const struct garp_params *p,
	      const uint8_t *addrs, uint32_t count,
	      const volatile int32_t *cancel, struct garp_result *res)
{
	struct garp_round r = { .tmpl = s->frames[0], .kind = p->kind };
	unsigned int batch, burst, flush, n, i;
	uint64_t t0;
	uint32_t done = 0;
	int status = 0;

	memset(res, 0, sizeof(*res));
	t0 = now_ns();
	if (p->kind < GARP_KIND_ARP_REQUEST || p->kind > GARP_KIND_NA) {
		res->status = -EINVAL;
		return res->status;
	}
	r.alen = p->kind == GARP_KIND_NA ? 16 : 4;
	r.flen = p->kind == GARP_KIND_NA ? NA_FRAME_LEN : ARP_FRAME_LEN;
	/* Every message goes to the bound interface; the kernel reads the EtherType from the frame. */
	status = bind_to(s, p->ifindex);
	if (status) {
		count_error(res, -status);
		goto out;
	}
	/* One template; the sendmmsg path copies it into every message slot, so a batch patches only addresses. */
	if (p->kind == GARP_KIND_NA)
		r.base = build_na(s->frames[0], p);
	else
		build_arp(s->frames[0], p);
	for (i = 0; !s->ring && i < GARP_BATCH; i++) {
		if (i)
			memcpy(s->frames[i], s->frames[0], r.flen);
		s->iov[i].iov_len = r.flen;
	}
	/* Token bucket: about 1 ms of tokens per burst, at most one batch. */
	batch = s->ring ? GARP_RING_FRAMES : GARP_BATCH;
	burst = batch;
	if (p->pps) {
		burst = p->pps / 1000;
		burst = burst < 1 ? 1 : burst > batch ? batch : burst;
	}
	/* Unpaced, start small: the first neighbours hear of the move before a
	 * whole ring's worth of frames is queued ahead of their update. */
	n = p->pps ? burst : GARP_FIRST_FLUSH;
	flush = n < burst ? n : burst;
	while (done < count) {
		if (is_cancelled(cancel)) {
			res->cancelled = 1;
			break;
		}
		/* Frame number `done` may leave at t0 + done / pps. */
		if (p->pps && wait_until(t0 + (uint64_t)done * 1000000000ULL / p->pps, cancel)) {
			res->cancelled = 1;
			break;
		}
		n = count - done < flush ? count - done : flush;
		if (s->ring) {
			status = ring_batch(s, &r, addrs + (size_t)done * r.alen, n, cancel, res);
		} else {
			for (i = 0; i < n; i++) {
				const uint8_t *a = addrs + (size_t)(done + i) * r.alen;

				if (p->kind == GARP_KIND_NA)
					patch_na(s->frames[i], a, r.base);
				else
					patch_arp(s->frames[i], a);
			}
			status = send_batch(s, n, cancel, res);
		}
		if (status)
			break;
		done += n;
		flush = flush * 2 < burst ? flush * 2 : burst;
	}
out:
	/* After a fatal error the interface may be re-created under the same index: bind again next time. */
	if (status)
		s->bound_ifindex = 0;
	res->status = status;
	res->duration_ns = now_ns() - t0;
	return status;
}
