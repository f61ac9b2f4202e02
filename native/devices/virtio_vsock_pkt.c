/*
 * virtio_vsock_pkt.c - parsing and checking what the guest and the host send the vsock
 * device: packet headers against the chain that carried them, the host's CONNECT line, and
 * credit arithmetic that a hostile peer's numbers cannot overflow. Pure functions, fuzzed.
 */
#include <stdint.h>
#include <string.h>
#include "virtio_vsock.h"

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

int vsock_hdr_parse(const uint8_t *b, size_t len, struct vsock_hdr *h)
{
    if (len < VSOCK_HDR_LEN)
        return -1;
    h->src_cid = le(b, 8);
    h->dst_cid = le(b + 8, 8);
    h->src_port = (uint32_t)le(b + 16, 4);
    h->dst_port = (uint32_t)le(b + 20, 4);
    h->len = (uint32_t)le(b + 24, 4);
    h->type = (uint16_t)le(b + 28, 2);
    h->op = (uint16_t)le(b + 30, 2);
    h->flags = (uint32_t)le(b + 32, 4);
    h->buf_alloc = (uint32_t)le(b + 36, 4);
    h->fwd_cnt = (uint32_t)le(b + 40, 4);
    return 0;
}

void vsock_hdr_build(const struct vsock_hdr *h, uint8_t o[VSOCK_HDR_LEN])
{
    put(o, h->src_cid, 8);
    put(o + 8, h->dst_cid, 8);
    put(o + 16, h->src_port, 4);
    put(o + 20, h->dst_port, 4);
    put(o + 24, h->len, 4);
    put(o + 28, h->type, 2);
    put(o + 30, h->op, 2);
    put(o + 32, h->flags, 4);
    put(o + 36, h->buf_alloc, 4);
    put(o + 40, h->fwd_cnt, 4);
}

enum vsock_verdict vsock_pkt_check(const struct vsock_hdr *h, uint64_t guest_cid,
                                   uint64_t payload_avail, const char **why)
{
    if (h->src_cid != guest_cid || h->dst_cid != VSOCK_HOST_CID) {
        *why = "addressed from another CID or to one other than the host";
        return VSOCK_PKT_DROP;
    }
    if (h->op == VSOCK_OP_RST) {
        *why = "a reset";   /* never answered, whatever else is wrong with it */
        return h->type == VSOCK_TYPE_STREAM && h->len == 0 ? VSOCK_PKT_OK : VSOCK_PKT_DROP;
    }
    if (h->type != VSOCK_TYPE_STREAM) {
        *why = "not a stream packet";
        return VSOCK_PKT_RST;
    }
    if (h->op < VSOCK_OP_REQUEST || h->op > VSOCK_OP_CREDIT_REQUEST) {
        *why = "unknown operation";
        return VSOCK_PKT_RST;
    }
    if (h->len > VSOCK_MAX_PKT) {
        *why = "payload longer than a packet may be";
        return VSOCK_PKT_RST;
    }
    if (h->len > payload_avail) {
        *why = "payload length past the buffers that carry it";
        return VSOCK_PKT_RST;
    }
    if (h->op != VSOCK_OP_RW && h->len) {
        *why = "payload on a control packet";
        return VSOCK_PKT_RST;
    }
    if (h->op == VSOCK_OP_SHUTDOWN && (h->flags & ~3u)) {
        *why = "unknown shutdown flags";
        return VSOCK_PKT_RST;
    }
    *why = "";
    return VSOCK_PKT_OK;
}

int vsock_parse_connect(const char *line, size_t len, uint32_t *port)
{
    static const char verb[] = "CONNECT ";
    size_t vl = sizeof(verb) - 1;
    if (len < vl + 2 || len > 32 || memcmp(line, verb, vl) != 0 || line[len - 1] != '\n')
        return -1;
    uint64_t v = 0;
    size_t i = vl;
    for (; i < len - 1; i++) {
        if (line[i] < '0' || line[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(line[i] - '0');
        if (v > UINT32_MAX)
            return -1;
    }
    if (i == vl)
        return -1;
    *port = (uint32_t)v;
    return 0;
}

uint32_t vsock_peer_credit(uint32_t peer_buf_alloc, uint32_t peer_fwd_cnt, uint32_t tx_cnt)
{
    uint32_t in_flight = tx_cnt - peer_fwd_cnt;   /* wraps like the counters do */
    return in_flight >= peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
}
