/* Batched gratuitous ARP / unsolicited neighbour advertisement sender.
 *
 * Shared by garp.c and by the cffi cdef in native/build.py (which drops the
 * preprocessor lines other than integer #defines): edit the structs here only.
 */
#ifndef DPAGENT_GARP_H
#define DPAGENT_GARP_H

#include <stdint.h>

/* Frames prepared and handed to one sendmmsg() call (fallback path). */
#define GARP_BATCH 1024
/* Slots of the PACKET_TX_RING; an unpaced round flushes this many per send(). */
#define GARP_RING_FRAMES 4096
/* garp_sender_new() flags: never set up the TX ring, always use sendmmsg(). */
#define GARP_F_NO_RING 1
/* Per-errno error counters; errno values at or above this land in slot 0. */
#define GARP_ERRNO_SLOTS 256
/* Consecutive ENOBUFS/EAGAIN retries of one batch before the round gives up. */
#define GARP_MAX_RETRIES 16

/* What one round sends for every address. */
#define GARP_KIND_ARP_REQUEST 1
#define GARP_KIND_ARP_REPLY 2
#define GARP_KIND_NA 3

/* Interface state as seen from the sender's socket (and network namespace). */
struct garp_ifinfo {
	int32_t ifindex;
	uint32_t flags;
	uint8_t mac[6];
	uint8_t up;
	uint8_t pad;
};

/* One round: the interface, the frame kind and the pacing cap. */
struct garp_params {
	int32_t ifindex;
	uint32_t pps;
	uint8_t mac[6];
	uint8_t kind;
	uint8_t na_router;
};

/* What one round did; status is 0 or the -errno that ended it early. */
struct garp_result {
	uint64_t frames_sent;
	uint64_t send_errors;
	uint64_t duration_ns;
	int32_t status;
	int32_t cancelled;
	uint32_t errors[GARP_ERRNO_SLOTS];
};

struct garp_sender;

struct garp_sender *garp_sender_new(uint32_t flags, int32_t *err);
void garp_sender_free(struct garp_sender *s);
int garp_sender_uses_ring(const struct garp_sender *s);
int garp_ifinfo(struct garp_sender *s, const char *ifname, struct garp_ifinfo *out);
int garp_send(struct garp_sender *s, const struct garp_params *p,
	      const uint8_t *addrs, uint32_t count,
	      const volatile int32_t *cancel, struct garp_result *res);

#endif
