/*
 * garbage_frames: a static Linux program for the e2e tests' guests (not a CPL3 test guest): a
 * hostile guest on its NIC. Sends COUNT frames out of IFACE through a raw packet socket, a mix
 * of what no honest stack sends, most of them addressed to the gateway (passt) so they cross the
 * VMM's filter into the backend:
 *   random bytes; IPv4 with random header fields (IHL, lengths, protocol); TCP to the gateway
 *   with random flags, ports and data offsets; fragments with random offsets; UDP garbage to the
 *   DNS port; ARP with random opcodes and address lengths; IPv6 and unknown ethertypes; frames
 *   at and past the MTU.
 *   garbage_frames IFACE COUNT SEED
 * Prints "sent N refused M" (refused: the guest kernel's own send error, e.g. past the MTU).
 */
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netpacket/packet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define GATEWAY "10.0.2.2"
#define MAX_FRAME 65550

static uint64_t rng;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

static void fill(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rnd();
}

/* The gateway's MAC from the ARP table (the guest has talked to it), else broadcast. */
static void gateway_mac(uint8_t mac[6])
{
    memset(mac, 0xff, 6);
    FILE *f = fopen("/proc/net/arp", "r");
    char line[256], ip[64], hw[64];
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        unsigned m[6];
        if (sscanf(line, "%63s %*s %*s %63s", ip, hw) == 2 && !strcmp(ip, GATEWAY) &&
            sscanf(hw, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6) {
            for (int i = 0; i < 6; i++)
                mac[i] = (uint8_t)m[i];
            break;
        }
    }
    fclose(f);
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* An IPv4 header at p (20 bytes) to the gateway, with `proto`; fields as given. */
static void ipv4(uint8_t *p, uint8_t ihl, uint16_t total, uint8_t proto, uint16_t frag)
{
    p[0] = (uint8_t)(0x40 | (ihl & 15));
    p[1] = 0;
    put16(p + 2, total);
    put16(p + 4, (uint16_t)rnd());
    put16(p + 6, frag);
    p[8] = 64;
    p[9] = proto;
    put16(p + 10, (uint16_t)rnd());             /* a wrong checksum, mostly */
    inet_pton(AF_INET, "10.0.2.15", p + 12);
    inet_pton(AF_INET, GATEWAY, p + 16);
}

/* One hostile frame of kind k into f (Ethernet header already there); returns its length. */
static size_t frame(uint8_t *f, int k, size_t mtu)
{
    uint8_t *l3 = f + 14;
    size_t len;
    switch (k) {
    case 0:                                      /* noise with any ethertype */
        len = 14 + rnd() % 1500;
        fill(f + 12, len - 12);
        return len;
    case 1:                                      /* IPv4, every header field random */
        put16(f + 12, 0x0800);
        len = 14 + rnd() % 80;
        fill(l3, len - 14);
        return len;
    case 2: {                                    /* TCP to the gateway, random flags/offsets */
        put16(f + 12, 0x0800);
        size_t tcp = 20 + rnd() % 60;
        len = 14 + 20 + tcp;
        ipv4(l3, 5, (uint16_t)(rnd() % 3 ? 20 + tcp : rnd()), 6, 0);
        fill(l3 + 20, tcp);
        l3[20 + 12] = (uint8_t)(rnd() & 0xf0);  /* data offset 0..15 words */
        return len;
    }
    case 3: {                                    /* fragments, overlapping and past 64 KiB */
        put16(f + 12, 0x0800);
        size_t body = 8 + rnd() % 1400;
        len = 14 + 20 + body;
        ipv4(l3, 5, (uint16_t)(20 + body), rnd() % 2 ? 17 : 6,
             (uint16_t)((rnd() % 2 ? 0x2000 : 0) | (rnd() & 0x1fff)));
        fill(l3 + 20, body);
        return len;
    }
    case 4: {                                    /* UDP garbage to the DNS port */
        put16(f + 12, 0x0800);
        size_t body = rnd() % 600;
        len = 14 + 20 + 8 + body;
        ipv4(l3, 5, (uint16_t)(28 + body), 17, 0);
        put16(l3 + 20, (uint16_t)(1024 + rnd() % 60000));
        put16(l3 + 22, 53);
        put16(l3 + 24, (uint16_t)(rnd() % 3 ? 8 + body : rnd()));
        put16(l3 + 26, 0);
        fill(l3 + 28, body);
        return len;
    }
    case 5:                                      /* ARP, random opcodes and lengths */
        put16(f + 12, 0x0806);
        len = 14 + rnd() % 60;
        fill(l3, len - 14);
        if (len >= 14 + 8 && rnd() % 2) {
            put16(l3, 1);
            put16(l3 + 2, 0x0800);
        }
        return len;
    case 6:                                      /* IPv6 and friends */
        put16(f + 12, rnd() % 2 ? 0x86dd : (uint16_t)rnd());
        len = 14 + rnd() % 400;
        fill(l3, len - 14);
        return len;
    default: {                                   /* at and past the MTU */
        put16(f + 12, 0x0800);
        len = 14 + mtu - 64 + rnd() % 128;       /* some over: the kernel refuses those */
        if (len > MAX_FRAME)
            len = MAX_FRAME;
        ipv4(l3, 5, (uint16_t)(len - 14), 17, 0);
        fill(l3 + 20, len - 34);
        return len;
    }
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: garbage_frames IFACE COUNT SEED\n");
        return 2;
    }
    unsigned count = (unsigned)strtoul(argv[2], NULL, 0);
    rng = strtoull(argv[3], NULL, 0) | 1;
    int s = socket(AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */));
    if (s < 0) {
        perror("packet socket");
        return 1;
    }
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", argv[1]);
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0 || ioctl(s, SIOCGIFINDEX, &ifr) < 0) {
        perror(argv[1]);
        return 1;
    }
    int ifindex = ifr.ifr_ifindex;
    uint8_t own[6];
    ioctl(s, SIOCGIFHWADDR, &ifr);
    memcpy(own, ifr.ifr_hwaddr.sa_data, 6);
    ioctl(s, SIOCGIFMTU, &ifr);
    size_t mtu = ifr.ifr_mtu > 0 ? (size_t)ifr.ifr_mtu : 1500;
    uint8_t gw[6];
    gateway_mac(gw);
    static uint8_t f[MAX_FRAME];
    struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = 6};
    unsigned sent = 0, refused = 0;
    for (unsigned i = 0; i < count; i++) {
        memcpy(f, rnd() % 8 ? gw : (uint8_t[6]){0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 6);
        memcpy(f + 6, own, 6);
        size_t len = frame(f, (int)(i % 8), mtu);
        memcpy(to.sll_addr, f, 6);
        if (sendto(s, f, len, 0, (struct sockaddr *)&to, sizeof(to)) == (ssize_t)len)
            sent++;
        else
            refused++;
        if (i % 64 == 63)
            usleep(1000);                        /* let the tx ring drain: we want delivery */
    }
    printf("sent %u refused %u\n", sent, refused);
    return 0;
}
