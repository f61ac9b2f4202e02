/*
 * virtio_blk.c - virtio-blk (virtio 1.x, 5.2) over a layered disk: a read-only base image
 * shared by every VM of an image, sealed layers referenced by snapshots, and a writable layer
 * on top (virtio_blk.h has the file format, docs/virtio.md the rules).
 *
 * Snapshots. A snapshot is exactly the disk the VM held, or the call fails. It references
 * layers, never copies them, so the VM must never write into what a snapshot references: when
 * a snapshot is taken of a VM that wrote since the last one, its writable layer is made durable,
 * sealed (immutable, named by id + checksum) and moved into the snapshot's directory, and a fresh
 * writable layer is started at the configured overlay path. A failed snapshot moves it back. A
 * restore opens the recorded chain read-only, checks every layer, and writes into a fresh layer
 * at the overlay the host configures for the new VM.
 *
 * Requests are served on the event loop with preadv/pwritev straight into guest memory: a pause
 * parks the loop between passes, so no request is ever half done when state is read.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/openat2.h>
#include "devices.h"
#include "virtio_mmio.h"
#include "virtio_blk.h"
#include "../arch/boot.h"

#define BLK_STATE_VERSION 1
#define BLK_QUEUE_SIZE 256
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define VIRTIO_BLK_ID_BYTES 20
#define SECTOR 512ULL

enum src_kind { SRC_ZERO, SRC_BASE, SRC_LAYER };

struct blk {
    struct virtio_dev v;             /* first: d->priv points at both */
    bool ro;
    uint64_t size;                   /* capacity in bytes, a multiple of 512 */
    int base_fd;                     /* -1: a blank disk */
    uint64_t base_size;
    uint32_t base_crc;
    char *overlay;                   /* absolute path of the writable layer */
    struct blk_layer top;            /* fd -1 when read-only */
    bool top_created;                /* this device made the file: it goes when unused */
    struct blk_layer lower[BLK_MAX_LAYERS];   /* sealed, newest first */
    char *lower_path[BLK_MAX_LAYERS];         /* where each was opened (messages) */
    int nlower;
    uint64_t write_gen;              /* write requests ever served: what a state blob pins */
    /* a seal made by the snapshot in progress, undone if it fails */
    bool sealing;
    char sealed_name[48];
    struct blk_layer fresh;
    /* per request */
    struct vq_chain chain;
    struct iovec iov[VIRTQ_MAX_SIZE];
    uint8_t bounce[BLK_BLOCK];
    char serial[VIRTIO_BLK_ID_BYTES];
};

/* ---------- where a block lives ---------- */

static enum src_kind source(const struct blk *b, uint64_t block, int *layer)
{
    if (b->top.fd >= 0 && blk_has(&b->top, block)) {
        *layer = -1;
        return SRC_LAYER;
    }
    for (int i = 0; i < b->nlower; i++)
        if (blk_has(&b->lower[i], block)) {
            *layer = i;
            return SRC_LAYER;
        }
    return b->base_fd >= 0 && block * BLK_BLOCK < b->base_size ? SRC_BASE : SRC_ZERO;
}

static const struct blk_layer *layer_of(const struct blk *b, int layer)
{
    return layer < 0 ? &b->top : &b->lower[layer];
}

/* ---------- the request's data as iovecs over guest memory ---------- */

struct span { struct iovec *iov; int n; uint64_t len; };

/* The request's data segments [first, end) of the chain as host iovecs, from byte `skip` on
 * and `len` bytes long. */
static int data_iov(struct blk *b, uint16_t first, uint16_t end, uint64_t skip, uint64_t len,
                    bool write, struct span *s)
{
    s->iov = b->iov;
    s->n = 0;
    s->len = 0;
    for (uint16_t i = first; i < end && s->len < len; i++) {
        const struct vq_seg *g = &b->chain.seg[i];
        if (skip >= g->len) {
            skip -= g->len;
            continue;
        }
        uint64_t n = g->len - skip;
        if (n > len - s->len)
            n = len - s->len;
        void *p = gm_slice(b->v.mem, g->addr + skip, n, write);
        if (!p)
            return vmm_err(EFAULT, "a request buffer left guest RAM");
        b->iov[s->n++] = (struct iovec){p, (size_t)n};
        s->len += n;
        skip = 0;
    }
    return 0;
}

/* iovecs for [off, off + len) of a span, into out (at most VIRTQ_MAX_SIZE of them). */
static int sub_iov(const struct span *s, uint64_t off, uint64_t len, struct iovec *out)
{
    int n = 0;
    for (int i = 0; i < s->n && len; i++) {
        if (off >= s->iov[i].iov_len) {
            off -= s->iov[i].iov_len;
            continue;
        }
        size_t take = s->iov[i].iov_len - off;
        if (take > len)
            take = (size_t)len;
        out[n++] = (struct iovec){(uint8_t *)s->iov[i].iov_base + off, take};
        len -= take;
        off = 0;
    }
    return n;
}

static int rw_full(int fd, struct iovec *iov, int n, uint64_t off, bool write)
{
    while (n > 0) {
        ssize_t got = write ? pwritev(fd, iov, n, (off_t)off) : preadv(fd, iov, n, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return vmm_err(got < 0 ? errno : EIO, "%s: %s", write ? "pwritev" : "preadv",
                           got < 0 ? strerror(errno) : "short (a file was truncated)");
        off += (uint64_t)got;
        while (n > 0 && (size_t)got >= iov->iov_len) {
            got -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + got;
            iov->iov_len -= (size_t)got;
        }
    }
    return 0;
}

/* Reads disk bytes [pos, pos + len) into span bytes [soff, soff + len), run by run. */
static int disk_read(struct blk *b, const struct span *s, uint64_t soff, uint64_t pos,
                     uint64_t len)
{
    struct iovec io[VIRTQ_MAX_SIZE];
    while (len) {
        uint64_t block = pos / BLK_BLOCK;
        int layer;
        enum src_kind k = source(b, block, &layer);
        /* extend the run while the next blocks come from the same place */
        uint64_t run = (block + 1) * BLK_BLOCK - pos;
        while (run < len) {
            int l2;
            if (source(b, (pos + run) / BLK_BLOCK, &l2) != k || (k == SRC_LAYER && l2 != layer))
                break;
            run += BLK_BLOCK;
        }
        if (run > len)
            run = len;
        int n = sub_iov(s, soff, run, io);
        int r = 0;
        if (k == SRC_ZERO)
            for (int i = 0; i < n; i++)
                memset(io[i].iov_base, 0, io[i].iov_len);
        else if (k == SRC_BASE) {
            uint64_t in_base = b->base_size - pos < run ? b->base_size - pos : run;
            int nb = sub_iov(s, soff, in_base, io);
            r = rw_full(b->base_fd, io, nb, pos, false);
            if (!r && in_base < run) {   /* the base ends inside this run: zeros after it */
                n = sub_iov(s, soff + in_base, run - in_base, io);
                for (int i = 0; i < n; i++)
                    memset(io[i].iov_base, 0, io[i].iov_len);
            }
        } else {
            const struct blk_layer *l = layer_of(b, layer);
            r = rw_full(l->fd, io, n, l->data_off + pos, false);
        }
        if (r)
            return r;
        pos += run;
        soff += run;
        len -= run;
    }
    return 0;
}

/* Writes span bytes [soff, soff + len) to disk bytes [pos, ...): into the top layer, filling a
 * partly written block from below first (copy on write). */
static int disk_write(struct blk *b, const struct span *s, uint64_t soff, uint64_t pos,
                      uint64_t len)
{
    struct iovec io[VIRTQ_MAX_SIZE];
    struct blk_layer *t = &b->top;
    while (len) {
        uint64_t block = pos / BLK_BLOCK, in_block = pos % BLK_BLOCK;
        uint64_t n = BLK_BLOCK - in_block < len ? BLK_BLOCK - in_block : len;
        int r = 0;
        if (n < BLK_BLOCK && !blk_has(t, block)) {
            /* partial block: the rest of it from where it lives now */
            struct iovec one = {b->bounce, BLK_BLOCK};
            struct span bs = {&one, 1, BLK_BLOCK};
            uint64_t bstart = block * BLK_BLOCK, blen = BLK_BLOCK;
            if (bstart + blen > b->size)
                blen = b->size - bstart;
            memset(b->bounce, 0, BLK_BLOCK);
            r = disk_read(b, &bs, 0, bstart, blen);
            if (!r) {
                int k = sub_iov(s, soff, n, io);
                uint64_t at = in_block;
                for (int i = 0; i < k; i++) {
                    memcpy(b->bounce + at, io[i].iov_base, io[i].iov_len);
                    at += io[i].iov_len;
                }
                struct iovec w = {b->bounce, BLK_BLOCK};
                r = rw_full(t->fd, &w, 1, t->data_off + bstart, true);
            }
        } else {
            /* whole blocks, or a block the top holds already: straight from guest memory */
            while (n < len && (n + pos) % BLK_BLOCK == 0 && len - n >= BLK_BLOCK)
                n += BLK_BLOCK;
            int k = sub_iov(s, soff, n, io);
            r = rw_full(t->fd, io, k, t->data_off + pos, true);
        }
        if (r)
            return r;
        for (uint64_t x = block; x <= (pos + n - 1) / BLK_BLOCK; x++)
            blk_set(t, x);
        t->data_dirty = true;
        pos += n;
        soff += n;
        len -= n;
    }
    return 0;
}

/* ---------- requests ---------- */

/* One request: its status, or <0 when the chain cannot be a request at all (no header or no
 * status byte: a broken driver). *written = bytes put into the writable part. */
static int serve(struct blk *b, uint32_t *written)
{
    const struct vq_chain *c = &b->chain;
    struct { uint32_t type, reserved; uint64_t sector; } h;
    *written = 0;
    if (c->rlen < sizeof(h) || c->wlen < 1)
        return vmm_err(EINVAL, "block request without a header or a status byte");
    if (vq_chain_read(b->v.mem, c, 0, &h, sizeof(h)) != sizeof(h))
        return vmm_err(EFAULT, "block request header unreadable");
    uint64_t in_len = c->wlen - 1, out_len = c->rlen - sizeof(h);
    struct span s;
    int r;
    uint8_t status = VIRTIO_BLK_S_OK;
    uint64_t pos = h.sector * SECTOR;
    switch (h.type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
        bool in = h.type == VIRTIO_BLK_T_IN;
        uint64_t len = in ? in_len : out_len;
        if (len % SECTOR || h.sector > b->size / SECTOR || len > b->size - pos ||
            (!in && b->ro)) {
            status = VIRTIO_BLK_S_IOERR;
            break;
        }
        if (in)
            r = data_iov(b, c->nread, c->nseg, 0, len, true, &s);
        else
            r = data_iov(b, 0, c->nread, sizeof(h), len, false, &s);
        if (r)
            return r;
        r = in ? disk_read(b, &s, 0, pos, len) : disk_write(b, &s, 0, pos, len);
        if (r) {
            status = VIRTIO_BLK_S_IOERR;
            len = 0;
        } else if (!in) {
            b->write_gen++;
        }
        if (in)
            *written = (uint32_t)len;
        if ((r = gm_done(b->v.mem)))
            return r;
        break;
    }
    case VIRTIO_BLK_T_FLUSH:
        if (b->top.fd >= 0 && blk_layer_flush(&b->top))
            status = VIRTIO_BLK_S_IOERR;
        break;
    case VIRTIO_BLK_T_GET_ID: {
        uint64_t n = in_len < VIRTIO_BLK_ID_BYTES ? in_len : VIRTIO_BLK_ID_BYTES;
        int64_t w = vq_chain_write(b->v.mem, c, 0, b->serial, n);
        if (w < 0)
            return (int)w;
        *written = (uint32_t)w;
        break;
    }
    default:
        status = VIRTIO_BLK_S_UNSUPP;
    }
    int64_t w = vq_chain_write(b->v.mem, c, c->wlen - 1, &status, 1);
    if (w != 1)
        return w < 0 ? (int)w : vmm_err(EFAULT, "block status byte unwritable");
    *written += 1;
    return 0;
}

static int blk_process(struct virtio_dev *v)
{
    struct blk *b = (struct blk *)v;
    struct virtq *q = virtio_queue(v, 0);
    if (!q)
        return 0;
    int r = 0, served = 0;
    while (served < q->num && (r = virtq_pop(q, &b->chain)) > 0) {
        uint32_t written;
        if ((r = serve(b, &written)) || (r = virtq_push(q, b->chain.head, written)))
            break;
        served++;
    }
    if (served)
        virtio_notify_used(v, q);
    if (r >= 0 && served == q->num)
        virtio_rekick(v);
    return r < 0 ? r : 0;
}

/* ---------- set-up ---------- */

static int absolute(const char *path, char **out)
{
    char dir[PATH_MAX], base[PATH_MAX], real[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    snprintf(base, sizeof(base), "%s", path);
    if (!realpath(dirname(dir), real))
        return vmm_err(errno, "directory of the disk overlay %s: %m", path);
    const char *name = basename(base);
    if (!*name || !strcmp(name, ".") || !strcmp(name, "..") || !strcmp(name, "/"))
        return vmm_err(EINVAL, "disk overlay %s does not name a file", path);
    if (asprintf(out, "%s/%s", real, name) < 0)
        return vmm_err(ENOMEM, "out of memory");
    return 0;
}

static const struct virtio_ops blk_vops_rw = {
    .device_id = VIRTIO_ID_BLOCK,
    .features = 1ULL << VIRTIO_RING_F_INDIRECT_DESC | 1ULL << VIRTIO_BLK_F_SEG_MAX |
                1ULL << VIRTIO_BLK_F_FLUSH,
    .nqueues = 1, .queue_max = BLK_QUEUE_SIZE, .process = blk_process,
};
static const struct virtio_ops blk_vops_ro = {
    .device_id = VIRTIO_ID_BLOCK,
    .features = 1ULL << VIRTIO_RING_F_INDIRECT_DESC | 1ULL << VIRTIO_BLK_F_SEG_MAX |
                1ULL << VIRTIO_BLK_F_FLUSH | 1ULL << VIRTIO_BLK_F_RO,
    .nqueues = 1, .queue_max = BLK_QUEUE_SIZE, .process = blk_process,
};

static void blk_destroy(struct device *d);

static int open_base(struct blk *b, const char *path)
{
    b->base_fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (b->base_fd < 0)
        return vmm_err(errno, "disk base image %s: %m", path);
    struct stat st;
    if (fstat(b->base_fd, &st) < 0 || !S_ISREG(st.st_mode))
        return vmm_err(EINVAL, "disk base image %s is not a regular file", path);
    b->base_size = (uint64_t)st.st_size;
    if (b->base_size % SECTOR)
        return vmm_err(EINVAL, "disk base image %s is %llu bytes, not a whole number of "
                       "512-byte sectors", path, (unsigned long long)b->base_size);
    return blk_base_fingerprint(b->base_fd, b->base_size, &b->base_crc);
}

static int blk_init(struct device *d, const struct vmm_device_config *cfg)
{
    struct blk *b = calloc(1, sizeof(*b));
    if (!b)
        return vmm_err(ENOMEM, "out of memory for virtio-blk");
    d->priv = b;
    b->base_fd = -1;
    b->top.fd = b->fresh.fd = -1;
    b->v.kick = -1;
    b->ro = cfg->read_only;
    int r = 0;
    if (cfg->size > BLK_MAX_SIZE)
        r = vmm_err(EINVAL, "disk size cap %llu bytes is above the limit of 32 GiB",
                    cfg->size);
    else if (cfg->size % SECTOR)
        r = vmm_err(EINVAL, "disk size cap %llu is not a whole number of 512-byte sectors",
                    cfg->size);
    else if (!cfg->path && !cfg->size)
        r = vmm_err(EINVAL, "a disk needs a base image (path) or a size");
    else if (b->ro && cfg->overlay)
        r = vmm_err(EINVAL, "a read-only disk has no overlay");
    else if (!b->ro && !cfg->overlay)
        r = vmm_err(EINVAL, "a writable disk needs an overlay file (or read_only)");
    if (!r && cfg->path)
        r = open_base(b, cfg->path);
    if (!r) {
        b->size = cfg->size ? cfg->size : b->base_size;
        if (b->base_size > b->size)
            r = vmm_err(EINVAL, "disk base image %s is %llu bytes, above the disk's size cap "
                        "(%llu)", cfg->path, (unsigned long long)b->base_size,
                        (unsigned long long)b->size);
        else if (b->size > BLK_MAX_SIZE)
            r = vmm_err(EINVAL, "disk base image %s is %llu bytes, above the limit of 32 GiB",
                        cfg->path, (unsigned long long)b->size);
        else if (b->size == 0)
            r = vmm_err(EINVAL, "disk base image %s is empty", cfg->path);
    }
    if (!r && !b->ro && !(r = absolute(cfg->overlay, &b->overlay))) {
        r = blk_layer_create(b->overlay, b->size, &b->top);
        b->top_created = b->top.fd >= 0;
    }
    snprintf(b->serial, sizeof(b->serial), "vmmd-blk%u", d->id);
    if (!r) {
        uint64_t sectors = b->size / SECTOR;
        uint32_t seg_max = BLK_QUEUE_SIZE - 2;
        memcpy(b->v.config, &sectors, 8);          /* capacity */
        memcpy(b->v.config + 12, &seg_max, 4);     /* seg_max */
        b->v.config_len = 24;
        r = virtio_init(&b->v, d, b->ro ? &blk_vops_ro : &blk_vops_rw);
        if (r)
            b->v.kick = -1;
    }
    if (r)
        blk_destroy(d);
    return r;
}

static void drop_top_if_unused(struct blk *b)
{
    /* a layer this device created and nothing wrote is no disk state: it goes */
    struct stat a, c;
    if (b->top_created && b->top.fd >= 0 && b->top.blocks == 0 && fstat(b->top.fd, &a) == 0 &&
        lstat(b->overlay, &c) == 0 && a.st_dev == c.st_dev && a.st_ino == c.st_ino)
        unlink(b->overlay);
}

static void blk_destroy(struct device *d)
{
    struct blk *b = d->priv;
    if (!b)
        return;
    if (b->v.kick >= 0)
        virtio_destroy(&b->v);
    drop_top_if_unused(b);
    blk_layer_close(&b->top);
    blk_layer_close(&b->fresh);
    for (int i = 0; i < b->nlower; i++) {
        blk_layer_close(&b->lower[i]);
        free(b->lower_path[i]);
    }
    if (b->base_fd >= 0)
        close(b->base_fd);
    free(b->overlay);
    free(b);
    d->priv = NULL;
}

/* ---------- snapshots: sealing the writable layer ---------- */

static bool same_file(int fd, int dirfd, const char *path)
{
    struct stat a, c;
    return fstat(fd, &a) == 0 && fstatat(dirfd, path, &c, AT_SYMLINK_NOFOLLOW) == 0 &&
           a.st_dev == c.st_dev && a.st_ino == c.st_ino;
}

/* Seals the top layer into the snapshot directory and starts a fresh one at the overlay path.
 * Only when the VM wrote since the last seal: otherwise the chain is already the disk. */
static int seal_top(struct blk *b, const struct dev_snap *s, const char *key)
{
    if (b->ro || b->top.blocks == 0)
        return 0;
    if (b->nlower == BLK_MAX_LAYERS)
        return vmm_err(ELOOP, "the disk already has %d sealed layers: a deeper chain is not "
                       "supported", BLK_MAX_LAYERS);
    if (!same_file(b->top.fd, AT_FDCWD, b->overlay))
        return vmm_err(ESTALE, "disk overlay %s is no longer the file this VM writes (moved "
                       "or replaced): the snapshot cannot name the disk", b->overlay);
    snprintf(b->sealed_name, sizeof(b->sealed_name), "%s.disk", key);
    int r = blk_layer_seal(&b->top);
    if (r)
        return vmm_err_ctx(r, "sealing disk overlay %s", b->overlay);
    if (syscall(SYS_renameat2, AT_FDCWD, b->overlay, s->dfd, b->sealed_name, 1 /* NOREPLACE */)) {
        r = vmm_err(errno, "moving the sealed disk layer %s into %s/%s: %m%s", b->overlay,
                    s->dir, b->sealed_name, errno == EXDEV ? " (the overlay and the snapshot "
                    "must be on one filesystem: a snapshot moves the layer, it never copies it)"
                    : "");
        blk_layer_unseal(&b->top);
        return r;
    }
    if ((r = blk_layer_create(b->overlay, b->size, &b->fresh))) {
        if (b->fresh.fd >= 0 && same_file(b->fresh.fd, AT_FDCWD, b->overlay))
            unlink(b->overlay);
        blk_layer_close(&b->fresh);
        if (syscall(SYS_renameat2, s->dfd, b->sealed_name, AT_FDCWD, b->overlay, 1) == 0)
            blk_layer_unseal(&b->top);
        return r;
    }
    /* the chain now: fresh on top, the sealed layer first below it */
    memmove(&b->lower[1], &b->lower[0], sizeof(b->lower[0]) * (size_t)b->nlower);
    memmove(&b->lower_path[1], &b->lower_path[0], sizeof(char *) * (size_t)b->nlower);
    b->lower[0] = b->top;
    b->lower_path[0] = NULL;
    if (asprintf(&b->lower_path[0], "%s/%s", s->dir, b->sealed_name) < 0)
        b->lower_path[0] = NULL;
    b->nlower++;
    b->top = b->fresh;
    b->fresh = (struct blk_layer){.fd = -1};
    b->sealing = true;
    return 0;
}

static void blk_snapshot_done(struct device *d, int result)
{
    struct blk *b = d->priv;
    if (!b->sealing)
        return;
    b->sealing = false;
    if (result == 0)
        return;
    /* The snapshot failed: nothing references the sealed layer, so it becomes the writable
     * layer again (the VM was paused: the fresh one is empty). If it cannot be moved back, the
     * VM keeps its chain as it is, which is still exactly its disk. */
    const struct dev_snap *s = d->env->snap;
    if (!s || !same_file(b->top.fd, AT_FDCWD, b->overlay) || b->top.blocks)
        return;
    if (unlink(b->overlay) < 0)
        return;
    if (syscall(SYS_renameat2, s->dfd, b->sealed_name, AT_FDCWD, b->overlay, 1) < 0) {
        struct blk_layer again;
        if (blk_layer_create(b->overlay, b->size, &again) == 0) {
            blk_layer_close(&b->top);
            b->top = again;
        } else {
            blk_layer_close(&again);
        }
        return;
    }
    blk_layer_close(&b->top);
    b->top = b->lower[0];
    free(b->lower_path[0]);
    memmove(&b->lower[0], &b->lower[1], sizeof(b->lower[0]) * (size_t)(b->nlower - 1));
    memmove(&b->lower_path[0], &b->lower_path[1], sizeof(char *) * (size_t)(b->nlower - 1));
    b->nlower--;
    blk_layer_unseal(&b->top);
}

/* ---------- state ---------- */

static int save_layers(struct blk *b, struct enc *e, const struct dev_snap *s)
{
    enc_array(e, (uint32_t)b->nlower);
    for (int i = 0; i < b->nlower; i++) {
        const struct blk_layer *l = &b->lower[i];
        char path[PATH_MAX];
        if (s && i == 0 && b->sealing) {
            snprintf(path, sizeof(path), "%s", b->sealed_name);   /* beside this vmstate */
        } else if (s) {
            /* where the layer is now (its directory may have been renamed since) */
            int r = blk_fd_path(l->fd, path, sizeof(path));
            if (r)
                return r;
            if (!same_file(l->fd, AT_FDCWD, path))
                return vmm_err(ESTALE, "disk layer %s is no longer reachable at its path", path);
        } else {
            path[0] = 0;   /* state without a snapshot names layers by id only */
        }
        enc_map(e, 3);
        enc_kv_bin(e, "id", l->id, 16);
        enc_kv_uint(e, "sum", l->checksum);
        enc_kv_str(e, "path", path);
    }
    return 0;
}

static int blk_save(struct device *d, struct enc *e)
{
    struct blk *b = d->priv;
    const struct dev_snap *s = d->env->snap;
    int r;
    if (s && (r = seal_top(b, s, d->key)))
        return r;
    enc_map(e, s ? 8 : 9);
    enc_kv_uint(e, "v", BLK_STATE_VERSION);
    enc_str(e, "transport");
    virtio_save(&b->v, e);
    enc_kv_uint(e, "size", b->size);
    enc_kv_uint(e, "ro", b->ro);
    enc_kv_uint(e, "base_size", b->base_fd >= 0 ? b->base_size : 0);
    enc_kv_uint(e, "base_crc", b->base_fd >= 0 ? b->base_crc : 0);
    enc_kv_uint(e, "write_gen", b->write_gen);
    enc_str(e, "layers");
    if ((r = save_layers(b, e, s)))
        return r;
    if (!s) {
        /* a state blob, not a snapshot: it pins the live layer as it is now */
        enc_str(e, "live");
        enc_map(e, 2);
        enc_kv_bin(e, "id", b->top.id, 16);
        enc_kv_uint(e, "gen", b->write_gen);
    }
    return 0;
}

struct blk_state {
    struct virtio_transport_state t;
    bool restore;                    /* from a snapshot: the chain replaces the device's */
    uint64_t write_gen;
    int nlayers;
    struct blk_layer layers[BLK_MAX_LAYERS];
    char *paths[BLK_MAX_LAYERS];
};

static void blk_free_state(void *p)
{
    struct blk_state *st = p;
    if (!st)
        return;
    for (int i = 0; i < st->nlayers; i++) {
        blk_layer_close(&st->layers[i]);
        free(st->paths[i]);
    }
    free(st);
}

static int openat2_(int dirfd, const char *path, uint64_t flags, uint64_t resolve)
{
    struct open_how how = {.flags = flags, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

/* A layer named in a snapshot: a bare name beside the vmstate, or an absolute path (beneath
 * the restore's root when it has one); never through a symlink; a regular file. */
static int open_layer_file(const struct dev_snap *s, const char *path, char *where, size_t wlen)
{
    uint64_t resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int dirfd = -1, fd;
    const char *name;
    char dir[PATH_MAX];
    if (!strchr(path, '/')) {
        if (!*path || !strcmp(path, ".") || !strcmp(path, ".."))
            return vmm_err(EINVAL, "disk layer name '%s' is not a file name", path);
        dirfd = dup(s->dfd);
        name = path;
        snprintf(where, wlen, "%s/%s", s->dir, path);
    } else {
        if (path[0] != '/')
            return vmm_err(EINVAL, "disk layer path %s is neither a name nor absolute", path);
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        *slash = 0;
        name = path + (slash - dir) + 1;
        snprintf(where, wlen, "%s", path);
        if (s->root) {
            char real[PATH_MAX];
            if (!realpath(s->root, real))
                return vmm_err(errno, "snapshot root %s: %m", s->root);
            size_t n = strlen(real);
            if (strncmp(dir, real, n) != 0 || (dir[n] != '/' && dir[n] != 0))
                return vmm_err(EXDEV, "disk layer %s is not beneath the snapshot root %s", path,
                               real);
            int rfd = open(real, O_PATH | O_DIRECTORY | O_CLOEXEC);
            if (rfd < 0)
                return vmm_err(errno, "snapshot root %s: %m", real);
            dirfd = openat2_(rfd, dir[n] ? dir + n + 1 : ".", O_PATH | O_DIRECTORY | O_CLOEXEC,
                             resolve | RESOLVE_BENEATH);
            close(rfd);
        } else {
            dirfd = openat2_(AT_FDCWD, *dir ? dir : "/", O_PATH | O_DIRECTORY | O_CLOEXEC,
                             resolve);
        }
    }
    if (dirfd < 0)
        return vmm_err(errno, "directory of disk layer %s: %m%s", where,
                       errno == ELOOP ? " (layer paths are never followed through a symlink)"
                                      : "");
    if (!*name || !strcmp(name, ".") || !strcmp(name, "..")) {
        close(dirfd);
        return vmm_err(EINVAL, "disk layer path %s does not name a file", where);
    }
    fd = open_regular(dirfd, name, O_RDONLY | O_NONBLOCK, where);
    close(dirfd);
    if (fd == -ENOENT)
        return vmm_err(ENOENT, "disk layer %s is missing: the snapshot holding it was deleted "
                       "or moved", where);
    return fd;
}

static int decode_layers(struct blk *b, const struct dev_snap *s, const struct dec_map *m,
                         struct blk_state *st)
{
    struct dec_val arr;
    int r = dec_get(m, "layers", DEC_ARRAY, &arr);
    if (r)
        return r;
    if (arr.u > BLK_MAX_LAYERS)
        return vmm_err(EINVAL, "disk has %llu layers, at most %d", (unsigned long long)arr.u,
                       BLK_MAX_LAYERS);
    const uint8_t *p = arr.p;
    for (uint64_t i = 0; i < arr.u; i++) {
        struct dec_val one;
        struct dec_map lm;
        uint8_t id[16];
        uint64_t sum;
        char path[PATH_MAX], where[PATH_MAX];
        if ((r = dec_next(&p, arr.end, &one)) || (r = dec_as_map(&one, &lm, "disk layer")) ||
            (r = dec_get_bin_exact(&lm, "id", id, 16)) || (r = dec_get_uint(&lm, "sum", &sum)) ||
            (r = dec_get_str(&lm, "path", path, sizeof(path))))
            return r;
        if (sum > UINT32_MAX)
            return vmm_err(EINVAL, "disk layer %llu: checksum out of range",
                           (unsigned long long)i);
        if (!s) {
            /* a state blob: the chain must be this device's own, layer for layer */
            if ((int)i >= b->nlower || memcmp(b->lower[i].id, id, 16) != 0 ||
                b->lower[i].checksum != sum)
                return vmm_err(ESTALE, "the state's disk layers are not this VM's: a disk is "
                               "restored from a snapshot, not from a state blob");
            continue;
        }
        int fd = open_layer_file(s, path, where, sizeof(where));
        if (fd < 0)
            return fd;
        struct blk_layer *l = &st->layers[st->nlayers];
        r = blk_layer_open_sealed(fd, b->size, id, (uint32_t)sum, where, l);
        st->nlayers++;
        if (r)
            return r;
        if (!(st->paths[st->nlayers - 1] = strdup(where)))
            return vmm_err(ENOMEM, "out of memory");
    }
    if (!s && arr.u != (uint64_t)b->nlower)
        return vmm_err(ESTALE, "the state's disk layers are not this VM's: a disk is restored "
                       "from a snapshot, not from a state blob");
    return 0;
}

static int blk_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    struct blk *b = d->priv;
    const struct dev_snap *s = d->env->snap;
    (void)version;
    struct blk_state *st = calloc(1, sizeof(*st));
    if (!st)
        return vmm_err(ENOMEM, "out of memory decoding virtio-blk");
    uint64_t size, ro, bsize, bcrc;
    struct dec_map live;
    int r;
    if ((r = virtio_decode(&b->v, m, &st->t)) || (r = dec_get_uint(m, "size", &size)) ||
        (r = dec_get_uint(m, "ro", &ro)) || (r = dec_get_uint(m, "base_size", &bsize)) ||
        (r = dec_get_uint(m, "base_crc", &bcrc)) ||
        (r = dec_get_uint(m, "write_gen", &st->write_gen)))
        goto fail;
    if (size != b->size || ro != b->ro) {
        r = vmm_err(EINVAL, "the snapshot's disk is %llu bytes%s; this configuration gives "
                    "%llu bytes%s", (unsigned long long)size, ro ? ", read-only" : "",
                    (unsigned long long)b->size, b->ro ? ", read-only" : "");
        goto fail;
    }
    if (bsize != (b->base_fd >= 0 ? b->base_size : 0) ||
        bcrc != (b->base_fd >= 0 ? b->base_crc : 0)) {
        r = vmm_err(ESTALE, "the configured base image is not the one the snapshot was taken "
                    "on (size or content differ): restore with the image's own base");
        goto fail;
    }
    r = dec_get_map(m, "live", &live);
    if (s && r != -ENOENT) {
        r = vmm_err(EINVAL, "the disk state names a live layer: it was read without a snapshot "
                    "and cannot be restored");
        goto fail;
    }
    if (!s) {
        uint8_t id[16];
        uint64_t gen;
        if (r || (r = dec_get_bin_exact(&live, "id", id, 16)) ||
            (r = dec_get_uint(&live, "gen", &gen)))
            goto fail;
        if ((b->top.fd >= 0 && memcmp(id, b->top.id, 16) != 0) || gen != b->write_gen) {
            r = vmm_err(ESTALE, "the disk was written since this state was read: state blobs "
                        "cannot roll a disk back (take a snapshot for that)");
            goto fail;
        }
    }
    if ((r = decode_layers(b, s, m, st)))
        goto fail;
    st->restore = s != NULL;
    *out = st;
    return 0;
fail:
    blk_free_state(st);
    return r;
}

static void blk_apply(struct device *d, void *state)
{
    struct blk *b = d->priv;
    struct blk_state *st = state;
    virtio_apply(&b->v, &st->t);
    b->write_gen = st->write_gen;
    if (st->restore) {
        /* a restore: the snapshot's chain goes under this VM's fresh writable layer */
        for (int i = 0; i < b->nlower; i++) {
            blk_layer_close(&b->lower[i]);
            free(b->lower_path[i]);
        }
        b->nlower = st->nlayers;
        for (int i = 0; i < st->nlayers; i++) {
            b->lower[i] = st->layers[i];
            b->lower_path[i] = st->paths[i];
        }
        st->nlayers = 0;
    }
    blk_free_state(st);
}

static int blk_post_load(struct device *d)
{
    struct blk *b = d->priv;
    virtio_post_load(&b->v);
    return 0;
}

const struct device_ops virtio_blk_ops = {
    .name = "virtio-blk", .version = BLK_STATE_VERSION, .boot_kind = BOOT_DEV_VIRTIO_MMIO,
    .init = blk_init, .access = virtio_mmio_access, .save = blk_save, .decode = blk_decode,
    .apply = blk_apply, .free_state = blk_free_state, .post_load = blk_post_load,
    .destroy = blk_destroy, .snapshot_done = blk_snapshot_done,
};
