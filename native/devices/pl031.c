/*
 * pl031.c - the ARM PrimeCell RTC (aarch64): seconds of wall-clock time. The guest reads host
 * time plus the offset it set; a snapshot keeps the offset, so a restored copy reads the time
 * of the day it runs on, as a machine's RTC would. The alarm (match) interrupt is not wired:
 * nothing in a MicroVM sleeps on it. Linux's amba bus matches the driver by the PrimeCell id
 * registers, so those answer.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "devices.h"
#include "../arch/boot.h"

#define PL031_STATE_VERSION 1
enum { RTCDR = 0x00, RTCMR = 0x04, RTCLR = 0x08, RTCCR = 0x0c, RTCIMSC = 0x10, RTCRIS = 0x14,
       RTCMIS = 0x18, RTCICR = 0x1c, ID_BASE = 0xfe0 };
static const uint8_t ids[8] = {0x31, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1};

struct pl031_state {
    int64_t offset;            /* guest seconds minus host seconds */
    uint32_t match, cr, imsc;
};

struct pl031 {
    pthread_mutex_t lock;
    struct pl031_state s;
};

static int64_t host_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec;
}

static int pl031_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                        bool is_write, struct bus_req *req)
{
    struct pl031 *p = d->priv;
    (void)req;
    uint32_t v = 0;
    memcpy(&v, data, len > 4 ? 4 : len);
    pthread_mutex_lock(&p->lock);
    if (is_write) {
        switch (off) {
        case RTCMR: p->s.match = v; break;
        case RTCLR: p->s.offset = (int64_t)v - host_seconds(); break;
        case RTCCR: p->s.cr = v & 1; break;
        case RTCIMSC: p->s.imsc = v & 1; break;
        default: break;            /* RTCICR: no interrupt is ever raised to clear */
        }
    } else {
        uint32_t out = 0;
        if (off == RTCDR)
            out = (uint32_t)(host_seconds() + p->s.offset);
        else if (off == RTCMR)
            out = p->s.match;
        else if (off == RTCLR)
            out = (uint32_t)(host_seconds() + p->s.offset);
        else if (off == RTCCR)
            out = p->s.cr;
        else if (off == RTCIMSC)
            out = p->s.imsc;
        else if (off >= ID_BASE && off < ID_BASE + 32 && off % 4 == 0)
            out = ids[(off - ID_BASE) / 4];
        memset(data, 0, len);
        memcpy(data, &out, len > 4 ? 4 : len);
    }
    pthread_mutex_unlock(&p->lock);
    return 0;
}

static int pl031_save(struct device *d, struct enc *e)
{
    struct pl031 *p = d->priv;
    pthread_mutex_lock(&p->lock);
    struct pl031_state s = p->s;
    pthread_mutex_unlock(&p->lock);
    enc_map(e, 5);
    enc_kv_uint(e, "v", PL031_STATE_VERSION);
    enc_kv_uint(e, "offset", (uint64_t)s.offset);   /* two's complement */
    enc_kv_uint(e, "match", s.match);
    enc_kv_uint(e, "cr", s.cr);
    enc_kv_uint(e, "imsc", s.imsc);
    return 0;
}

static int pl031_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    (void)d; (void)version;
    uint64_t off, match, cr, imsc;
    int r;
    if ((r = dec_get_uint(m, "offset", &off)) || (r = dec_get_uint(m, "match", &match)) ||
        (r = dec_get_uint(m, "cr", &cr)) || (r = dec_get_uint(m, "imsc", &imsc)))
        return r;
    if (match > UINT32_MAX || cr > 1 || imsc > 1)
        return vmm_err(EINVAL, "vmstate pl031: registers out of range");
    struct pl031_state *s = malloc(sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory decoding the RTC");
    *s = (struct pl031_state){(int64_t)off, (uint32_t)match, (uint32_t)cr, (uint32_t)imsc};
    *out = s;
    return 0;
}

static void pl031_apply(struct device *d, void *state)
{
    struct pl031 *p = d->priv;
    pthread_mutex_lock(&p->lock);
    p->s = *(struct pl031_state *)state;
    pthread_mutex_unlock(&p->lock);
    free(state);
}

static int pl031_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)cfg;
    struct pl031 *p = calloc(1, sizeof(*p));
    if (!p)
        return vmm_err(ENOMEM, "out of memory for the RTC");
    pthread_mutex_init(&p->lock, NULL);
    p->s.cr = 1;
    d->priv = p;
    return 0;
}

static void pl031_destroy(struct device *d)
{
    struct pl031 *p = d->priv;
    if (p)
        pthread_mutex_destroy(&p->lock);
    free(p);
    d->priv = NULL;
}

const struct device_ops pl031_ops = {
    .name = "pl031", .version = PL031_STATE_VERSION, .boot_kind = BOOT_DEV_PL031,
    .init = pl031_init, .access = pl031_access, .save = pl031_save, .decode = pl031_decode,
    .apply = pl031_apply, .free_state = free, .destroy = pl031_destroy,
};
