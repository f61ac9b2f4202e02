/*
 * test_virtio.h - a tiny virtio-mmio driver over synthetic guest memory, for the C unit tests
 * and the fuzz targets: a device built without KVM (no VM fd, so doorbells take the MMIO path;
 * no interrupt; no event loop: the test runs the device's pass itself), and helpers that lay
 * out rings and descriptors the way a guest would, or the way a hostile guest would.
 */
#ifndef TEST_VIRTIO_H
#define TEST_VIRTIO_H
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "internal.h"
#include "devices/devices.h"
#include "devices/virtio_mmio.h"

static int passed, failed;
#define CHECK(cond) do { if (cond) passed++; else { failed++; \
    printf("FAIL %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, vmm_last_error()); } } while (0)

#define TV_MEM (4ULL << 20)          /* guest RAM at gpa 0 */
#define TV_RING(q) (0x10000ULL + (uint64_t)(q) * 0x10000)   /* desc, avail, used of queue q */
#define TV_DATA 0x100000ULL          /* buffers from here */

struct tv {
    struct guest_mem mem;
    struct dev_env env;
    struct device d;
    uint16_t num[VIRTIO_MAX_QUEUES];
    uint16_t avail_idx[VIRTIO_MAX_QUEUES];
    uint16_t used_seen[VIRTIO_MAX_QUEUES];
    uint16_t next_desc[VIRTIO_MAX_QUEUES];
};

/* A Unix stream listener at `path` (a stale socket there removed): a device's backend or
 * peer for the tests. -1 on failure. */
static inline int tv_listen(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    unlink(path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 8)) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static inline uint64_t tv_desc(int q) { return TV_RING(q); }
static inline uint64_t tv_avail(int q) { return TV_RING(q) + 0x4000; }
static inline uint64_t tv_used(int q) { return TV_RING(q) + 0x8000; }

static inline uint32_t tv_rd(struct tv *t, uint64_t off)
{
    uint32_t v = 0;
    t->d.ops->access(&t->d, off, (uint8_t *)&v, 4, false, NULL);
    return v;
}

static inline void tv_wr(struct tv *t, uint64_t off, uint32_t v)
{
    struct bus_req req = {0};
    t->d.ops->access(&t->d, off, (uint8_t *)&v, 4, true, &req);
}

static inline void tv_wr64(struct tv *t, uint64_t lo, uint64_t v)
{
    tv_wr(t, lo, (uint32_t)v);
    tv_wr(t, lo + 4, (uint32_t)(v >> 32));
}

/* Builds the device of `ops` on fresh synthetic memory. 0 or the init's error. */
static inline int tv_open(struct tv *t, const struct device_ops *ops,
                          const struct vmm_device_config *cfg, const char *key)
{
    memset(t, 0, sizeof(*t));
    uint64_t gpa = 0, size = TV_MEM;
    if (mem_alloc(&t->mem, &gpa, &size, 1, VMM_MEM_ANON))
        return -1;
    t->env = (struct dev_env){.mem = &t->mem, .loop = NULL, .vm_fd = -1};
    t->d = (struct device){.ops = ops, .type = cfg ? cfg->type : 0, .bus = DEV_BUS_MMIO,
                           .base = 0xd0000000ULL, .size = 0x1000, .env = &t->env};
    snprintf(t->d.key, sizeof(t->d.key), "%s", key);
    int r = ops->init(&t->d, cfg);
    if (r)
        mem_free(&t->mem);
    return r;
}

static inline void tv_close(struct tv *t)
{
    t->d.ops->destroy(&t->d);
    mem_free(&t->mem);
}

static inline struct virtio_dev *tv_vdev(struct tv *t) { return t->d.priv; }

/* The driver's side of start-up: features (those given, plus VERSION_1), every queue of
 * size `num` at TV_RING(q), DRIVER_OK. Returns the status read back. */
static inline uint32_t tv_setup(struct tv *t, uint64_t features, int nqueues, uint16_t num)
{
    tv_wr(t, VIRTIO_MMIO_STATUS, 0);
    tv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    features |= 1ULL << VIRTIO_F_VERSION_1;
    tv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    tv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
    tv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    tv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(features >> 32));
    tv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK);
    for (int q = 0; q < nqueues; q++) {
        uint8_t zero[0x10000] = {0};
        gm_write(&t->mem, TV_RING(q), zero, sizeof(zero));
        tv_wr(t, VIRTIO_MMIO_QUEUE_SEL, (uint32_t)q);
        tv_wr(t, VIRTIO_MMIO_QUEUE_NUM, num);
        tv_wr64(t, VIRTIO_MMIO_QUEUE_DESC_LOW, tv_desc(q));
        tv_wr64(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, tv_avail(q));
        tv_wr64(t, VIRTIO_MMIO_QUEUE_USED_LOW, tv_used(q));
        tv_wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
        t->num[q] = num;
        t->avail_idx[q] = t->used_seen[q] = t->next_desc[q] = 0;
    }
    tv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                                 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    return tv_rd(t, VIRTIO_MMIO_STATUS);
}

static inline void tv_put_desc(struct tv *t, int q, uint16_t i, uint64_t addr, uint32_t len,
                               uint16_t flags, uint16_t next)
{
    uint8_t d[16];
    memcpy(d, &addr, 8);
    memcpy(d + 8, &len, 4);
    memcpy(d + 12, &flags, 2);
    memcpy(d + 14, &next, 2);
    gm_write(&t->mem, tv_desc(q) + 16ULL * i, d, 16);
}

/* Makes descriptor `head` available (ring entry, then the index, as a driver orders them). */
static inline void tv_publish(struct tv *t, int q, uint16_t head)
{
    uint16_t slot = t->avail_idx[q] % t->num[q];
    gm_write(&t->mem, tv_avail(q) + 4 + 2ULL * slot, &head, 2);
    t->avail_idx[q]++;
    gm_store_release16(&t->mem, tv_avail(q) + 2, t->avail_idx[q]);
}

/* A chain of n buffers: bufs[i] = {addr, len, write}; returns its head. Descriptors are taken
 * round-robin from the table. */
struct tv_buf { uint64_t addr; uint32_t len; bool write; };
static inline uint16_t tv_chain(struct tv *t, int q, const struct tv_buf *b, int n)
{
    uint16_t head = t->next_desc[q] % t->num[q];
    for (int i = 0; i < n; i++) {
        uint16_t idx = (uint16_t)((head + i) % t->num[q]);
        uint16_t next = (uint16_t)((head + i + 1) % t->num[q]);
        tv_put_desc(t, q, idx, b[i].addr, b[i].len,
                    (uint16_t)((b[i].write ? VIRTQ_DESC_F_WRITE : 0) |
                               (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0)), next);
    }
    t->next_desc[q] = (uint16_t)(head + n);
    return head;
}

static inline void tv_kick(struct tv *t, int q)
{
    tv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, (uint32_t)q);
    virtio_run(tv_vdev(t));
}

static inline uint16_t tv_used_idx(struct tv *t, int q)
{
    uint16_t v = 0;
    gm_load_acquire16(&t->mem, tv_used(q) + 2, &v);
    return v;
}

/* The next used element not yet seen: 1 and {id, len}, or 0. */
static inline int tv_take_used(struct tv *t, int q, uint32_t *id, uint32_t *len)
{
    if (tv_used_idx(t, q) == t->used_seen[q])
        return 0;
    uint32_t e[2];
    gm_read(&t->mem, tv_used(q) + 4 + 8ULL * (t->used_seen[q] % t->num[q]), e, 8);
    t->used_seen[q]++;
    *id = e[0];
    *len = e[1];
    return 1;
}

static inline bool tv_broken(struct tv *t)
{
    return tv_rd(t, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET;
}
#endif
