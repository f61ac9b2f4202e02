/*
 * testdev.c (test builds) - an MMIO device for the test guests that exercises what real devices
 * need: registers, counters that catch re-executed accesses, and device work done on the event
 * loop (a doorbell by ioeventfd, "DMA" into guest memory through the gm layer, an irqfd).
 *   0x00 u32 id "VMMT"   0x04 u32 version   0x08..0x47 scratch[8]
 *   0x80 u64 writes      0x88 u64 sum of the values written to scratch
 *   0x90 u64 read: ++reads; write: the guest's count of its writes (else a mismatch)
 *   0x98 u64 mismatches
 *   0xa0 u64 DMA address (page aligned, guest RAM)
 *   0xa8 u32 doorbell: each write makes the event loop store ++dma_count at the DMA address and
 *            at DMA address + 8 * (1 + dma_count % 511), then raise the interrupt
 *   0xb0 u64 dma_count
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "../devices.h"

#define TESTDEV_STATE_VERSION 1
#define TESTDEV_ID 0x544d4d56u   /* "VMMT" little-endian */
#define REG_SCRATCH 0x08
#define REG_SCRATCH_END 0x48
#define REG_WRITES 0x80
#define REG_SUM 0x88
#define REG_COUNTER 0x90
#define REG_MISMATCH 0x98
#define REG_DMA_ADDR 0xa0
#define REG_DOORBELL 0xa8
#define REG_DMA_COUNT 0xb0
#define REG_END 0xb8

struct testdev_state {
    uint64_t scratch[8];
    uint64_t writes, sum, reads, cwrites, mismatches, dma_addr, dma_count;
};

struct testdev {
    pthread_mutex_t lock;
    struct testdev_state s;
    struct guest_mem *mem;
    int bell;                 /* eventfd KVM signals on doorbell writes */
    uint64_t bell_addr;
    int vm_fd;
    struct irq *irq;
};

static int testdev_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                          bool is_write, struct bus_req *req)
{
    struct testdev *t = d->priv;
    (void)req;
    uint64_t v = 0;
    memcpy(&v, data, len > 8 ? 8 : len);
    pthread_mutex_lock(&t->lock);
    if (is_write) {
        if (off >= REG_SCRATCH && off + len <= REG_SCRATCH_END) {
            memcpy((uint8_t *)t->s.scratch + (off - REG_SCRATCH), data, len);
            t->s.writes++;
            t->s.sum += v;
        } else if (off == REG_COUNTER) {
            if (v != t->s.cwrites + 1)
                t->s.mismatches++;
            t->s.cwrites++;
        } else if (off == REG_DMA_ADDR && len == 8) {
            t->s.dma_addr = v;
        }
    } else {
        uint8_t regs[REG_END] = {0};
        uint32_t id = TESTDEV_ID, ver = 1;
        if (off == REG_COUNTER)
            t->s.reads++;
        memcpy(regs, &id, 4);
        memcpy(regs + 4, &ver, 4);
        memcpy(regs + REG_SCRATCH, t->s.scratch, sizeof(t->s.scratch));
        memcpy(regs + REG_WRITES, &t->s.writes, 8);
        memcpy(regs + REG_SUM, &t->s.sum, 8);
        memcpy(regs + REG_COUNTER, &t->s.reads, 8);
        memcpy(regs + REG_MISMATCH, &t->s.mismatches, 8);
        memcpy(regs + REG_DMA_ADDR, &t->s.dma_addr, 8);
        memcpy(regs + REG_DMA_COUNT, &t->s.dma_count, 8);
        if (off + len <= REG_END)
            memcpy(data, regs + off, len);
        else
            memset(data, 0, len);
    }
    pthread_mutex_unlock(&t->lock);
    return 0;
}

/* On the event loop: the doorbell's eventfd counts the rings since the last read. */
static void testdev_doorbell(void *ctx, uint32_t events)
{
    struct testdev *t = ctx;
    (void)events;
    uint64_t rings;
    if (read(t->bell, &rings, sizeof(rings)) != sizeof(rings))
        return;
    pthread_mutex_lock(&t->lock);
    for (uint64_t i = 0; i < rings; i++) {
        uint64_t n = ++t->s.dma_count;
        /* a bad address from the guest is the guest's problem: the write is refused, counted */
        if (gm_write(t->mem, t->s.dma_addr, &n, 8) ||
            gm_write(t->mem, t->s.dma_addr + 8 * (1 + n % 511), &n, 8))
            t->s.mismatches++;
    }
    pthread_mutex_unlock(&t->lock);
    if (t->irq)
        irq_trigger(t->irq);
}

static int testdev_save(struct device *d, struct enc *e)
{
    struct testdev *t = d->priv;
    pthread_mutex_lock(&t->lock);
    struct testdev_state s = t->s;
    pthread_mutex_unlock(&t->lock);
    enc_map(e, 9);
    enc_kv_uint(e, "v", TESTDEV_STATE_VERSION);
    enc_kv_bin(e, "scratch", s.scratch, sizeof(s.scratch));
    enc_kv_uint(e, "writes", s.writes);
    enc_kv_uint(e, "sum", s.sum);
    enc_kv_uint(e, "reads", s.reads);
    enc_kv_uint(e, "cwrites", s.cwrites);
    enc_kv_uint(e, "mismatches", s.mismatches);
    enc_kv_uint(e, "dma_addr", s.dma_addr);
    enc_kv_uint(e, "dma_count", s.dma_count);
    return 0;
}

static int testdev_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    (void)d; (void)version;
    struct testdev_state s;
    int r;
    if ((r = dec_get_bin_exact(m, "scratch", s.scratch, sizeof(s.scratch))) ||
        (r = dec_get_uint(m, "writes", &s.writes)) || (r = dec_get_uint(m, "sum", &s.sum)) ||
        (r = dec_get_uint(m, "reads", &s.reads)) || (r = dec_get_uint(m, "cwrites", &s.cwrites)) ||
        (r = dec_get_uint(m, "mismatches", &s.mismatches)) ||
        (r = dec_get_uint(m, "dma_addr", &s.dma_addr)) ||
        (r = dec_get_uint(m, "dma_count", &s.dma_count)))
        return r;
    struct testdev_state *c = malloc(sizeof(*c));
    if (!c)
        return vmm_err(ENOMEM, "out of memory decoding the test device");
    *c = s;
    *out = c;
    return 0;
}

static void testdev_apply(struct device *d, void *state)
{
    struct testdev *t = d->priv;
    pthread_mutex_lock(&t->lock);
    t->s = *(struct testdev_state *)state;
    pthread_mutex_unlock(&t->lock);
    free(state);
}

static void testdev_destroy(struct device *d)
{
    struct testdev *t = d->priv;
    if (!t)
        return;
    if (t->bell >= 0) {
        ioevent_unregister(t->vm_fd, t->bell, t->bell_addr, 4, false);
        close(t->bell);
    }
    pthread_mutex_destroy(&t->lock);
    free(t);
    d->priv = NULL;
}

static int testdev_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)cfg;
    struct testdev *t = calloc(1, sizeof(*t));
    if (!t)
        return vmm_err(ENOMEM, "out of memory for the test device");
    pthread_mutex_init(&t->lock, NULL);
    t->mem = d->env->mem;
    t->irq = d->irq;
    t->vm_fd = d->env->vm_fd;
    t->bell_addr = d->base + REG_DOORBELL;
    d->priv = t;
    int r = 0;
    if ((t->bell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        r = vmm_err(errno, "eventfd for the doorbell: %m");
    else if ((r = ioevent_register(t->vm_fd, t->bell, t->bell_addr, 4, false)) == 0 &&
             (r = evl_add(d->env->loop, t->bell, EPOLLIN, testdev_doorbell, t)))
        ioevent_unregister(t->vm_fd, t->bell, t->bell_addr, 4, false);
    if (r) {
        if (t->bell >= 0)
            close(t->bell);
        t->bell = -1;
        testdev_destroy(d);
    }
    return r;
}

const struct device_ops testdev_ops = {
    .name = "testdev", .version = TESTDEV_STATE_VERSION, .init = testdev_init,
    .access = testdev_access, .save = testdev_save, .decode = testdev_decode,
    .apply = testdev_apply, .free_state = free, .destroy = testdev_destroy,
};
