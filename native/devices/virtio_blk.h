/*
 * virtio_blk.h - the disk's layers on the host (virtio_blk_layer.c), as virtio_blk.c uses them.
 *
 * A disk is a read-only base image (shared by every VM of an image), then sealed layers (each
 * the blocks written between two snapshots, immutable once sealed, referenced by snapshots,
 * never copied), then one writable layer on top. A layer is one sparse file:
 *   [0, 4096)            header (struct blk_layer_hdr, little endian, zero padded)
 *   [4096, data_off)     the block bitmap: bit i set = block i lives in this layer
 *   [data_off, ...)      block i at data_off + i * 4096 (holes where the layer has no block)
 * A sealed layer is named by its random id and the CRC32C of its header and bitmap; a restore
 * checks both. docs/virtio.md has the format and the rules.
 */
#ifndef VMM_VIRTIO_BLK_H
#define VMM_VIRTIO_BLK_H
#include "../internal.h"

#define BLK_BLOCK 4096ULL
#define BLK_MAX_SIZE (32ULL << 30)
#define BLK_MAX_LAYERS 64
#define BLK_LAYER_MAGIC "VMMDDISK"
#define BLK_LAYER_VERSION 1

struct blk_layer_hdr {
    char magic[8];
    uint32_t version;
    uint32_t block_size;
    uint64_t disk_size;
    uint64_t nblocks;
    uint64_t bitmap_off;
    uint64_t bitmap_len;
    uint64_t data_off;
    uint8_t id[16];
    uint32_t sealed;
    uint32_t reserved;
};

struct blk_layer {
    int fd;
    uint8_t id[16];
    uint32_t checksum;       /* sealed: CRC32C of the header and the bitmap */
    bool sealed;
    uint64_t nblocks, disk_size;
    uint64_t data_off, bitmap_len;
    uint8_t *bitmap;
    uint8_t *bm_dirty;       /* writable: bitmap pages changed since the last flush */
    bool data_dirty;         /* writable: data written since the last fdatasync */
    uint64_t blocks;         /* bits set */
};

static inline bool blk_has(const struct blk_layer *l, uint64_t b)
{
    return bit_test(l->bitmap, b);
}
void blk_set(struct blk_layer *l, uint64_t b);

/* A new writable layer for a disk of `size` bytes at `path`: created, or an empty file taken
 * over; anything else there is refused (a VM never writes into a file that holds data). */
int blk_layer_create(const char *path, uint64_t size, struct blk_layer *l);
/* A sealed layer opened read-only by the caller: header, geometry, id and checksum must be the
 * ones recorded. Takes fd (closed on failure). */
int blk_layer_open_sealed(int fd, uint64_t size, const uint8_t id[16], uint32_t checksum,
                          const char *what, struct blk_layer *l);
/* Durable: data first, then the bitmap pages that changed, then again (a crash never leaves a
 * bit naming a block whose data was not written). */
int blk_layer_flush(struct blk_layer *l);
/* Flush, mark sealed, checksum, sync, mode 0444. */
int blk_layer_seal(struct blk_layer *l);
/* Undo a seal of a layer nobody references (a snapshot that failed). */
int blk_layer_unseal(struct blk_layer *l);
void blk_layer_close(struct blk_layer *l);

/* CRC32C of the first 64 KiB and 16 blocks spread over the image: catches the wrong base
 * image given to a restore, without reading gigabytes. */
int blk_base_fingerprint(int fd, uint64_t size, uint32_t *crc);
/* The current path of an open file ("(deleted)" is ENOENT). */
int blk_fd_path(int fd, char *out, size_t len);
#endif
