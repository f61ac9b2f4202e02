/*
 * Unit tests of virtio-blk on synthetic rings and real files in a scratch directory (argv[1]):
 * reads through the layers, copy on write, flush, limits, read-only, GET_ID, hostile requests,
 * and the snapshot rules: a snapshot seals the writable layer into its directory, writes go on
 * in a fresh layer, a restore opens the sealed chain and checks it, a failed snapshot is undone.
 * Prints "N passed, N failed" last.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "test_virtio.h"

static const char *work;
static char base_path[512], base2_path[512];

#define HDR (TV_DATA)
#define STATUS (TV_DATA + 0x800)
#define BUF (TV_DATA + 0x1000)
#define BASE_SIZE (1ULL << 20)

static void make_file(const char *path, uint64_t size, uint8_t salt)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    uint8_t *b = malloc(size);
    for (uint64_t i = 0; i < size; i++)
        b[i] = (uint8_t)((i % 512) ^ 0x5a ^ (i / 4096) ^ salt);
    if (write(fd, b, size) != (ssize_t)size)
        printf("short write of %s\n", path);
    close(fd);
    free(b);
}

static uint8_t base_byte(uint64_t pos) { return (uint8_t)((pos % 512) ^ 0x5a ^ (pos / 4096)); }

static int blk_open(struct tv *t, const char *overlay, uint64_t size, bool ro, const char *base)
{
    struct vmm_device_config cfg = {.type = VMM_DEV_VIRTIO_BLK, .path = base, .overlay = overlay,
                                    .size = size, .read_only = ro};
    int r = tv_open(t, &virtio_blk_ops, &cfg, "virtio-blk.0");
    if (!r)
        tv_setup(t, 0, 1, 16);
    return r;
}

/* One request; returns its status byte, or -1 when the device broke. */
static int req(struct tv *t, uint32_t type, uint64_t sector, uint32_t len, bool dev_writes)
{
    uint32_t h[4] = {type, 0, (uint32_t)sector, (uint32_t)(sector >> 32)};
    gm_write(&t->mem, HDR, h, 16);
    uint8_t ff = 0xff;
    gm_write(&t->mem, STATUS, &ff, 1);
    struct tv_buf b[3] = {{HDR, 16, false}, {BUF, len, dev_writes}, {STATUS, 1, true}};
    struct tv_buf nodata[2] = {{HDR, 16, false}, {STATUS, 1, true}};
    uint16_t head = len ? tv_chain(t, 0, b, 3) : tv_chain(t, 0, nodata, 2);
    tv_publish(t, 0, head);
    tv_kick(t, 0);
    uint32_t id, used;
    if (!tv_take_used(t, 0, &id, &used))
        return -1;
    uint8_t st;
    gm_read(&t->mem, STATUS, &st, 1);
    return st;
}

static void fill_buf(struct tv *t, uint32_t len, uint8_t v)
{
    uint8_t *p = malloc(len);
    memset(p, v, len);
    gm_write(&t->mem, BUF, p, len);
    free(p);
}

static bool buf_is(struct tv *t, uint32_t off, uint32_t len, int v /* -1: base at pos */,
                   uint64_t pos)
{
    uint8_t *p = malloc(len);
    gm_read(&t->mem, BUF + off, p, len);
    bool ok = true;
    for (uint32_t i = 0; i < len && ok; i++)
        ok = p[i] == (v < 0 ? base_byte(pos + i) : (uint8_t)v);
    free(p);
    return ok;
}

static uint32_t file_crc(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    uint8_t b[65536];
    uint32_t c = 0;
    ssize_t n;
    while ((n = read(fd, b, sizeof(b))) > 0)
        c = crc32c(c, b, (size_t)n);
    close(fd);
    return c;
}

static char *path_in(const char *name)
{
    static char bufs[8][512];
    static int k;
    char *p = bufs[k++ % 8];
    snprintf(p, 512, "%s/%s", work, name);
    return p;
}

static void test_refuses_bad_configurations(void)
{
    struct tv t;
    CHECK(blk_open(&t, path_in("o1"), (32ULL << 30) + 512, false, base_path) == -EINVAL);
    CHECK(blk_open(&t, path_in("o1"), 1000, false, NULL) == -EINVAL);      /* not sectors */
    CHECK(blk_open(&t, path_in("o1"), 4096, false, base_path) == -EINVAL); /* base is bigger */
    CHECK(blk_open(&t, path_in("o1"), 0, true, base_path) == -EINVAL);     /* ro + overlay */
    CHECK(blk_open(&t, NULL, 0, false, base_path) == -EINVAL);             /* rw, no overlay */
    CHECK(blk_open(&t, NULL, 0, false, NULL) == -EINVAL);                  /* nothing at all */
    CHECK(access(path_in("o1"), F_OK) != 0);                               /* nothing left */
    make_file(path_in("used"), 4096, 1);
    CHECK(blk_open(&t, path_in("used"), 0, false, base_path) == -EEXIST);  /* holds data */
    CHECK(file_crc(path_in("used")) != 0);                                 /* untouched */
}

static void test_reads_come_from_the_base_and_zeros_past_it(void)
{
    struct tv t;
    CHECK(blk_open(&t, path_in("o2"), 2 * BASE_SIZE, false, base_path) == 0);
    uint64_t cap = 0;
    t.d.ops->access(&t.d, VIRTIO_MMIO_CONFIG, (uint8_t *)&cap, 8, false, NULL);
    CHECK(cap == 2 * BASE_SIZE / 512);
    CHECK(req(&t, 0, 0, 8192, true) == 0 && buf_is(&t, 0, 8192, -1, 0));
    CHECK(req(&t, 0, 7, 512, true) == 0 && buf_is(&t, 0, 512, -1, 7 * 512));
    /* straddling the end of the base: base bytes, then zeros */
    CHECK(req(&t, 0, BASE_SIZE / 512 - 1, 1024, true) == 0);
    CHECK(buf_is(&t, 0, 512, -1, BASE_SIZE - 512) && buf_is(&t, 512, 512, 0, 0));
    /* past the capacity, a sector count overflowing, a length not in sectors */
    CHECK(req(&t, 0, 2 * BASE_SIZE / 512, 512, true) == 1);
    CHECK(req(&t, 0, 2 * BASE_SIZE / 512 - 1, 1024, true) == 1);
    CHECK(req(&t, 0, ~0ULL / 256, 512, true) == 1);
    CHECK(req(&t, 0, 0, 100, true) == 1);
    CHECK(req(&t, 99, 0, 512, true) == 2);                                 /* unsupported */
    CHECK(!tv_broken(&t));
    tv_close(&t);
    CHECK(access(path_in("o2"), F_OK) != 0);          /* an unwritten overlay does not linger */
}

static void test_writes_copy_on_write_and_never_touch_the_base(void)
{
    struct tv t;
    uint32_t before = file_crc(base_path);
    CHECK(blk_open(&t, path_in("o3"), 0, false, base_path) == 0);
    fill_buf(&t, 512, 0xee);
    CHECK(req(&t, 1, 9, 512, false) == 0);              /* one sector inside block 1 */
    CHECK(req(&t, 0, 8, 4096, true) == 0);
    CHECK(buf_is(&t, 0, 512, -1, 8 * 512) && buf_is(&t, 512, 512, 0xee, 0) &&
          buf_is(&t, 1024, 3072, -1, 10 * 512));
    fill_buf(&t, 3 * 4096, 0x11);                      /* unaligned, several blocks */
    CHECK(req(&t, 1, 3, 3 * 4096, false) == 0);
    CHECK(req(&t, 0, 0, 4 * 4096, true) == 0);
    CHECK(buf_is(&t, 0, 1536, -1, 0) && buf_is(&t, 1536, 3 * 4096, 0x11, 0) &&
          buf_is(&t, 1536 + 3 * 4096, 4096 - 1536, -1, 1536 + 3 * 4096));
    CHECK(req(&t, 4, 0, 0, false) == 0);                /* flush */
    CHECK(file_crc(base_path) == before);
    /* the bitmap is durable: blocks 0..3 are in the overlay file */
    int fd = open(path_in("o3"), O_RDONLY);
    uint8_t bm;
    CHECK(pread(fd, &bm, 1, 4096) == 1 && bm == 0x0f);
    close(fd);
    tv_close(&t);
    CHECK(access(path_in("o3"), F_OK) == 0);           /* written: it stays */
}

static void test_read_only_disk_refuses_writes(void)
{
    struct tv t;
    CHECK(blk_open(&t, NULL, 0, true, base_path) == 0);
    tv_wr(&t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    CHECK(tv_rd(&t, VIRTIO_MMIO_DEVICE_FEATURES) & (1u << 5));
    CHECK(req(&t, 1, 0, 512, false) == 1);
    CHECK(req(&t, 0, 0, 512, true) == 0 && buf_is(&t, 0, 512, -1, 0));
    CHECK(req(&t, 4, 0, 0, false) == 0);
    tv_close(&t);
}

static void test_get_id_names_the_disk(void)
{
    struct tv t;
    CHECK(blk_open(&t, NULL, 0, true, base_path) == 0);
    CHECK(req(&t, 8, 0, 20, true) == 0);
    char id[21] = {0};
    gm_read(&t.mem, BUF, id, 20);
    CHECK(strcmp(id, "vmmd-blk0") == 0);
    tv_close(&t);
}

static void test_hostile_requests_break_the_device_not_the_host(void)
{
    struct tv t;
    CHECK(blk_open(&t, path_in("o4"), 0, false, base_path) == 0);
    /* no status byte */
    struct tv_buf only_hdr = {HDR, 16, false};
    tv_publish(&t, 0, tv_chain(&t, 0, &only_hdr, 1));
    tv_kick(&t, 0);
    CHECK(tv_broken(&t));
    tv_setup(&t, 0, 1, 16);
    /* a header too short */
    struct tv_buf shorthdr[2] = {{HDR, 8, false}, {STATUS, 1, true}};
    tv_publish(&t, 0, tv_chain(&t, 0, shorthdr, 2));
    tv_kick(&t, 0);
    CHECK(tv_broken(&t));
    tv_setup(&t, 0, 1, 16);
    CHECK(req(&t, 0, 0, 512, true) == 0);
    tv_close(&t);
}

static struct enc save_section(struct tv *t)
{
    struct enc e;
    enc_init(&e);
    if (t->d.ops->save(&t->d, &e))
        e.err = -1;
    return e;
}

static int load_section(struct tv *t, struct enc *e)
{
    struct dec_val v;
    struct dec_map m;
    const uint8_t *p = e->buf;
    void *st = NULL;
    int r = dec_next(&p, e->buf + e->len, &v);
    if (!r)
        r = dec_as_map(&v, &m, "dev");
    if (!r)
        r = t->d.ops->decode(&t->d, &m, 1, &st);
    if (!r)
        t->d.ops->apply(&t->d, st);
    /* the rings in this test's memory are not the saved device's: the driver starts over
     * (a reset keeps the disk) */
    if (!r)
        tv_setup(t, 0, 1, 16);
    return r;
}

static void test_snapshot_seals_the_layer_and_restore_sees_exactly_it(void)
{
    char *snapdir = path_in("snap1");
    mkdir(snapdir, 0755);
    int dfd = open(snapdir, O_PATH | O_DIRECTORY);
    struct dev_snap snap = {.dfd = dfd, .dir = snapdir};
    struct tv t;
    CHECK(blk_open(&t, path_in("o5"), 0, false, base_path) == 0);
    fill_buf(&t, 4096, 0xa1);
    CHECK(req(&t, 1, 16, 4096, false) == 0);
    t.env.snap = &snap;
    struct enc e = save_section(&t);
    CHECK(e.err == 0);
    t.d.ops->snapshot_done(&t.d, 0);
    t.env.snap = NULL;
    char *sealed = path_in("snap1/virtio-blk.0.disk");
    struct stat st;
    CHECK(stat(sealed, &st) == 0 && (st.st_mode & 0777) == 0444);
    CHECK(access(path_in("o5"), F_OK) == 0);           /* a fresh layer took its place */
    uint32_t sealed_crc = file_crc(sealed);
    /* the VM writes on: into the fresh layer, never into what the snapshot references */
    fill_buf(&t, 4096, 0xb2);
    CHECK(req(&t, 1, 16, 4096, false) == 0 && req(&t, 1, 40, 4096, false) == 0);
    CHECK(req(&t, 4, 0, 0, false) == 0);
    CHECK(file_crc(sealed) == sealed_crc);
    CHECK(req(&t, 0, 16, 4096, true) == 0 && buf_is(&t, 0, 4096, 0xb2, 0));

    /* a restore: a second device on a new overlay, the snapshot's chain below it */
    struct tv r;
    CHECK(blk_open(&r, path_in("o6"), 0, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == 0);
    r.env.snap = NULL;
    CHECK(req(&r, 0, 16, 4096, true) == 0 && buf_is(&r, 0, 4096, 0xa1, 0));
    CHECK(req(&r, 0, 40, 4096, true) == 0 && buf_is(&r, 0, 4096, -1, 40 * 512));
    fill_buf(&r, 512, 0xc3);                          /* and it writes into its own layer */
    CHECK(req(&r, 1, 17, 512, false) == 0);
    CHECK(file_crc(sealed) == sealed_crc);
    CHECK(req(&t, 0, 16, 4096, true) == 0 && buf_is(&t, 0, 4096, 0xb2, 0));
    tv_close(&r);

    /* a second snapshot of the first VM: its new layer, on top of the first sealed one */
    char *snapdir2 = path_in("snap2");
    mkdir(snapdir2, 0755);
    int dfd2 = open(snapdir2, O_PATH | O_DIRECTORY);
    struct dev_snap snap2 = {.dfd = dfd2, .dir = snapdir2};
    t.env.snap = &snap2;
    struct enc e2 = save_section(&t);
    t.d.ops->snapshot_done(&t.d, 0);
    t.env.snap = NULL;
    CHECK(e2.err == 0);
    /* the first snapshot's directory is renamed: later snapshots follow the layer */
    char *moved = path_in("snap1-moved");
    CHECK(rename(snapdir, moved) == 0);
    struct enc e3;
    char *snapdir3 = path_in("snap3");
    mkdir(snapdir3, 0755);
    int dfd3 = open(snapdir3, O_PATH | O_DIRECTORY);
    struct dev_snap snap3 = {.dfd = dfd3, .dir = snapdir3};
    t.env.snap = &snap3;
    e3 = save_section(&t);            /* nothing written since: no new layer, the same chain */
    t.d.ops->snapshot_done(&t.d, 0);
    t.env.snap = NULL;
    CHECK(e3.err == 0 && access(path_in("snap3/virtio-blk.0.disk"), F_OK) != 0);
    CHECK(blk_open(&r, path_in("o7"), 0, false, base_path) == 0);
    r.env.snap = &snap3;
    CHECK(load_section(&r, &e3) == 0);
    r.env.snap = NULL;
    CHECK(req(&r, 0, 16, 4096, true) == 0 && buf_is(&r, 0, 4096, 0xb2, 0));
    CHECK(req(&r, 0, 40, 4096, true) == 0 && buf_is(&r, 0, 4096, 0xb2, 0));
    tv_close(&r);
    tv_close(&t);
    enc_free(&e); enc_free(&e2); enc_free(&e3);
    close(dfd); close(dfd2); close(dfd3);
}

static void test_failed_snapshot_undoes_the_seal(void)
{
    char *snapdir = path_in("snap4");
    mkdir(snapdir, 0755);
    int dfd = open(snapdir, O_PATH | O_DIRECTORY);
    struct dev_snap snap = {.dfd = dfd, .dir = snapdir};
    struct tv t;
    CHECK(blk_open(&t, path_in("o8"), 0, false, base_path) == 0);
    fill_buf(&t, 4096, 0x77);
    CHECK(req(&t, 1, 0, 4096, false) == 0);
    t.env.snap = &snap;
    struct enc e = save_section(&t);
    CHECK(e.err == 0 && access(path_in("snap4/virtio-blk.0.disk"), F_OK) == 0);
    t.d.ops->snapshot_done(&t.d, -EIO);
    t.env.snap = NULL;
    CHECK(access(path_in("snap4/virtio-blk.0.disk"), F_OK) != 0);
    struct stat st;
    CHECK(stat(path_in("o8"), &st) == 0 && (st.st_mode & 0777) == 0644);
    CHECK(req(&t, 0, 0, 4096, true) == 0 && buf_is(&t, 0, 4096, 0x77, 0));
    fill_buf(&t, 512, 0x78);
    CHECK(req(&t, 1, 1, 512, false) == 0);
    CHECK(req(&t, 0, 0, 1024, true) == 0 && buf_is(&t, 0, 512, 0x77, 0) &&
          buf_is(&t, 512, 512, 0x78, 0));
    tv_close(&t);
    enc_free(&e);
    close(dfd);
}

static void test_restore_refuses_a_changed_chain(void)
{
    char *snapdir = path_in("snap5");
    mkdir(snapdir, 0755);
    int dfd = open(snapdir, O_PATH | O_DIRECTORY);
    struct dev_snap snap = {.dfd = dfd, .dir = snapdir};
    struct tv t, r;
    CHECK(blk_open(&t, path_in("o9"), 0, false, base_path) == 0);
    fill_buf(&t, 4096, 0x99);
    CHECK(req(&t, 1, 8, 4096, false) == 0);
    t.env.snap = &snap;
    struct enc e = save_section(&t);
    t.d.ops->snapshot_done(&t.d, 0);
    t.env.snap = NULL;
    tv_close(&t);
    char *sealed = path_in("snap5/virtio-blk.0.disk");

    /* another base image */
    CHECK(blk_open(&r, path_in("o10"), 0, false, base2_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == -ESTALE);
    tv_close(&r);
    /* a bit flipped in the sealed layer's bitmap */
    chmod(sealed, 0644);
    int fd = open(sealed, O_RDWR);
    uint8_t bm;
    CHECK(pread(fd, &bm, 1, 4096) == 1);
    bm ^= 0x80;
    CHECK(pwrite(fd, &bm, 1, 4096) == 1);
    CHECK(blk_open(&r, path_in("o10"), 0, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == -ESTALE);
    tv_close(&r);
    bm ^= 0x80;
    CHECK(pwrite(fd, &bm, 1, 4096) == 1);
    /* truncated */
    struct stat st;
    fstat(fd, &st);
    CHECK(ftruncate(fd, st.st_size - 4096) == 0);
    CHECK(blk_open(&r, path_in("o10"), 0, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == -EINVAL);
    tv_close(&r);
    CHECK(ftruncate(fd, st.st_size) == 0);
    close(fd);
    /* replaced by a symlink to a good copy */
    char *copy = path_in("copy.disk");
    CHECK(rename(sealed, copy) == 0 && symlink(copy, sealed) == 0);
    CHECK(blk_open(&r, path_in("o10"), 0, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) < 0);
    tv_close(&r);
    unlink(sealed);
    /* missing */
    CHECK(blk_open(&r, path_in("o10"), 0, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == -ENOENT);
    tv_close(&r);
    /* back in place: it restores, and the refused attempts left nothing behind */
    CHECK(rename(copy, sealed) == 0);
    CHECK(blk_open(&r, path_in("o10"), 0, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == 0);
    r.env.snap = NULL;
    CHECK(req(&r, 0, 8, 4096, true) == 0 && buf_is(&r, 0, 4096, 0x99, 0));
    tv_close(&r);
    /* a different disk size */
    CHECK(blk_open(&r, path_in("o10"), 2 * BASE_SIZE, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == -EINVAL);
    tv_close(&r);
    enc_free(&e);
    close(dfd);
}

static void test_state_blob_cannot_roll_the_disk_back(void)
{
    struct tv t;
    CHECK(blk_open(&t, path_in("o11"), 0, false, base_path) == 0);
    fill_buf(&t, 512, 1);
    CHECK(req(&t, 1, 0, 512, false) == 0);
    struct enc e = save_section(&t);
    CHECK(e.err == 0);
    CHECK(load_section(&t, &e) == 0);                 /* nothing changed since: fine */
    CHECK(req(&t, 1, 0, 512, false) == 0);
    CHECK(load_section(&t, &e) == -ESTALE);           /* written since: refused */
    /* a state blob is not a snapshot: a restore refuses it */
    struct tv r;
    int dfd = open(work, O_PATH | O_DIRECTORY);
    struct dev_snap snap = {.dfd = dfd, .dir = work};
    CHECK(blk_open(&r, path_in("o12"), 0, false, base_path) == 0);
    r.env.snap = &snap;
    CHECK(load_section(&r, &e) == -EINVAL);
    tv_close(&r);
    close(dfd);
    tv_close(&t);
    enc_free(&e);
}

int main(int argc, char **argv)
{
    work = argc > 1 ? argv[1] : "/tmp";
    snprintf(base_path, sizeof(base_path), "%s/base.img", work);
    snprintf(base2_path, sizeof(base2_path), "%s/base2.img", work);
    make_file(base_path, BASE_SIZE, 0);
    make_file(base2_path, BASE_SIZE, 3);
    test_refuses_bad_configurations();
    test_reads_come_from_the_base_and_zeros_past_it();
    test_writes_copy_on_write_and_never_touch_the_base();
    test_read_only_disk_refuses_writes();
    test_get_id_names_the_disk();
    test_hostile_requests_break_the_device_not_the_host();
    test_snapshot_seals_the_layer_and_restore_sees_exactly_it();
    test_failed_snapshot_undoes_the_seal();
    test_restore_refuses_a_changed_chain();
    test_state_blob_cannot_roll_the_disk_back();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
