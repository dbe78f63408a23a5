/* The packet generator of bench/nft_scale.py's nft_filter_pps: 60-byte IPv4/UDP
 * frames out of one interface through an AF_PACKET socket (qdisc bypassed),
 * sendmmsg batches of BATCH, for a fixed time, from one pinned CPU.
 *
 * Destinations: FRAMES frames built up front, each to an address drawn uniformly
 * from [base, base + count) by a seeded xorshift, sent round and round.
 *
 * usage: pktgen IFNAME SRC_MAC DST_MAC SRC_IP BASE_IP COUNT SECONDS CPU
 *        (CPU < 0: not pinned); it stops after SECONDS or at SIGTERM/SIGINT,
 *        whichever comes first, and then prints
 *        sent <frames> seconds <elapsed> errors <failed sendmmsg calls>
 *
 * Built by the bench: cc -O2 -o pktgen pktgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_LEN 60
#define FRAMES 8192
#define BATCH 256

static unsigned char frames[FRAMES][FRAME_LEN];
static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static int parse_mac(const char *text, unsigned char *mac) {
    unsigned v[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
        return -1;
    for (int i = 0; i < 6; i++)
        mac[i] = (unsigned char)v[i];
    return 0;
}

static uint16_t ip_checksum(const unsigned char *header) {
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += (uint32_t)(header[i] << 8 | header[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s IFNAME SRC_MAC DST_MAC SRC_IP BASE_IP COUNT SECONDS CPU\n", argv[0]);
        return 2;
    }
    unsigned char src_mac[6], dst_mac[6];
    struct in_addr src_ip, base_ip;
    if (parse_mac(argv[2], src_mac) || parse_mac(argv[3], dst_mac) || !inet_aton(argv[4], &src_ip) ||
        !inet_aton(argv[5], &base_ip)) {
        fprintf(stderr, "bad MAC or IPv4 address\n");
        return 2;
    }
    uint32_t count = (uint32_t)strtoul(argv[6], NULL, 10);
    double seconds = atof(argv[7]);
    int cpu = atoi(argv[8]);
    if (count == 0 || seconds <= 0) {
        fprintf(stderr, "COUNT and SECONDS must be positive\n");
        return 2;
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set)) {
            perror("sched_setaffinity");
            return 1;
        }
    }

    uint64_t state = 0x9e3779b97f4a7c15ULL; /* fixed seed: the same destinations every run */
    uint32_t base = ntohl(base_ip.s_addr);
    for (int f = 0; f < FRAMES; f++) {
        unsigned char *p = frames[f];
        memset(p, 0, FRAME_LEN);
        memcpy(p, dst_mac, 6);
        memcpy(p + 6, src_mac, 6);
        p[12] = 0x08; /* ETH_P_IP */
        p[13] = 0x00;
        unsigned char *ip = p + 14;
        ip[0] = 0x45;
        ip[2] = 0;
        ip[3] = FRAME_LEN - 14; /* total length 46 */
        ip[8] = 64;             /* TTL */
        ip[9] = 17;             /* UDP */
        memcpy(ip + 12, &src_ip.s_addr, 4);
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        uint32_t dst = htonl(base + (uint32_t)(state % count));
        memcpy(ip + 16, &dst, 4);
        uint16_t sum = ip_checksum(ip);
        ip[10] = (unsigned char)(sum >> 8);
        ip[11] = (unsigned char)sum;
        unsigned char *udp = ip + 20;
        udp[0] = 0x30; /* source port 12345 */
        udp[1] = 0x39;
        udp[2] = 0x00; /* destination port 9 (discard) */
        udp[3] = 0x09;
        udp[5] = FRAME_LEN - 14 - 20; /* UDP length 26, checksum 0 (none) */
    }

    int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: sends only, receives nothing */
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one))
        perror("PACKET_QDISC_BYPASS (going on through the qdisc)");
    struct sockaddr_ll addr = {0};
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = htons(ETH_P_IP);
    addr.sll_ifindex = (int)if_nametoindex(argv[1]);
    if (!addr.sll_ifindex) {
        perror("if_nametoindex");
        return 1;
    }
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr)) {
        perror("bind");
        return 1;
    }

    struct sigaction action = {0};
    action.sa_handler = on_signal; /* no SA_RESTART: a blocked send returns at once */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);

    static struct mmsghdr msgs[BATCH];
    static struct iovec iovs[BATCH];
    unsigned long long sent = 0, errors = 0;
    unsigned next = 0;
    double start = now(), elapsed = 0;
    while (!stop && elapsed < seconds) {
        for (int i = 0; i < BATCH; i++) {
            iovs[i].iov_base = frames[(next + i) % FRAMES];
            iovs[i].iov_len = FRAME_LEN;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int done = sendmmsg(fd, msgs, BATCH, 0);
        if (done > 0) {
            sent += (unsigned long long)done;
            next = (next + (unsigned)done) % FRAMES;
        } else if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) {
            errors++;
        } else {
            perror("sendmmsg");
            return 1;
        }
        elapsed = now() - start;
    }
    printf("sent %llu seconds %.6f errors %llu\n", sent, elapsed, errors);
    return 0;
}
