/*
 * Unit tests of virtio-net and its egress filter on synthetic rings, with a real Unix stream
 * socket in a scratch directory (argv[1]) as the backend: length-prefixed frames both ways,
 * backpressure both ways, the link going down when the backend ends or breaks the framing, the
 * filter's rules (first match, ports, fragments, ARP/DHCP, non-IPv4) and the reset it answers a
 * refused SYN with, hostile descriptors, and a state load into a device with another MAC and
 * another backend. Prints "N passed, N failed" last.
 */
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "test_virtio.h"
#include "devices/net_filter.h"

#define RXBUF(i) (TV_DATA + 0x1000ULL * (i))          /* 16 rx buffers of 4 KiB */
#define TXBUF(i) (TV_DATA + 0x10000ULL + 0x10000ULL * (i))   /* 16 tx slots of 64 KiB */
#define BIG (TV_DATA + 0x200000ULL)                   /* 0x11000 bytes for oversized frames */
#define HDR 12
#define FEATURES (1ULL << 3 | 1ULL << 5 | 1ULL << 16)
#define IP(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (d))

static const char *work;
static char sock_path[256];
static const uint8_t MAC_A[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x0a};
static const uint8_t MAC_B[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x0b};
static const uint8_t PEER_MAC[6] = {0x02, 0x99, 0x99, 0x99, 0x99, 0x99};

/* ---------- frames ---------- */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }

/* Ethernet + IPv4 (+ TCP 20 bytes or UDP 8 bytes header, + `payload` bytes) to dst:dport.
 * `frag` is the IP flags/offset field. Returns the frame's length. */
static size_t ip4_frame(uint8_t *f, uint32_t dst, uint8_t proto, uint16_t dport, uint8_t tcp_flags,
                        uint16_t frag, size_t payload)
{
    size_t l4 = proto == 6 ? 20 : proto == 17 ? 8 : 8;
    memset(f, 0, ETH_HLEN + 20 + l4 + payload);
    memcpy(f, PEER_MAC, 6);
    memcpy(f + 6, MAC_A, 6);
    put16(f + 12, ETH_P_IPV4);
    uint8_t *ip = f + ETH_HLEN;
    ip[0] = 0x45;
    put16(ip + 2, (uint16_t)(20 + l4 + payload));
    put16(ip + 6, frag);
    ip[8] = 64;
    ip[9] = proto;
    put32(ip + 12, IP(10, 0, 2, 15));
    put32(ip + 16, dst);
    put16(ip + 10, net_csum_fold(net_csum_add(0, ip, 20)));
    uint8_t *t = ip + 20;
    put16(t, 40000);
    put16(t + 2, dport);
    if (proto == 6) {
        put32(t + 4, 0x11223344);
        t[12] = 5 << 4;
        t[13] = tcp_flags;
        put16(t + 14, 64240);
    } else if (proto == 17) {
        put16(t + 4, (uint16_t)(8 + payload));
    }
    for (size_t i = 0; i < payload; i++)
        t[l4 + i] = (uint8_t)i;
    return ETH_HLEN + 20 + l4 + payload;
}

static size_t udp_to(uint8_t *f, uint32_t dst, uint16_t port)
{
    return ip4_frame(f, dst, 17, port, 0, 0, 32);
}

static size_t syn_to(uint8_t *f, uint32_t dst, uint16_t port)
{
    return ip4_frame(f, dst, 6, port, 0x02, 0, 0);
}

static size_t arp_frame(uint8_t *f)
{
    memset(f, 0, 42);
    memset(f, 0xff, 6);
    memcpy(f + 6, MAC_A, 6);
    put16(f + 12, ETH_P_ARP);
    return 42;
}

/* ---------- the filter on its own ---------- */

static struct vmm_net_rule rule(uint32_t addr, unsigned prefix, unsigned proto, unsigned lo,
                                unsigned hi, int allow)
{
    return (struct vmm_net_rule){.addr = addr, .prefix = prefix, .proto = proto, .port_lo = lo,
                                 .port_hi = hi, .allow = allow};
}

static void test_filter_passes_arp_and_dhcp_and_denies_everything_else_without_a_policy(void)
{
    uint8_t f[256];
    CHECK(net_filter(f, arp_frame(f), NULL) == NET_ALLOW);
    CHECK(net_filter(f, udp_to(f, IP(255, 255, 255, 255), 67), NULL) == NET_ALLOW);
    CHECK(net_filter(f, udp_to(f, IP(8, 8, 8, 8), 53), NULL) == NET_DENY);
    CHECK(net_filter(f, syn_to(f, IP(8, 8, 8, 8), 443), NULL) == NET_DENY_RST);
    struct vmm_net_policy none = {.default_allow = 0};
    CHECK(net_filter(f, udp_to(f, IP(255, 255, 255, 255), 67), &none) == NET_ALLOW);
}

static void test_filter_denies_non_ipv4_and_malformed_ipv4_even_when_allowing_all(void)
{
    struct vmm_net_policy all = {.default_allow = 1};
    uint8_t f[256];
    size_t n = udp_to(f, IP(1, 2, 3, 4), 53);
    CHECK(net_filter(f, n, &all) == NET_ALLOW);
    put16(f + 12, 0x86dd);                          /* IPv6 */
    CHECK(net_filter(f, n, &all) == NET_DENY);
    put16(f + 12, 0x8100);                          /* a VLAN tag */
    CHECK(net_filter(f, n, &all) == NET_DENY);
    put16(f + 12, ETH_P_IPV4);
    f[ETH_HLEN] = 0x44;                             /* IHL 4 */
    CHECK(net_filter(f, n, &all) == NET_DENY);
    f[ETH_HLEN] = 0x4f;                             /* IHL 15: past the total length */
    CHECK(net_filter(f, n, &all) == NET_DENY);
    f[ETH_HLEN] = 0x65;                             /* version 6 in an IPv4 frame */
    CHECK(net_filter(f, n, &all) == NET_DENY);
    f[ETH_HLEN] = 0x45;
    put16(f + ETH_HLEN + 2, (uint16_t)(n - ETH_HLEN + 1));   /* total length past the frame */
    CHECK(net_filter(f, n, &all) == NET_DENY);
    put16(f + ETH_HLEN + 2, (uint16_t)(n - ETH_HLEN));
    CHECK(net_filter(f, ETH_HLEN + 19, &all) == NET_DENY);   /* truncated header */
    CHECK(net_filter(f, 10, &all) == NET_DENY);              /* not even Ethernet */
    CHECK(net_filter(f, 0, &all) == NET_DENY);
    /* a first fragment without its ports */
    n = ip4_frame(f, IP(1, 2, 3, 4), 6, 80, 0x02, 0x2000, 0);
    put16(f + ETH_HLEN + 2, 22);
    CHECK(net_filter(f, ETH_HLEN + 22, &all) == NET_DENY);
}

static void test_filter_first_matching_rule_decides(void)
{
    struct vmm_net_rule rules[] = {
        rule(IP(10, 1, 0, 0), 16, 0, 0, 0, 0),       /* deny 10.1/16 */
        rule(IP(10, 0, 0, 0), 8, 0, 0, 0, 1),        /* allow 10/8 */
        rule(IP(0, 0, 0, 0), 0, 0, 0, 0, 0),         /* deny the rest: the default never acts */
    };
    struct vmm_net_policy p = {.default_allow = 1, .nrules = 3, .rules = rules};
    uint8_t f[256];
    CHECK(net_filter(f, udp_to(f, IP(10, 1, 2, 3), 53), &p) == NET_DENY);
    CHECK(net_filter(f, udp_to(f, IP(10, 2, 3, 4), 53), &p) == NET_ALLOW);
    CHECK(net_filter(f, udp_to(f, IP(11, 0, 0, 1), 53), &p) == NET_DENY);
    p.nrules = 2;
    CHECK(net_filter(f, udp_to(f, IP(11, 0, 0, 1), 53), &p) == NET_ALLOW);   /* the default */
    struct vmm_net_rule host = rule(IP(192, 0, 2, 7), 32, 0, 0, 0, 1);
    struct vmm_net_policy one = {.default_allow = 0, .nrules = 1, .rules = &host};
    CHECK(net_filter(f, udp_to(f, IP(192, 0, 2, 7), 9), &one) == NET_ALLOW);
    CHECK(net_filter(f, udp_to(f, IP(192, 0, 2, 8), 9), &one) == NET_DENY);
}

static void test_filter_matches_protocol_and_port_range(void)
{
    struct vmm_net_rule rules[] = {rule(IP(192, 0, 2, 0), 24, 6, 80, 443, 1),
                                   rule(IP(192, 0, 2, 0), 24, 1, 0, 0, 1),
                                   rule(IP(198, 51, 100, 0), 24, 0, 53, 53, 1)};
    struct vmm_net_policy p = {.default_allow = 0, .nrules = 3, .rules = rules};
    uint8_t f[256];
    CHECK(net_filter(f, syn_to(f, IP(192, 0, 2, 5), 80), &p) == NET_ALLOW);
    CHECK(net_filter(f, syn_to(f, IP(192, 0, 2, 5), 443), &p) == NET_ALLOW);
    CHECK(net_filter(f, syn_to(f, IP(192, 0, 2, 5), 444), &p) == NET_DENY_RST);
    CHECK(net_filter(f, syn_to(f, IP(192, 0, 2, 5), 22), &p) == NET_DENY_RST);
    CHECK(net_filter(f, udp_to(f, IP(192, 0, 2, 5), 80), &p) == NET_DENY);        /* not TCP */
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 2, 5), 1, 0, 0, 0, 8), &p) == NET_ALLOW);
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 3, 5), 1, 0, 0, 0, 8), &p) == NET_DENY);
    CHECK(net_filter(f, udp_to(f, IP(198, 51, 100, 1), 53), &p) == NET_ALLOW);   /* any proto */
    CHECK(net_filter(f, syn_to(f, IP(198, 51, 100, 1), 53), &p) == NET_ALLOW);
    CHECK(net_filter(f, ip4_frame(f, IP(198, 51, 100, 1), 1, 0, 0, 0, 8), &p) == NET_DENY);
    /* a denied segment that is no SYN (an ACK, a SYN+ACK, a RST) is only dropped */
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 2, 5), 6, 22, 0x10, 0, 0), &p) == NET_DENY);
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 2, 5), 6, 22, 0x12, 0, 0), &p) == NET_DENY);
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 2, 5), 6, 22, 0x06, 0, 0), &p) == NET_DENY);
}

static void test_filter_lets_an_exposed_ports_replies_out_but_never_a_connect_from_it(void)
{
    /* the frames' source port is 40000: as if it were the exposed port */
    struct vmm_net_rule r = rule(IP(10, 0, 2, 2), 32, 6, 0, 0, 1);
    r.sport_lo = r.sport_hi = 40000;
    r.replies = 1;
    struct vmm_net_policy p = {.default_allow = 0, .nrules = 1, .rules = &r};
    uint8_t f[256];
    CHECK(net_filter(f, ip4_frame(f, IP(10, 0, 2, 2), 6, 51000, 0x12, 0, 0), &p) == NET_ALLOW);
    CHECK(net_filter(f, ip4_frame(f, IP(10, 0, 2, 2), 6, 51000, 0x10, 0, 9), &p) == NET_ALLOW);
    CHECK(net_filter(f, ip4_frame(f, IP(10, 0, 2, 2), 6, 51000, 0x11, 0, 0), &p) == NET_ALLOW);
    /* a connect of its own from that port, to the gateway or elsewhere: the policy decides */
    CHECK(net_filter(f, ip4_frame(f, IP(10, 0, 2, 2), 6, 51000, 0x02, 0, 0), &p) == NET_DENY_RST);
    CHECK(net_filter(f, ip4_frame(f, IP(10, 0, 2, 3), 6, 51000, 0x12, 0, 0), &p) == NET_DENY);
    CHECK(net_filter(f, ip4_frame(f, IP(10, 0, 2, 2), 17, 51000, 0, 0, 8), &p) == NET_DENY);
    r.sport_lo = r.sport_hi = 40001;
    CHECK(net_filter(f, ip4_frame(f, IP(10, 0, 2, 2), 6, 51000, 0x12, 0, 0), &p) == NET_DENY);
    r.sport_lo = 40001;
    r.sport_hi = 40000;
    CHECK(net_policy_check(&p) == -EINVAL && strstr(vmm_last_error(), "source ports"));
    r.sport_lo = r.sport_hi = 40000;
    r.proto = 17;
    CHECK(net_policy_check(&p) == -EINVAL && strstr(vmm_last_error(), "replies-only"));
}

static void test_filter_lets_only_portless_rules_match_later_fragments(void)
{
    struct vmm_net_rule ports = rule(IP(192, 0, 2, 0), 24, 17, 1, 65535, 1);
    struct vmm_net_policy p = {.default_allow = 0, .nrules = 1, .rules = &ports};
    uint8_t f[256];
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 2, 1), 17, 5000, 0, 0x2000, 64), &p) == NET_ALLOW);
    size_t n = ip4_frame(f, IP(192, 0, 2, 1), 17, 5000, 0, 100, 64);   /* offset 800 bytes */
    CHECK(net_filter(f, n, &p) == NET_DENY);
    struct vmm_net_rule any = rule(IP(192, 0, 2, 0), 24, 17, 0, 0, 1);
    p.rules = &any;
    CHECK(net_filter(f, n, &p) == NET_ALLOW);
    /* a fragment that would overlap the TCP header another fragment carried (RFC 1858) */
    struct vmm_net_policy all = {.default_allow = 1};
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 2, 1), 6, 80, 0, 1, 16), &all) == NET_DENY);
    CHECK(net_filter(f, ip4_frame(f, IP(192, 0, 2, 1), 6, 80, 0, 3, 16), &all) == NET_ALLOW);
}

static bool csum_ok(const uint8_t *f)
{
    const uint8_t *ip = f + ETH_HLEN;
    if (net_csum_fold(net_csum_add(0, ip, 20)) != 0)
        return false;
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = 6;
    put16(pseudo + 10, (uint16_t)(get16(ip + 2) - 20));
    return net_csum_fold(net_csum_add(net_csum_add(0, pseudo, 12), ip + 20,
                                      get16(ip + 2) - 20u)) == 0;
}

static void check_rst_answers(const uint8_t *rst, const uint8_t *syn, uint32_t ack)
{
    CHECK(memcmp(rst, syn + 6, 6) == 0 && memcmp(rst + 6, syn, 6) == 0);
    CHECK(get16(rst + 12) == ETH_P_IPV4);
    const uint8_t *ip = rst + ETH_HLEN, *sip = syn + ETH_HLEN;
    CHECK(ip[0] == 0x45 && get16(ip + 2) == 40 && ip[9] == 6);
    CHECK(memcmp(ip + 12, sip + 16, 4) == 0 && memcmp(ip + 16, sip + 12, 4) == 0);
    const uint8_t *t = ip + 20, *st = sip + 20;
    CHECK(get16(t) == get16(st + 2) && get16(t + 2) == get16(st));
    CHECK(get32(t + 4) == 0 && get32(t + 8) == ack);
    CHECK(t[13] == 0x14);                                   /* RST + ACK */
    CHECK(csum_ok(rst));
}

static void test_rst_answers_a_syn_from_its_destination_with_good_checksums(void)
{
    uint8_t syn[256], rst[NET_RST_LEN];
    size_t n = syn_to(syn, IP(203, 0, 113, 9), 8080);
    CHECK(net_build_rst(syn, n, rst) == NET_RST_LEN);
    check_rst_answers(rst, syn, 0x11223345);
    /* a SYN carrying data (TCP fast open): the ack covers it */
    n = ip4_frame(syn, IP(203, 0, 113, 9), 6, 8080, 0x02, 0, 10);
    CHECK(net_build_rst(syn, n, rst) == NET_RST_LEN);
    check_rst_answers(rst, syn, 0x11223344 + 11);
    CHECK(net_build_rst(syn, udp_to(syn, IP(1, 1, 1, 1), 5), rst) == 0);
    CHECK(net_build_rst(syn, 30, rst) == 0);
}

static void test_policy_check_names_what_to_change(void)
{
    struct vmm_net_rule r = rule(IP(10, 0, 0, 0), 8, 6, 80, 80, 1);
    struct vmm_net_policy p = {.nrules = 1, .rules = &r};
    CHECK(net_policy_check(&p) == 0);
    r.prefix = 33;
    CHECK(net_policy_check(&p) == -EINVAL && strstr(vmm_last_error(), "prefix"));
    r.prefix = 8;
    r.addr = IP(10, 0, 0, 1);
    CHECK(net_policy_check(&p) == -EINVAL && strstr(vmm_last_error(), "past its /8"));
    r.addr = IP(10, 0, 0, 0);
    r.proto = 2;
    CHECK(net_policy_check(&p) == -EINVAL && strstr(vmm_last_error(), "protocol"));
    r.proto = 6;
    r.port_lo = 90;
    CHECK(net_policy_check(&p) == -EINVAL && strstr(vmm_last_error(), "ports"));
    r.port_lo = 1;
    r.port_hi = 70000;
    CHECK(net_policy_check(&p) == -EINVAL);
    r.port_hi = 80;
    r.proto = 1;
    CHECK(net_policy_check(&p) == -EINVAL && strstr(vmm_last_error(), "ICMP"));
    p.nrules = VMM_NET_MAX_RULES + 1;
    CHECK(net_policy_check(&p) == -EINVAL);
    p.nrules = 2;
    p.rules = NULL;
    CHECK(net_policy_check(&p) == -EINVAL);
    CHECK(net_policy_check(NULL) == -EINVAL);
    r = rule(0, 0, 0, 0, 0, 0);
    p = (struct vmm_net_policy){.nrules = 1, .rules = &r};
    CHECK(net_policy_check(&p) == 0);
}

/* ---------- the device ---------- */

struct nt {
    struct tv t;
    int lst, peer;          /* the backend: its listener, and the device's connection */
    uint16_t rx_next;       /* rx buffers posted so far (buffer i % 16) */
};

static struct vmm_device_config net_cfg(const char *path, const uint8_t mac[6], unsigned mtu)
{
    struct vmm_device_config c = {.type = VMM_DEV_VIRTIO_NET, .path = path, .mtu = mtu};
    memcpy(c.mac, mac, 6);
    return c;
}

static int nt_open_at(struct nt *n, const char *path, const uint8_t mac[6])
{
    n->lst = tv_listen(path);
    struct vmm_device_config cfg = net_cfg(path, mac, 0);
    int r = tv_open(&n->t, &virtio_net_ops, &cfg, "virtio-net.0");
    if (r)
        return r;
    n->peer = accept(n->lst, NULL, NULL);
    n->rx_next = 0;
    tv_setup(&n->t, FEATURES, 2, 16);
    return n->peer >= 0 ? 0 : -1;
}

static int nt_open(struct nt *n) { return nt_open_at(n, sock_path, MAC_A); }

/* A driver that negotiates VIRTIO_NET_F_MRG_RXBUF (set up again after the plain one). */
static int nt_open_mrg(struct nt *n)
{
    int r = nt_open(n);
    if (!r)
        tv_setup(&n->t, FEATURES | 1ULL << 15, 2, 16);
    return r;
}

static void nt_close(struct nt *n)
{
    tv_close(&n->t);
    if (n->peer >= 0)
        close(n->peer);
    close(n->lst);
}

static void set_policy(struct nt *n, int default_allow, const struct vmm_net_rule *rules,
                       unsigned nrules)
{
    struct vmm_net_policy p = {.default_allow = default_allow, .nrules = nrules, .rules = rules};
    CHECK(virtio_net_set_policy(&n->t.d, &p) == 0);
}

static struct vmm_net_stats stats(struct nt *n)
{
    struct vmm_net_stats s;
    virtio_net_stats(&n->t.d, &s);
    return s;
}

static void post_rx(struct nt *n, int count, uint32_t size)
{
    for (int i = 0; i < count; i++) {
        struct tv_buf b = {RXBUF(n->rx_next % 16), size, true};
        n->rx_next++;
        tv_publish(&n->t, 0, tv_chain(&n->t, 0, &b, 1));
    }
    tv_kick(&n->t, 0);
}

/* The guest sends a frame from tx slot `slot`: header and frame in one buffer, or two. */
static void guest_tx(struct nt *n, int slot, const uint8_t *f, size_t len, bool split)
{
    uint8_t hdr[HDR] = {0};
    uint64_t at = TXBUF(slot % 16);
    gm_write(&n->t.mem, at, hdr, HDR);
    gm_write(&n->t.mem, at + HDR, f, len);
    struct tv_buf one = {at, (uint32_t)(HDR + len), false};
    struct tv_buf two[2] = {{at, HDR, false}, {at + HDR, (uint32_t)len, false}};
    tv_publish(&n->t, 1, split ? tv_chain(&n->t, 1, two, 2) : tv_chain(&n->t, 1, &one, 1));
    tv_kick(&n->t, 1);
}

/* Mergeable rx: the next frame gathered from the num_buffers buffers it came in. Its length,
 * -1 if none, 0 for a buffer returned empty, -2 for a bad header or a missing buffer. */
static long guest_rx_mrg(struct nt *n, uint8_t *f, size_t max, unsigned *nbuf)
{
    uint32_t id, len;
    uint64_t addr;
    if (!tv_take_used(&n->t, 0, &id, &len))
        return -1;
    if (len == 0)
        return 0;
    gm_read(&n->t.mem, tv_desc(0) + 16ULL * id, &addr, 8);
    uint8_t hdr[HDR], zero[10] = {0};
    gm_read(&n->t.mem, addr, hdr, HDR);
    *nbuf = hdr[10] | (unsigned)hdr[11] << 8;
    if (len < HDR || memcmp(hdr, zero, 10) || *nbuf < 1 || len - HDR > max)
        return -2;
    size_t got = len - HDR;
    gm_read(&n->t.mem, addr + HDR, f, got);
    for (unsigned j = 1; j < *nbuf; j++) {
        if (!tv_take_used(&n->t, 0, &id, &len) || got + len > max)
            return -2;
        gm_read(&n->t.mem, tv_desc(0) + 16ULL * id, &addr, 8);
        gm_read(&n->t.mem, addr, f + got, len);
        got += len;
    }
    return (long)got;
}

/* The next frame the guest received, in one buffer: its length (without header), -1 if none,
 * 0 for a buffer returned empty, -2 for a bad header. */
static long guest_rx(struct nt *n, uint8_t *f, size_t max)
{
    unsigned nbuf = 1;
    long r = guest_rx_mrg(n, f, max, &nbuf);
    return r > 0 && nbuf != 1 ? -2 : r;
}

static bool wait_fd(int fd, short ev)
{
    struct pollfd p = {.fd = fd, .events = ev};
    return poll(&p, 1, 2000) == 1;
}

static bool read_all(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        if (!wait_fd(fd, POLLIN))
            return false;
        ssize_t r = read(fd, (uint8_t *)buf + got, len - got);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

/* The next frame the backend got: its length, or -1. */
static long backend_rx(int fd, uint8_t *f, size_t max)
{
    uint8_t l[4];
    if (!read_all(fd, l, 4) || get32(l) > max || !read_all(fd, f, get32(l)))
        return -1;
    return (long)get32(l);
}

static bool backend_quiet(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 50) == 0;
}

static void backend_tx(int fd, const uint8_t *f, uint32_t len)
{
    uint8_t l[4];
    put32(l, len);
    CHECK(write(fd, l, 4) == 4 && write(fd, f, len) == (ssize_t)len);
}

static void test_refuses_bad_configurations(void)
{
    struct tv t;
    char nobody[300];
    snprintf(nobody, sizeof(nobody), "%s/nobody.sock", work);
    struct vmm_device_config cfg = net_cfg(nobody, MAC_A, 0);
    CHECK(tv_open(&t, &virtio_net_ops, &cfg, "virtio-net.0") == -ENOENT &&
          strstr(vmm_last_error(), "nobody listens"));
    int l = tv_listen(sock_path);
    static const uint8_t zero[6], multicast[6] = {0x01, 0, 0x5e, 0, 0, 1};
    cfg = net_cfg(sock_path, zero, 0);
    CHECK(tv_open(&t, &virtio_net_ops, &cfg, "virtio-net.0") == -EINVAL);
    cfg = net_cfg(sock_path, multicast, 0);
    CHECK(tv_open(&t, &virtio_net_ops, &cfg, "virtio-net.0") == -EINVAL);
    cfg = net_cfg(sock_path, MAC_A, 67);
    CHECK(tv_open(&t, &virtio_net_ops, &cfg, "virtio-net.0") == -EINVAL);
    cfg = net_cfg(NULL, MAC_A, 0);
    CHECK(tv_open(&t, &virtio_net_ops, &cfg, "virtio-net.0") == -EINVAL);
    close(l);
    unlink(sock_path);
}

static void test_config_space_has_mac_link_and_mtu(void)
{
    int l = tv_listen(sock_path);
    struct vmm_device_config cfg = net_cfg(sock_path, MAC_B, 9000);
    struct tv t;
    CHECK(tv_open(&t, &virtio_net_ops, &cfg, "virtio-net.0") == 0);
    uint8_t c[12];
    for (int i = 0; i < 12; i++)
        t.d.ops->access(&t.d, VIRTIO_MMIO_CONFIG + i, c + i, 1, false, NULL);
    CHECK(memcmp(c, MAC_B, 6) == 0);
    CHECK(c[6] == 1 && c[7] == 0);                         /* LINK_UP */
    CHECK(c[8] == 1 && c[9] == 0);                         /* one queue pair */
    CHECK((c[10] | c[11] << 8) == 9000);
    CHECK(tv_rd(&t, VIRTIO_MMIO_DEVICE_ID) == 1);
    tv_wr(&t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    uint32_t f = tv_rd(&t, VIRTIO_MMIO_DEVICE_FEATURES);
    uint32_t want = 1u << 3 | 1u << 5 | 1u << 15 | 1u << 16 | 1u << 28;  /* mtu mac mrg status indirect */
    CHECK((f & want) == want);
    CHECK(!(f & (1u << 0 | 1u << 17 | 1u << 22)));              /* no csum, ctrl, mq */
    tv_close(&t);
    close(l);
}

static void test_tx_frames_reach_the_backend_length_prefixed_in_order(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    set_policy(&n, 1, NULL, 0);
    uint8_t f[2048], got[2048];
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        lens[i] = ip4_frame(f, IP(192, 0, 2, 1), 17, (uint16_t)(1000 + i), 0, 0, 100u * (size_t)i);
        guest_tx(&n, i, f, lens[i], i % 2);
    }
    for (int i = 0; i < 4; i++) {
        size_t want = ip4_frame(f, IP(192, 0, 2, 1), 17, (uint16_t)(1000 + i), 0, 0, 100u * (size_t)i);
        CHECK(backend_rx(n.peer, got, sizeof(got)) == (long)lens[i] && memcmp(got, f, want) == 0);
    }
    uint32_t id, len;
    int used = 0;
    while (tv_take_used(&n.t, 1, &id, &len))
        used++;
    CHECK(used == 4);
    struct vmm_net_stats s = stats(&n);
    CHECK(s.tx_frames == 4 && s.tx_bytes == lens[0] + lens[1] + lens[2] + lens[3] && s.link_up);
    CHECK(!tv_broken(&n.t));
    nt_close(&n);
}

static void test_rx_frames_reach_the_guest_whole_even_when_the_stream_splits_them(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    post_rx(&n, 8, 0x1000);
    uint8_t f[3][1600], got[4096];
    uint32_t len[3] = {60, 1514, 800};
    for (int i = 0; i < 3; i++)
        for (uint32_t k = 0; k < len[i]; k++)
            f[i][k] = (uint8_t)(k * (i + 3));
    backend_tx(n.peer, f[0], len[0]);
    /* the second frame in pieces: prefix split, then the body in two writes */
    uint8_t l[4];
    put32(l, len[1]);
    CHECK(write(n.peer, l, 2) == 2);
    virtio_net_poll_backend(&n.t.d);
    CHECK(guest_rx(&n, got, sizeof(got)) == (long)len[0] && memcmp(got, f[0], len[0]) == 0);
    CHECK(guest_rx(&n, got, sizeof(got)) == -1);
    CHECK(write(n.peer, l + 2, 2) == 2 && write(n.peer, f[1], 700) == 700);
    virtio_net_poll_backend(&n.t.d);
    CHECK(guest_rx(&n, got, sizeof(got)) == -1);            /* not whole yet */
    CHECK(write(n.peer, f[1] + 700, len[1] - 700) == (ssize_t)(len[1] - 700));
    backend_tx(n.peer, f[2], len[2]);
    virtio_net_poll_backend(&n.t.d);
    CHECK(guest_rx(&n, got, sizeof(got)) == (long)len[1] && memcmp(got, f[1], len[1]) == 0);
    CHECK(guest_rx(&n, got, sizeof(got)) == (long)len[2] && memcmp(got, f[2], len[2]) == 0);
    struct vmm_net_stats s = stats(&n);
    CHECK(s.rx_frames == 3 && s.rx_bytes == len[0] + len[1] + len[2] && s.rx_dropped == 0);
    nt_close(&n);
}

static void test_rx_waits_for_guest_buffers_and_resumes_on_its_doorbell(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    uint8_t f[200], got[4096];
    for (int i = 0; i < 40; i++) {
        memset(f, i, sizeof(f));
        backend_tx(n.peer, f, sizeof(f));
    }
    virtio_net_poll_backend(&n.t.d);
    CHECK(guest_rx(&n, got, sizeof(got)) == -1);            /* no buffers: nothing lost */
    int seen = 0;
    bool in_order = true;
    for (int round = 0; round < 10 && seen < 40; round++) {
        post_rx(&n, 8, 0x1000);
        long r;
        while ((r = guest_rx(&n, got, sizeof(got))) >= 0) {
            in_order &= r == 200 && got[0] == seen && got[199] == seen;
            seen++;
        }
    }
    CHECK(seen == 40 && in_order);
    CHECK(stats(&n).rx_dropped == 0);
    nt_close(&n);
}

static void test_mergeable_rx_spreads_each_frame_over_the_buffers_it_needs(void)
{
    struct nt n;
    CHECK(nt_open_mrg(&n) == 0);
    post_rx(&n, 16, 256);
    static uint8_t f[3][1600], got[8192];
    uint32_t len[3] = {60, 1514, 1000};
    unsigned want_nbuf[3] = {1, 6, 4}, nbuf = 0;   /* ceil((12 + len) / 256) */
    for (int i = 0; i < 3; i++) {
        for (uint32_t k = 0; k < len[i]; k++)
            f[i][k] = (uint8_t)(k * (i + 5) + i);
        backend_tx(n.peer, f[i], len[i]);
    }
    virtio_net_poll_backend(&n.t.d);
    for (int i = 0; i < 3; i++) {
        long r = guest_rx_mrg(&n, got, sizeof(got), &nbuf);
        CHECK(r == (long)len[i] && nbuf == want_nbuf[i] && memcmp(got, f[i], len[i]) == 0);
    }
    CHECK(guest_rx_mrg(&n, got, sizeof(got), &nbuf) == -1);
    struct vmm_net_stats s = stats(&n);
    CHECK(s.rx_frames == 3 && s.rx_bytes == len[0] + len[1] + len[2] && s.rx_dropped == 0);
    CHECK(!tv_broken(&n.t));
    nt_close(&n);
}

static void test_mergeable_rx_waits_for_enough_buffers_and_loses_nothing(void)
{
    struct nt n;
    CHECK(nt_open_mrg(&n) == 0);
    post_rx(&n, 2, 256);
    static uint8_t f[1514], got[8192];
    for (size_t k = 0; k < sizeof(f); k++)
        f[k] = (uint8_t)(k * 7);
    backend_tx(n.peer, f, sizeof(f));
    virtio_net_poll_backend(&n.t.d);
    unsigned nbuf = 0;
    CHECK(guest_rx_mrg(&n, got, sizeof(got), &nbuf) == -1);   /* 2 of the 6 it needs */
    CHECK(tv_used_idx(&n.t, 0) == 0);                         /* none taken for good */
    post_rx(&n, 3, 256);
    CHECK(guest_rx_mrg(&n, got, sizeof(got), &nbuf) == -1);   /* 5 of 6 */
    post_rx(&n, 1, 256);
    CHECK(guest_rx_mrg(&n, got, sizeof(got), &nbuf) == (long)sizeof(f) && nbuf == 6 &&
          memcmp(got, f, sizeof(f)) == 0);
    CHECK(stats(&n).rx_dropped == 0 && stats(&n).rx_frames == 1);
    nt_close(&n);
}

static void test_mergeable_rx_drops_what_no_ring_could_hold_and_goes_on(void)
{
    struct nt n;
    CHECK(nt_open_mrg(&n) == 0);
    post_rx(&n, 16, 256);                     /* 4 KiB in all: a 5000-byte frame never fits */
    static uint8_t big[5000], small[100], got[8192];
    memset(big, 1, sizeof(big));
    memset(small, 2, sizeof(small));
    backend_tx(n.peer, big, sizeof(big));
    backend_tx(n.peer, small, sizeof(small));
    virtio_net_poll_backend(&n.t.d);
    unsigned nbuf = 0;
    CHECK(guest_rx_mrg(&n, got, sizeof(got), &nbuf) == 0);    /* its first buffer, empty */
    CHECK(guest_rx_mrg(&n, got, sizeof(got), &nbuf) == (long)sizeof(small) && nbuf == 1 &&
          memcmp(got, small, sizeof(small)) == 0);
    CHECK(stats(&n).rx_dropped == 1 && !tv_broken(&n.t));
    /* a first buffer too short for the header: that frame is dropped, the next one goes */
    struct nt m;
    nt_close(&n);
    CHECK(nt_open_mrg(&m) == 0);
    post_rx(&m, 1, HDR - 4);
    post_rx(&m, 1, 256);
    backend_tx(m.peer, small, sizeof(small));
    backend_tx(m.peer, small, 60);
    virtio_net_poll_backend(&m.t.d);
    CHECK(guest_rx_mrg(&m, got, sizeof(got), &nbuf) == 0);
    CHECK(guest_rx_mrg(&m, got, sizeof(got), &nbuf) == 60 && nbuf == 1);
    CHECK(stats(&m).rx_dropped == 1 && !tv_broken(&m.t));
    nt_close(&m);
}

static void test_tx_stops_taking_frames_while_the_backend_does_not_read(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    set_policy(&n, 1, NULL, 0);
    static uint8_t f[60000], got[65536];
    uint32_t sent = 0, taken = 0;
    /* 16 frames of 60000 bytes in flight at a time, until the device stops taking them */
    bool stalled = false;
    for (int round = 0; round < 200 && !stalled; round++) {
        uint32_t id, len;
        while (tv_take_used(&n.t, 1, &id, &len))
            taken++;
        if (sent - taken == 16) {
            stalled = true;
            break;
        }
        while (sent - taken < 16) {
            size_t l = ip4_frame(f, IP(192, 0, 2, 1), 17, 9, 0, 0, sizeof(f) - 100);
            put32(f + l - 4, sent);                          /* a sequence number at its end */
            guest_tx(&n, (int)(sent % 16), f, l, false);
            sent++;
        }
    }
    CHECK(stalled);                                         /* backpressure reached the guest */
    CHECK(sent - taken == 16 && !tv_broken(&n.t));
    uint32_t avail_before = taken;
    /* the backend reads: the device drains its buffer and takes the rest */
    uint32_t next = 0;
    bool in_order = true;
    while (next < sent) {
        long r = backend_rx(n.peer, got, sizeof(got));
        if (r < 0)
            break;
        in_order &= get32(got + r - 4) == next;
        next++;
        virtio_net_poll_backend(&n.t.d);
    }
    uint32_t id, len;
    while (tv_take_used(&n.t, 1, &id, &len))
        taken++;
    CHECK(next == sent && in_order);
    CHECK(taken == sent && taken > avail_before);
    CHECK(stats(&n).tx_frames == sent && stats(&n).tx_dropped == 0);
    nt_close(&n);
}

static void test_backend_eof_takes_the_link_down_and_tx_is_dropped(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    set_policy(&n, 1, NULL, 0);
    post_rx(&n, 4, 0x1000);
    tv_wr(&n.t, VIRTIO_MMIO_INTERRUPT_ACK, 3);
    uint32_t gen = tv_rd(&n.t, VIRTIO_MMIO_CONFIG_GENERATION);
    close(n.peer);
    n.peer = -1;
    virtio_net_poll_backend(&n.t.d);
    CHECK(stats(&n).link_up == 0);
    uint16_t status = 0xffff;
    n.t.d.ops->access(&n.t.d, VIRTIO_MMIO_CONFIG + 6, (uint8_t *)&status, 2, false, NULL);
    CHECK(status == 0);
    CHECK(tv_rd(&n.t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_ISR_CONFIG);
    CHECK(tv_rd(&n.t, VIRTIO_MMIO_CONFIG_GENERATION) != gen);
    uint8_t f[256];
    guest_tx(&n, 0, f, udp_to(f, IP(192, 0, 2, 1), 9), false);
    uint32_t id, len;
    CHECK(tv_take_used(&n.t, 1, &id, &len) == 1);
    CHECK(stats(&n).tx_dropped == 1 && stats(&n).tx_frames == 0);
    CHECK(!tv_broken(&n.t));
    nt_close(&n);
}

static void test_backend_breaking_the_framing_takes_the_link_down(void)
{
    static const uint32_t bad[] = {0, 65551, 0xffffffffu};
    for (int i = 0; i < 3; i++) {
        struct nt n;
        CHECK(nt_open(&n) == 0);
        post_rx(&n, 4, 0x1000);
        uint8_t l[4];
        put32(l, bad[i]);
        CHECK(write(n.peer, l, 4) == 4);
        virtio_net_poll_backend(&n.t.d);
        CHECK(stats(&n).link_up == 0);
        uint8_t x;
        CHECK(wait_fd(n.peer, POLLIN) && read(n.peer, &x, 1) == 0);   /* we hung up */
        CHECK(!tv_broken(&n.t));
        nt_close(&n);
    }
}

static void test_denied_syn_is_answered_with_a_reset_and_never_reaches_the_backend(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    post_rx(&n, 4, 0x1000);
    struct vmm_net_rule deny = rule(IP(10, 0, 0, 0), 8, 0, 0, 0, 0);
    set_policy(&n, 1, &deny, 1);
    uint8_t syn[256], got[4096];
    size_t len = syn_to(syn, IP(10, 1, 2, 3), 80);
    guest_tx(&n, 0, syn, len, true);
    CHECK(guest_rx(&n, got, sizeof(got)) == NET_RST_LEN);
    check_rst_answers(got, syn, 0x11223345);
    uint8_t udp[256];
    guest_tx(&n, 1, udp, udp_to(udp, IP(10, 9, 9, 9), 53), false);   /* denied: dropped */
    CHECK(guest_rx(&n, got, sizeof(got)) == -1);
    CHECK(backend_quiet(n.peer));
    CHECK(stats(&n).tx_denied == 2 && stats(&n).tx_frames == 0);
    nt_close(&n);
}

static void test_policy_change_applies_to_the_next_frame(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    uint8_t f[256], got[256];
    size_t len = udp_to(f, IP(192, 0, 2, 1), 9);
    guest_tx(&n, 0, f, len, false);                          /* no policy yet: denied */
    CHECK(backend_quiet(n.peer));
    set_policy(&n, 1, NULL, 0);
    guest_tx(&n, 1, f, len, false);
    CHECK(backend_rx(n.peer, got, sizeof(got)) == (long)len);
    set_policy(&n, 0, NULL, 0);
    guest_tx(&n, 2, f, len, false);
    CHECK(backend_quiet(n.peer));
    guest_tx(&n, 3, f, arp_frame(f), false);                  /* ARP always goes */
    CHECK(backend_rx(n.peer, got, sizeof(got)) == 42);
    struct vmm_net_policy badp = {.nrules = 1, .rules = NULL};
    CHECK(virtio_net_set_policy(&n.t.d, &badp) == -EINVAL);   /* refused: the old one stays */
    guest_tx(&n, 4, f, udp_to(f, IP(192, 0, 2, 1), 9), false);
    CHECK(backend_quiet(n.peer));
    CHECK(stats(&n).tx_denied == 3 && stats(&n).tx_frames == 2);
    nt_close(&n);
}

static void test_hostile_descriptors_are_dropped_or_break_only_the_device(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    set_policy(&n, 1, NULL, 0);
    uint8_t f[256], got[4096];
    size_t len = udp_to(f, IP(192, 0, 2, 1), 9);
    /* a tx chain with a writable buffer */
    gm_write(&n.t.mem, TXBUF(0) + HDR, f, len);
    struct tv_buf w[2] = {{TXBUF(0), (uint32_t)(HDR + len), false}, {TXBUF(1), 64, true}};
    tv_publish(&n.t, 1, tv_chain(&n.t, 1, w, 2));
    tv_kick(&n.t, 1);
    /* shorter than an Ethernet header; only a virtio header; nothing at all */
    guest_tx(&n, 2, f, 13, false);
    struct tv_buf h = {TXBUF(3), HDR - 1, false};
    tv_publish(&n.t, 1, tv_chain(&n.t, 1, &h, 1));
    tv_kick(&n.t, 1);
    /* longer than any frame: 65550 bytes */
    uint8_t hdr[HDR] = {0};
    gm_write(&n.t.mem, BIG, hdr, HDR);
    gm_write(&n.t.mem, BIG + HDR, f, len);
    struct tv_buf big = {BIG, HDR + 65550, false};
    tv_publish(&n.t, 1, tv_chain(&n.t, 1, &big, 1));
    tv_kick(&n.t, 1);
    CHECK(backend_quiet(n.peer));
    CHECK(stats(&n).tx_dropped == 4 && !tv_broken(&n.t));
    /* the largest frame goes */
    struct tv_buf max = {BIG, HDR + 65549, false};
    tv_publish(&n.t, 1, tv_chain(&n.t, 1, &max, 1));
    tv_kick(&n.t, 1);
    static uint8_t rd[70000];
    CHECK(backend_rx(n.peer, rd, sizeof(rd)) == 65549);
    /* an rx buffer too small for header + frame: the frame is dropped, the buffer returned */
    post_rx(&n, 1, 100);
    post_rx(&n, 1, 0x1000);
    uint8_t frame[300];
    memset(frame, 7, sizeof(frame));
    backend_tx(n.peer, frame, sizeof(frame));
    backend_tx(n.peer, frame, 50);
    virtio_net_poll_backend(&n.t.d);
    CHECK(guest_rx(&n, got, sizeof(got)) == 0);               /* returned empty */
    CHECK(guest_rx(&n, got, sizeof(got)) == 50);              /* the next frame fits the next */
    CHECK(stats(&n).rx_dropped == 1 && !tv_broken(&n.t));
    /* an rx buffer the device could only read is no rx buffer: the device is broken */
    struct tv_buf ro = {RXBUF(15), 0x1000, false};
    tv_publish(&n.t, 0, tv_chain(&n.t, 0, &ro, 1));
    backend_tx(n.peer, frame, 60);
    virtio_net_poll_backend(&n.t.d);
    CHECK(tv_broken(&n.t));
    nt_close(&n);
}

static void test_state_load_keeps_the_queues_and_takes_mac_and_backend_from_the_config(void)
{
    struct nt n;
    CHECK(nt_open(&n) == 0);
    post_rx(&n, 4, 0x1000);
    uint8_t f[256], got[4096];
    backend_tx(n.peer, f, arp_frame(f));
    virtio_net_poll_backend(&n.t.d);
    CHECK(guest_rx(&n, got, sizeof(got)) == 42);
    struct enc e;
    enc_init(&e);
    CHECK(n.t.d.ops->save(&n.t.d, &e) == 0);
    /* the same guest memory, a device built from another config: MAC B, a second backend */
    char path2[300];
    snprintf(path2, sizeof(path2), "%s/net2.sock", work);
    int l2 = tv_listen(path2);
    n.t.d.ops->destroy(&n.t.d);
    close(n.peer);
    struct vmm_device_config cfg = net_cfg(path2, MAC_B, 0);
    CHECK(n.t.d.ops->init(&n.t.d, &cfg) == 0);
    int peer2 = accept(l2, NULL, NULL);
    n.peer = peer2;
    struct dec_val v;
    struct dec_map m;
    const uint8_t *p = e.buf;
    void *st;
    CHECK(dec_next(&p, e.buf + e.len, &v) == 0 && dec_as_map(&v, &m, "virtio-net.0") == 0);
    uint8_t mac[6];
    CHECK(dec_get_bin_exact(&m, "mac", mac, 6) == 0 && memcmp(mac, MAC_A, 6) == 0);
    CHECK(n.t.d.ops->decode(&n.t.d, &m, 1, &st) == 0);
    n.t.d.ops->apply(&n.t.d, st);
    CHECK(n.t.d.ops->post_load(&n.t.d) == 0);
    virtio_run(tv_vdev(&n.t));
    uint8_t c[6];
    for (int i = 0; i < 6; i++)
        n.t.d.ops->access(&n.t.d, VIRTIO_MMIO_CONFIG + i, c + i, 1, false, NULL);
    CHECK(memcmp(c, MAC_B, 6) == 0);                           /* the new config's MAC */
    CHECK(stats(&n).link_up == 1);
    /* the guest's three remaining rx buffers from before the save take the new backend's frames */
    for (int i = 0; i < 3; i++) {
        memset(f, 0x40 + i, 60);
        backend_tx(peer2, f, 60);
    }
    virtio_net_poll_backend(&n.t.d);
    int ok = 0;
    long r;
    while ((r = guest_rx(&n, got, sizeof(got))) >= 0)
        ok += r == 60 && got[0] == 0x40 + ok;
    CHECK(ok == 3);
    set_policy(&n, 1, NULL, 0);                                /* the policy is set again */
    guest_tx(&n, 0, f, udp_to(f, IP(192, 0, 2, 1), 9), false);
    CHECK(backend_rx(peer2, got, sizeof(got)) > 0);
    CHECK(!tv_broken(&n.t));
    /* a section without its MAC is refused */
    struct enc bad;
    enc_init(&bad);
    enc_map(&bad, 1);
    enc_kv_uint(&bad, "v", 1);
    p = bad.buf;
    CHECK(dec_next(&p, bad.buf + bad.len, &v) == 0 && dec_as_map(&v, &m, "virtio-net.0") == 0);
    CHECK(n.t.d.ops->decode(&n.t.d, &m, 1, &st) < 0);
    enc_free(&bad);
    enc_free(&e);
    nt_close(&n);
    close(l2);
}

int main(int argc, char **argv)
{
    work = argc > 1 ? argv[1] : "/tmp";
    snprintf(sock_path, sizeof(sock_path), "%s/net.sock", work);
    test_filter_passes_arp_and_dhcp_and_denies_everything_else_without_a_policy();
    test_filter_denies_non_ipv4_and_malformed_ipv4_even_when_allowing_all();
    test_filter_first_matching_rule_decides();
    test_filter_matches_protocol_and_port_range();
    test_filter_lets_an_exposed_ports_replies_out_but_never_a_connect_from_it();
    test_filter_lets_only_portless_rules_match_later_fragments();
    test_rst_answers_a_syn_from_its_destination_with_good_checksums();
    test_policy_check_names_what_to_change();
    test_refuses_bad_configurations();
    test_config_space_has_mac_link_and_mtu();
    test_tx_frames_reach_the_backend_length_prefixed_in_order();
    test_rx_frames_reach_the_guest_whole_even_when_the_stream_splits_them();
    test_rx_waits_for_guest_buffers_and_resumes_on_its_doorbell();
    test_mergeable_rx_spreads_each_frame_over_the_buffers_it_needs();
    test_mergeable_rx_waits_for_enough_buffers_and_loses_nothing();
    test_mergeable_rx_drops_what_no_ring_could_hold_and_goes_on();
    test_tx_stops_taking_frames_while_the_backend_does_not_read();
    test_backend_eof_takes_the_link_down_and_tx_is_dropped();
    test_backend_breaking_the_framing_takes_the_link_down();
    test_denied_syn_is_answered_with_a_reset_and_never_reaches_the_backend();
    test_policy_change_applies_to_the_next_frame();
    test_hostile_descriptors_are_dropped_or_break_only_the_device();
    test_state_load_keeps_the_queues_and_takes_mac_and_backend_from_the_config();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
