/*
 * virtq.h - the split virtqueue as the device sees it, walked through the gm layer only.
 *
 * Everything in a ring comes from the guest and is hostile. virtq_pop copies one descriptor
 * chain out of guest memory (so the guest cannot change it under the device) after checking
 * every index, length, address and the chain's length against the queue size and guest RAM;
 * a guest that breaks a rule gets a negative return with a message, and the transport marks
 * the device broken (DEVICE_NEEDS_RESET). Nothing here loops more than the queue size per
 * chain, so a cycle or a runaway avail index can never make the host spin.
 */
#ifndef VMM_VIRTQ_H
#define VMM_VIRTQ_H
#include "../internal.h"

#define VIRTQ_MAX_SIZE 256           /* the largest queue any of our devices offers */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_DESC_F_INDIRECT 4
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTQ_USED_F_NO_NOTIFY 1

/* Feature bits the walker understands (the transport offers them per device). */
#define VIRTIO_RING_F_INDIRECT_DESC 28
#define VIRTIO_RING_F_EVENT_IDX 29

struct virtq {
    struct guest_mem *mem;
    uint16_t num;                    /* queue size, a power of two, <= VIRTQ_MAX_SIZE */
    uint64_t desc, avail, used;      /* guest-physical ring addresses */
    bool indirect;                   /* VIRTIO_RING_F_INDIRECT_DESC negotiated */
    bool event_idx;                  /* VIRTIO_RING_F_EVENT_IDX negotiated */
    uint16_t last_avail;             /* next avail entry the device will take */
    uint16_t used_idx;               /* next used entry the device will fill */
    uint16_t signalled_used;         /* event idx: used_idx when the guest was last notified */
    bool signalled_valid;
};

struct vq_seg {
    uint64_t addr;
    uint32_t len;
    bool write;                      /* device-writable */
};

/* One chain, copied out of the guest's descriptor table: device-readable segments first, then
 * device-writable ones (the walker refuses any other order). */
struct vq_chain {
    uint16_t head;
    uint16_t nseg;
    uint16_t nread;                  /* seg[0..nread) are readable, seg[nread..nseg) writable */
    uint64_t rlen, wlen;             /* total readable / writable bytes */
    struct vq_seg seg[VIRTQ_MAX_SIZE];
};

/* Checks a queue's configuration as the driver set it: size a power of two within max, rings
 * aligned and inside guest RAM. 0 or -EINVAL with a message. */
int virtq_check(const struct virtq *q, uint16_t max);

/* 1: a chain was taken into *c; 0: the guest has made nothing available; <0: the guest broke
 * the ring (message set): the device must stop using the queue. */
int virtq_pop(struct virtq *q, struct vq_chain *c);
/* Puts a chain back as not taken (the device could not serve it yet). */
void virtq_unpop(struct virtq *q);
/* Entries available and not yet taken; <0 when the avail index ran ahead by more than the
 * queue size (a broken ring). */
int virtq_pending(struct virtq *q);
/* Returns the chain to the guest with `len` bytes written into its writable part: the used
 * element first, then the used index with release ordering. */
int virtq_push(struct virtq *q, uint16_t head, uint32_t len);
/* Whether the guest wants an interrupt for what was pushed since the last call (avail flags,
 * or used_event with VIRTIO_RING_F_EVENT_IDX). A full fence orders it after the used index. */
bool virtq_should_notify(struct virtq *q);

/* Copies between a chain's readable or writable bytes and host memory, at a byte offset into
 * that part. Returns the bytes copied (may be short at the chain's end) or <0. */
int64_t vq_chain_read(struct guest_mem *m, const struct vq_chain *c, uint64_t off, void *dst,
                      uint64_t len);
int64_t vq_chain_write(struct guest_mem *m, const struct vq_chain *c, uint64_t off,
                       const void *src, uint64_t len);
/* Host iovecs for `len` bytes of a chain's readable (write=false) or writable part from byte
 * `skip` on, for zero-copy I/O (gm_slice: call gm_done after the I/O). Returns the count, or
 * <0. *got = bytes covered (less than len at the chain's end). */
struct iovec;
int vq_chain_iov(struct guest_mem *m, const struct vq_chain *c, bool write, uint64_t skip,
                 uint64_t len, struct iovec *iov, int max, uint64_t *got);
#endif
