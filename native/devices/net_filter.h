/*
 * net_filter.h - the egress filter of virtio-net (net_filter.c): a pure function from a frame
 * the guest sent and a policy to a verdict, and the TCP reset the device answers a refused
 * connection with. No state, no allocation: unit tested and fuzzed on its own.
 *
 * The order (docs/virtio.md, "virtio-net"):
 *   1. ARP (ethertype 0x0806) and IPv4 UDP to port 67 (DHCP) pass, whatever the policy: the
 *      backend consumes them itself (passt answers or drops every UDP packet to port 67).
 *   2. Anything else that is not IPv4 (IPv6, VLAN tags, ...) and malformed IPv4 is denied.
 *   3. The policy's rules in order: the first whose network holds the destination, whose
 *      protocol matches (0 any) and whose port range holds the destination port (0-0 any)
 *      decides; a rule may also name source ports, and a TCP rule may take only segments with
 *      ACK set ("replies": the guest's SYN+ACK and what follows on a connection the backend
 *      opened to an exposed port; a guest's own connect starts with a SYN without ACK). A rule with ports matches only a TCP or UDP packet that carries
 *      them: never a non-first fragment. No rule matches: the policy's default.
 *   4. No policy yet: deny.
 */
#ifndef VMM_NET_FILTER_H
#define VMM_NET_FILTER_H
#include <stdint.h>
#include <stddef.h>

#define ETH_HLEN 14
#define ETH_P_IPV4 0x0800
#define ETH_P_ARP 0x0806
#define NET_MAX_FRAME (65535 + ETH_HLEN)   /* the largest frame either side carries */
#define NET_RST_LEN (ETH_HLEN + 20 + 20)   /* the reset we build: no options, no payload */

struct vmm_net_rule;
struct vmm_net_policy;

enum net_verdict {
    NET_ALLOW = 0,
    NET_DENY,        /* dropped */
    NET_DENY_RST,    /* a TCP SYN denied: dropped, and the guest is answered with a reset */
};

/* What the policy makes of `frame` (an Ethernet frame without FCS); p NULL: no policy yet. */
enum net_verdict net_filter(const uint8_t *frame, size_t len, const struct vmm_net_policy *p);

/* The TCP RST+ACK that the destination of the SYN in `syn` would send (RFC 9293 3.10.7.1: seq
 * 0, ack = the SYN's seq + its length): Ethernet and IP addresses and ports swapped, IP and
 * TCP checksums set. Returns NET_RST_LEN, or 0 when `syn` is no IPv4 TCP segment. */
size_t net_build_rst(const uint8_t *syn, size_t len, uint8_t out[NET_RST_LEN]);

/* 0, or -EINVAL with a message naming the rule and what to change: prefix <= 32, the address
 * has no bits past the prefix, protocol 0/1/6/17, ports only with 0/6/17 and lo <= hi <= 65535,
 * at most VMM_NET_MAX_RULES rules. */
int net_policy_check(const struct vmm_net_policy *p);

/* The Internet checksum (RFC 1071) of buf, folded into `sum` (start with 0). */
uint32_t net_csum_add(uint32_t sum, const uint8_t *buf, size_t len);
uint16_t net_csum_fold(uint32_t sum);
#endif
