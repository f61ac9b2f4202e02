/*
 * testdev.c - an MMIO device for the test guests: a read-only id, eight 64-bit scratch
 * registers, and counters of the writes it took; all of it survives a snapshot.
 *   0x00 u32 id "VMMT"   0x04 u32 version   0x08..0x47 scratch[8]
 *   0x80 u64 writes      0x88 u64 sum of the values written
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "devices.h"

#define TESTDEV_STATE_VERSION 1
#define TESTDEV_SIZE 0x1000
#define TESTDEV_ID 0x544d4d56u   /* "VMMT" little-endian */
#define REG_SCRATCH 0x08
#define REG_SCRATCH_END 0x48
#define REG_WRITES 0x80
#define REG_SUM 0x88
#define REG_END 0x90

struct testdev {
    pthread_mutex_t lock;
    uint64_t scratch[8];
    uint64_t writes, sum;
};

static int testdev_io(void *ctx, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
    struct testdev *t = ctx;
    uint8_t regs[REG_END];
    pthread_mutex_lock(&t->lock);
    if (is_write) {
        if (off >= REG_SCRATCH && off + len <= REG_SCRATCH_END) {
            uint64_t v = 0;
            memcpy((uint8_t *)t->scratch + (off - REG_SCRATCH), data, len);
            memcpy(&v, data, len > 8 ? 8 : len);
            t->writes++;
            t->sum += v;
        }
    } else {
        uint32_t id = TESTDEV_ID, ver = 1;
        memcpy(regs, &id, 4);
        memcpy(regs + 4, &ver, 4);
        memcpy(regs + REG_SCRATCH, t->scratch, sizeof(t->scratch));
        memset(regs + REG_SCRATCH_END, 0, REG_WRITES - REG_SCRATCH_END);
        memcpy(regs + REG_WRITES, &t->writes, 8);
        memcpy(regs + REG_SUM, &t->sum, 8);
        if (off + len <= REG_END)
            memcpy(data, regs + off, len);
        else
            memset(data, 0, len);
    }
    pthread_mutex_unlock(&t->lock);
    return 0;
}

static int testdev_save(void *dev, struct enc *e)
{
    struct testdev *t = dev;
    pthread_mutex_lock(&t->lock);
    enc_map(e, 4);
    enc_kv_uint(e, "v", TESTDEV_STATE_VERSION);
    enc_kv_bin(e, "scratch", t->scratch, sizeof(t->scratch));
    enc_kv_uint(e, "writes", t->writes);
    enc_kv_uint(e, "sum", t->sum);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

static int testdev_load(void *dev, const struct dec_map *m, uint32_t version)
{
    struct testdev *t = dev;
    uint64_t scratch[8], writes, sum;
    int r;
    (void)version;
    if ((r = dec_get_bin_exact(m, "scratch", scratch, sizeof(scratch))) ||
        (r = dec_get_uint(m, "writes", &writes)) || (r = dec_get_uint(m, "sum", &sum)))
        return r;
    pthread_mutex_lock(&t->lock);
    memcpy(t->scratch, scratch, sizeof(scratch));
    t->writes = writes;
    t->sum = sum;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

static void testdev_destroy(void *dev)
{
    struct testdev *t = dev;
    pthread_mutex_destroy(&t->lock);
    free(t);
}

static const struct device_ops testdev_ops = {
    .name = "testdev", .version = TESTDEV_STATE_VERSION,
    .save = testdev_save, .load = testdev_load, .destroy = testdev_destroy,
};

int testdev_create(struct vmm *vm, struct bus *bus, uint64_t base)
{
    struct testdev *t = calloc(1, sizeof(*t));
    if (!t)
        return vmm_err(ENOMEM, "out of memory for the test device");
    pthread_mutex_init(&t->lock, NULL);
    int r = vm_add_device(vm, &testdev_ops, t);
    if (r) {
        testdev_destroy(t);
        return r;
    }
    return bus_add(bus, base, TESTDEV_SIZE, testdev_io, t);
}
