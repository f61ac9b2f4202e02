/*
 * virtio_blk_layer.c - the on-disk layer format of virtio-blk (virtio_blk.h has the layout):
 * creating a writable layer, making it durable, sealing it, and opening a sealed one with
 * every field checked (layer files come from snapshot directories: untrusted input).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include "virtio_blk.h"

#define HDR_SIZE 4096ULL

static uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

void blk_set(struct blk_layer *l, uint64_t b)
{
    if (blk_has(l, b))
        return;
    bit_set(l->bitmap, b);
    l->blocks++;
    uint64_t page = (b / 8) / PAGE_SIZE;
    bit_set(l->bm_dirty, page);
}

static void geometry(uint64_t size, struct blk_layer *l)
{
    l->disk_size = size;
    l->nblocks = (size + BLK_BLOCK - 1) / BLK_BLOCK;
    l->bitmap_len = bitmap_bytes(l->nblocks);
    l->data_off = HDR_SIZE + round_up(l->bitmap_len, PAGE_SIZE);
}

static void fill_hdr(const struct blk_layer *l, struct blk_layer_hdr *h)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, BLK_LAYER_MAGIC, 8);
    h->version = BLK_LAYER_VERSION;
    h->block_size = (uint32_t)BLK_BLOCK;
    h->disk_size = l->disk_size;
    h->nblocks = l->nblocks;
    h->bitmap_off = HDR_SIZE;
    h->bitmap_len = l->bitmap_len;
    h->data_off = l->data_off;
    memcpy(h->id, l->id, 16);
    h->sealed = l->sealed;
}

static uint32_t checksum(const struct blk_layer_hdr *h, const uint8_t *bitmap, uint64_t len)
{
    return crc32c(crc32c(0, h, sizeof(*h)), bitmap, len);
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vmm_err(n < 0 ? errno : EIO, "writing a disk layer: %s",
                           n < 0 ? strerror(errno) : "no progress");
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vmm_err(n < 0 ? errno : EIO, "reading a disk layer: %s",
                           n < 0 ? strerror(errno) : "it is truncated");
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int write_hdr(struct blk_layer *l)
{
    struct blk_layer_hdr h;
    fill_hdr(l, &h);
    return pwrite_all(l->fd, &h, sizeof(h), 0);
}

static int alloc_maps(struct blk_layer *l)
{
    l->bitmap = calloc(1, l->bitmap_len ? l->bitmap_len : 1);
    l->bm_dirty = calloc(1, bitmap_bytes(l->bitmap_len / PAGE_SIZE + 1));
    return l->bitmap && l->bm_dirty ? 0 : vmm_err(ENOMEM, "out of memory for a disk bitmap");
}

int blk_layer_create(const char *path, uint64_t size, struct blk_layer *l)
{
    memset(l, 0, sizeof(*l));
    l->fd = -1;
    geometry(size, l);
    int r = alloc_maps(l);
    if (r)
        return r;
    if (getrandom(l->id, sizeof(l->id), 0) != sizeof(l->id))
        return vmm_err(errno, "getrandom: %m");
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return vmm_err(errno, "disk overlay %s: %m", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size != 0) {
        close(fd);
        return vmm_err(EEXIST, "disk overlay %s already holds data (or is not a regular file): "
                       "give every VM a new overlay; its content is never part of a snapshot",
                       path);
    }
    l->fd = fd;
    if ((r = write_hdr(l)) == 0 && ftruncate(fd, (off_t)(l->data_off + l->nblocks * BLK_BLOCK)))
        r = vmm_err(errno, "sizing disk overlay %s: %m", path);
    return r;
}

int blk_layer_open_sealed(int fd, uint64_t size, const uint8_t id[16], uint32_t sum,
                          const char *what, struct blk_layer *l)
{
    memset(l, 0, sizeof(*l));
    l->fd = fd;
    geometry(size, l);
    struct blk_layer_hdr h, want;
    struct stat st;
    int r = alloc_maps(l);
    if (r)
        return r;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != l->data_off + l->nblocks * BLK_BLOCK)
        return vmm_err(EINVAL, "disk layer %s is %lld bytes, a layer of this disk is %llu", what,
                       (long long)st.st_size,
                       (unsigned long long)(l->data_off + l->nblocks * BLK_BLOCK));
    if ((r = pread_all(fd, &h, sizeof(h), 0)) ||
        (r = pread_all(fd, l->bitmap, l->bitmap_len, HDR_SIZE)))
        return vmm_err_ctx(r, "disk layer %s", what);
    memcpy(l->id, id, 16);
    l->sealed = true;
    fill_hdr(l, &want);
    if (memcmp(&h, &want, sizeof(h)) != 0)
        return vmm_err(ESTALE, "disk layer %s is not the sealed layer the snapshot names (its "
                       "header, id or geometry differ)", what);
    if (checksum(&h, l->bitmap, l->bitmap_len) != sum)
        return vmm_err(ESTALE, "disk layer %s changed since it was sealed (checksum differs)",
                       what);
    /* bits past the last block would name data outside the disk */
    for (uint64_t b = l->nblocks; b < l->bitmap_len * 8; b++)
        if (bit_test(l->bitmap, b))
            return vmm_err(EINVAL, "disk layer %s names a block past the disk's end", what);
    for (uint64_t i = 0; i < l->bitmap_len; i++)
        l->blocks += (uint64_t)__builtin_popcount(l->bitmap[i]);
    l->checksum = sum;
    return 0;
}

int blk_layer_flush(struct blk_layer *l)
{
    bool bits = false;
    uint64_t pages = (l->bitmap_len + PAGE_SIZE - 1) / PAGE_SIZE;
    for (uint64_t p = 0; p < pages && !bits; p++)
        bits = bit_test(l->bm_dirty, p);
    if (!l->data_dirty && !bits)
        return 0;
    if (fdatasync(l->fd) < 0)
        return vmm_err(errno, "fdatasync of a disk layer: %m");
    l->data_dirty = false;
    if (!bits)
        return 0;
    for (uint64_t p = 0; p < pages; p++) {
        if (!bit_test(l->bm_dirty, p))
            continue;
        uint64_t off = p * PAGE_SIZE, n = l->bitmap_len - off < PAGE_SIZE ? l->bitmap_len - off
                                                                        : PAGE_SIZE;
        int r = pwrite_all(l->fd, l->bitmap + off, (size_t)n, HDR_SIZE + off);
        if (r)
            return r;
        l->bm_dirty[p / 8] &= (uint8_t)~(1u << (p % 8));
    }
    if (fdatasync(l->fd) < 0)
        return vmm_err(errno, "fdatasync of a disk layer: %m");
    return 0;
}

int blk_layer_seal(struct blk_layer *l)
{
    int r = blk_layer_flush(l);
    if (r)
        return r;
    l->sealed = true;
    struct blk_layer_hdr h;
    fill_hdr(l, &h);
    if ((r = pwrite_all(l->fd, &h, sizeof(h), 0)) == 0 && fdatasync(l->fd) < 0)
        r = vmm_err(errno, "fdatasync of a sealed disk layer: %m");
    if (!r && fchmod(l->fd, 0444) < 0)
        r = vmm_err(errno, "making a sealed disk layer read-only: %m");
    if (r) {
        l->sealed = false;
        return r;
    }
    l->checksum = checksum(&h, l->bitmap, l->bitmap_len);
    return 0;
}

int blk_layer_unseal(struct blk_layer *l)
{
    l->sealed = false;
    l->checksum = 0;
    int r = write_hdr(l);
    if (fchmod(l->fd, 0644) < 0 && !r)
        r = vmm_err(errno, "making a disk layer writable again: %m");
    return r;
}

void blk_layer_close(struct blk_layer *l)
{
    if (l->fd >= 0)
        close(l->fd);
    free(l->bitmap);
    free(l->bm_dirty);
    memset(l, 0, sizeof(*l));
    l->fd = -1;
}

int blk_base_fingerprint(int fd, uint64_t size, uint32_t *out)
{
    uint8_t *buf = malloc(64 * 1024);
    if (!buf)
        return vmm_err(ENOMEM, "out of memory");
    uint64_t n = size < 64 * 1024 ? size : 64 * 1024;
    uint32_t crc = crc32c(0, &size, sizeof(size));
    int r = pread_all(fd, buf, (size_t)n, 0);
    if (!r)
        crc = crc32c(crc, buf, (size_t)n);
    for (int i = 1; i <= 16 && !r && size >= BLK_BLOCK; i++) {
        uint64_t off = (size / 17 * (uint64_t)i) / BLK_BLOCK * BLK_BLOCK;
        if (off + BLK_BLOCK > size)
            off = size - BLK_BLOCK;
        if (!(r = pread_all(fd, buf, BLK_BLOCK, off)))
            crc = crc32c(crc, buf, BLK_BLOCK);
    }
    free(buf);
    if (r)
        return vmm_err_ctx(r, "reading the base image");
    *out = crc;
    return 0;
}

int blk_fd_path(int fd, char *out, size_t len)
{
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, out, len - 1);
    if (n < 0 || (size_t)n >= len - 1)
        return vmm_err(n < 0 ? errno : ENAMETOOLONG, "the path of a disk layer: %s",
                       n < 0 ? strerror(errno) : "too long");
    out[n] = 0;
    if (n > 10 && strcmp(out + n - 10, " (deleted)") == 0)
        return vmm_err(ENOENT, "disk layer %s was deleted while this VM uses it", out);
    return 0;
}
