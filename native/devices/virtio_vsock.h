/*
 * virtio_vsock.h - virtio-vsock packets (virtio 1.x, 5.10) and the pure checks on them
 * (virtio_vsock_pkt.c), shared by the device (virtio_vsock.c) and its fuzz target.
 */
#ifndef VMM_VIRTIO_VSOCK_H
#define VMM_VIRTIO_VSOCK_H
#include <stdint.h>
#include <stddef.h>

#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
#define VSOCK_HDR_LEN 44
#define VSOCK_MAX_PKT (64 * 1024)         /* the largest payload either side sends */
#define VSOCK_SHUTDOWN_RCV 1
#define VSOCK_SHUTDOWN_SEND 2
#define VSOCK_EVENT_TRANSPORT_RESET 0

enum vsock_op {
    VSOCK_OP_REQUEST = 1,
    VSOCK_OP_RESPONSE = 2,
    VSOCK_OP_RST = 3,
    VSOCK_OP_SHUTDOWN = 4,
    VSOCK_OP_RW = 5,
    VSOCK_OP_CREDIT_UPDATE = 6,
    VSOCK_OP_CREDIT_REQUEST = 7,
};

struct vsock_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port;
    uint32_t len;
    uint16_t type, op;
    uint32_t flags;
    uint32_t buf_alloc, fwd_cnt;
} __attribute__((packed));

enum vsock_verdict {
    VSOCK_PKT_OK = 0,
    VSOCK_PKT_DROP,     /* not for this device at all (wrong addresses, an RST): ignored */
    VSOCK_PKT_RST,      /* malformed: the connection it names is reset */
};

/* Decodes the header at the start of `buf` (little endian on the wire); -1 if too short. */
int vsock_hdr_parse(const uint8_t *buf, size_t len, struct vsock_hdr *h);
void vsock_hdr_build(const struct vsock_hdr *h, uint8_t out[VSOCK_HDR_LEN]);
/* What a packet from the guest is worth: addresses, type, op, length against what the chain
 * carries after the header. *why names the problem for anything but OK. */
enum vsock_verdict vsock_pkt_check(const struct vsock_hdr *h, uint64_t guest_cid,
                                   uint64_t payload_avail, const char **why);
/* The host's "CONNECT <port>\n" (the newline included in len): 0 and *port, or -1. */
int vsock_parse_connect(const char *line, size_t len, uint32_t *port);
/* How many bytes the peer can take: its buffer less what we sent and it has not consumed;
 * 0 when a hostile peer's numbers say it owes more than its buffer. */
uint32_t vsock_peer_credit(uint32_t peer_buf_alloc, uint32_t peer_fwd_cnt, uint32_t tx_cnt);
#endif
