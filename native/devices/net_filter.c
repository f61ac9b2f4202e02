/*
 * net_filter.c - virtio-net's egress filter (net_filter.h has the rules and their order).
 * Every field comes from the guest: each read is checked against the frame's length first, and
 * the IPv4 header against its own lengths, before anything is believed.
 */
#include <errno.h>
#include <string.h>
#include "net_filter.h"
#include "../internal.h"

#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define DHCP_SERVER_PORT 67

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

uint32_t net_csum_add(uint32_t sum, const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += be16(buf + i);
    if (len & 1)
        sum += (uint32_t)buf[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return sum;
}

uint16_t net_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* An IPv4 packet, as far as the filter needs it. */
struct ip4 {
    const uint8_t *ip;       /* the IP header */
    const uint8_t *l4;       /* its payload (a first fragment's transport header) */
    uint32_t l4_len;         /* payload bytes the packet holds */
    uint32_t dst;
    uint8_t proto;
    bool first;              /* fragment offset 0: the transport header is here */
    bool ports;              /* TCP/UDP with its ports in this packet */
    uint16_t sport, dport;
    bool ack;                /* TCP with ACK set: answers a segment the other side sent */
};

/* false: not IPv4 at all, or malformed (lengths past the frame, IHL < 5, a fragment that could
 * rewrite a transport header another fragment carried: RFC 1858). */
static bool parse_ip4(const uint8_t *f, size_t len, struct ip4 *o)
{
    if (len < ETH_HLEN + 20 || be16(f + 12) != ETH_P_IPV4)
        return false;
    const uint8_t *ip = f + ETH_HLEN;
    uint32_t ihl = (ip[0] & 0xfu) * 4, total = be16(ip + 2);
    if (ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > len - ETH_HLEN)
        return false;
    uint16_t frag = be16(ip + 6);
    uint32_t offset = (frag & 0x1fffu) * 8;
    *o = (struct ip4){.ip = ip, .l4 = ip + ihl, .l4_len = total - ihl, .dst = be32(ip + 16),
                      .proto = ip[9], .first = offset == 0};
    if (o->proto == IPPROTO_TCP_ || o->proto == IPPROTO_UDP_) {
        uint32_t hdr = o->proto == IPPROTO_TCP_ ? 20 : 8;
        if (o->first) {
            if (o->l4_len < 4)      /* a first fragment without its ports */
                return false;
            o->ports = true;
            o->sport = be16(o->l4);
            o->dport = be16(o->l4 + 2);
            o->ack = o->proto == IPPROTO_TCP_ && o->l4_len >= 14 && (o->l4[13] & TCP_ACK);
        } else if (offset < hdr) {  /* would overlap the transport header */
            return false;
        }
    }
    return true;
}

static bool rule_matches(const struct vmm_net_rule *r, const struct ip4 *p)
{
    uint32_t mask = r->prefix ? ~0u << (32 - r->prefix) : 0;
    if ((p->dst & mask) != r->addr)
        return false;
    if (r->proto && r->proto != p->proto)
        return false;
    if (r->replies && !p->ack)
        return false;
    if ((r->sport_lo || r->sport_hi) &&
        !(p->ports && p->sport >= r->sport_lo && p->sport <= r->sport_hi))
        return false;
    if (r->port_lo == 0 && r->port_hi == 0)
        return true;
    return p->ports && p->dport >= r->port_lo && p->dport <= r->port_hi;
}

static bool is_syn(const struct ip4 *p)
{
    if (p->proto != IPPROTO_TCP_ || !p->first || p->l4_len < 20)
        return false;
    uint8_t flags = p->l4[13];
    return (flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
}

enum net_verdict net_filter(const uint8_t *f, size_t len, const struct vmm_net_policy *pol)
{
    if (len >= ETH_HLEN && be16(f + 12) == ETH_P_ARP)
        return NET_ALLOW;
    struct ip4 p;
    if (!parse_ip4(f, len, &p))
        return NET_DENY;
    if (p.proto == IPPROTO_UDP_ && p.ports && p.dport == DHCP_SERVER_PORT)
        return NET_ALLOW;
    bool allow = false;
    if (pol) {
        allow = pol->default_allow;
        for (unsigned i = 0; i < pol->nrules; i++)
            if (rule_matches(&pol->rules[i], &p)) {
                allow = pol->rules[i].allow;
                break;
            }
    }
    if (allow)
        return NET_ALLOW;
    return is_syn(&p) ? NET_DENY_RST : NET_DENY;
}

size_t net_build_rst(const uint8_t *syn, size_t len, uint8_t out[NET_RST_LEN])
{
    struct ip4 p;
    if (!parse_ip4(syn, len, &p) || p.proto != IPPROTO_TCP_ || !p.first || p.l4_len < 20)
        return 0;
    const uint8_t *t = p.l4;
    uint32_t doff = (uint32_t)(t[12] >> 4) * 4;
    uint32_t seg_len = doff >= 20 && doff <= p.l4_len ? p.l4_len - doff : 0;
    if (t[13] & TCP_SYN)
        seg_len++;
    if (t[13] & TCP_FIN)
        seg_len++;
    memset(out, 0, NET_RST_LEN);
    memcpy(out, syn + 6, 6);                 /* to the sender */
    memcpy(out + 6, syn, 6);                 /* from the MAC it sent to */
    put16(out + 12, ETH_P_IPV4);
    uint8_t *ip = out + ETH_HLEN;
    ip[0] = 0x45;
    put16(ip + 2, 40);
    put16(ip + 6, 0x4000);                   /* DF */
    ip[8] = 64;
    ip[9] = IPPROTO_TCP_;
    memcpy(ip + 12, p.ip + 16, 4);           /* from the destination */
    memcpy(ip + 16, p.ip + 12, 4);
    put16(ip + 10, net_csum_fold(net_csum_add(0, ip, 20)));
    uint8_t *tcp = ip + 20;
    memcpy(tcp, t + 2, 2);                   /* ports swapped */
    memcpy(tcp + 2, t, 2);
    put32(tcp + 4, 0);
    put32(tcp + 8, be32(t + 4) + seg_len);
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST | TCP_ACK;
    uint8_t pseudo[12];
    memcpy(pseudo, ip + 12, 8);
    pseudo[8] = 0;
    pseudo[9] = IPPROTO_TCP_;
    put16(pseudo + 10, 20);
    put16(tcp + 16, net_csum_fold(net_csum_add(net_csum_add(0, pseudo, 12), tcp, 20)));
    return NET_RST_LEN;
}

int net_policy_check(const struct vmm_net_policy *p)
{
    if (!p)
        return vmm_err(EINVAL, "no policy given");
    if (p->nrules > VMM_NET_MAX_RULES)
        return vmm_err(EINVAL, "%u rules: at most %d", p->nrules, VMM_NET_MAX_RULES);
    if (p->nrules && !p->rules)
        return vmm_err(EINVAL, "%u rules but no rule array", p->nrules);
    for (unsigned i = 0; i < p->nrules; i++) {
        const struct vmm_net_rule *r = &p->rules[i];
        if (r->prefix > 32)
            return vmm_err(EINVAL, "rule %u: prefix /%u: use 0..32", i, r->prefix);
        uint32_t mask = r->prefix ? ~0u << (32 - r->prefix) : 0;
        if (r->addr & ~mask)
            return vmm_err(EINVAL, "rule %u: address 0x%08x has bits set past its /%u prefix: "
                           "give the network's own address", i, r->addr, r->prefix);
        if (r->proto != 0 && r->proto != IPPROTO_ICMP_ && r->proto != IPPROTO_TCP_ &&
            r->proto != IPPROTO_UDP_)
            return vmm_err(EINVAL, "rule %u: protocol %u: use 0 (any), 1 (ICMP), 6 (TCP) or "
                           "17 (UDP)", i, r->proto);
        bool ports = r->port_lo || r->port_hi;
        if (ports && (r->port_lo > r->port_hi || r->port_hi > 65535))
            return vmm_err(EINVAL, "rule %u: ports %u-%u: use lo <= hi <= 65535", i,
                           r->port_lo, r->port_hi);
        bool sports = r->sport_lo || r->sport_hi;
        if (sports && (r->sport_lo > r->sport_hi || r->sport_hi > 65535))
            return vmm_err(EINVAL, "rule %u: source ports %u-%u: use lo <= hi <= 65535", i,
                           r->sport_lo, r->sport_hi);
        if ((ports || sports) && r->proto == IPPROTO_ICMP_)
            return vmm_err(EINVAL, "rule %u: ICMP has no ports: give 0-0", i);
        if (r->replies && r->proto != IPPROTO_TCP_)
            return vmm_err(EINVAL, "rule %u: replies-only rules are for TCP (protocol 6)", i);
    }
    return 0;
}
