/*
 * virtio_rng.c - entropy for the guest (virtio 1.x, 5.4): one request queue; every chain's
 * device-writable buffers are filled from getrandom(2). A chain is served up to RNG_MAX_CHAIN
 * bytes (the driver asks for a page at a time; a bigger ask gets a short, valid answer).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include "devices.h"
#include "virtio_mmio.h"
#include "../arch/boot.h"

#define RNG_STATE_VERSION 1
#define RNG_QUEUE_SIZE 64
#define RNG_MAX_CHAIN (64 * 1024)
#define VIRTIO_ID_RNG 4

struct rng {
    struct virtio_dev v;      /* first: d->priv points at both */
    struct vq_chain chain;
    uint64_t bytes;
};

static int rng_fill(struct rng *g, const struct vq_chain *c, uint32_t *written)
{
    uint8_t buf[4096];
    uint64_t want = c->wlen < RNG_MAX_CHAIN ? c->wlen : RNG_MAX_CHAIN, done = 0;
    while (done < want) {
        size_t n = want - done < sizeof(buf) ? (size_t)(want - done) : sizeof(buf);
        ssize_t got = getrandom(buf, n, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return vmm_err(errno, "getrandom: %m");
        }
        int64_t w = vq_chain_write(g->v.mem, c, done, buf, (uint64_t)got);
        if (w < 0)
            return (int)w;
        done += (uint64_t)w;
    }
    g->bytes += done;
    *written = (uint32_t)done;
    return 0;
}

static int rng_process(struct virtio_dev *v)
{
    struct rng *g = (struct rng *)v;
    struct virtq *q = virtio_queue(v, 0);
    if (!q)
        return 0;
    int r = 0, served = 0;
    while (served < q->num && (r = virtq_pop(q, &g->chain)) > 0) {
        uint32_t written = 0;
        if (g->chain.nread)
            r = vmm_err(EINVAL, "entropy request has device-readable buffers");
        else
            r = rng_fill(g, &g->chain, &written);
        if (r || (r = virtq_push(q, g->chain.head, written)))
            break;
        served++;
    }
    if (served)
        virtio_notify_used(v, q);
    if (r >= 0 && served == q->num)
        virtio_rekick(v);   /* more may be waiting: come back after the loop's other work */
    return r < 0 ? r : 0;
}

static const struct virtio_ops rng_vops = {
    .device_id = VIRTIO_ID_RNG,
    .features = 1ULL << VIRTIO_RING_F_INDIRECT_DESC,
    .nqueues = 1,
    .queue_max = RNG_QUEUE_SIZE,
    .process = rng_process,
};

static int rng_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)cfg;
    struct rng *g = calloc(1, sizeof(*g));
    if (!g)
        return vmm_err(ENOMEM, "out of memory for virtio-rng");
    d->priv = g;
    int r = virtio_init(&g->v, d, &rng_vops);
    if (r) {
        free(g);
        d->priv = NULL;
    }
    return r;
}

static int rng_save(struct device *d, struct enc *e)
{
    struct rng *g = d->priv;
    enc_map(e, 2);
    enc_kv_uint(e, "v", RNG_STATE_VERSION);
    enc_str(e, "transport");
    virtio_save(&g->v, e);
    return 0;
}

static int rng_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    struct rng *g = d->priv;
    (void)version;
    struct virtio_transport_state *s = malloc(sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory decoding virtio-rng");
    int r = virtio_decode(&g->v, m, s);
    if (r) {
        free(s);
        return r;
    }
    *out = s;
    return 0;
}

static void rng_apply(struct device *d, void *state)
{
    struct rng *g = d->priv;
    virtio_apply(&g->v, state);
    free(state);
}

static int rng_post_load(struct device *d)
{
    struct rng *g = d->priv;
    virtio_post_load(&g->v);
    return 0;
}

static void rng_destroy(struct device *d)
{
    struct rng *g = d->priv;
    if (!g)
        return;
    virtio_destroy(&g->v);
    free(g);
    d->priv = NULL;
}

const struct device_ops virtio_rng_ops = {
    .name = "virtio-rng", .version = RNG_STATE_VERSION, .boot_kind = BOOT_DEV_VIRTIO_MMIO,
    .init = rng_init, .access = virtio_mmio_access, .save = rng_save, .decode = rng_decode,
    .apply = rng_apply, .free_state = free, .post_load = rng_post_load, .destroy = rng_destroy,
};
