/*
 * vmstate.c - the vmstate file: header (magic, format version, arch, length), a msgpack map of
 * versioned sections, CRC32C. Refuses anything corrupt, truncated, too new or foreign.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "internal.h"
#include "arch.h"

#define VMSTATE_MAGIC "VMMDSNAP"
#define VMSTATE_FORMAT 1
#define VMSTATE_HEADER 24          /* magic 8, format u32, arch u32, body length u64 */
#define VMSTATE_MAX (64u << 20)    /* bitmaps of 32 GiB are 1 MiB; anything near this is wrong */

const char *arch_name(uint32_t id)
{
    return id == ARCH_X86_64 ? "x86_64" : id == ARCH_AARCH64 ? "aarch64" : "unknown";
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Wraps an encoded body in header and checksum: the bytes of a vmstate file. */
int vmstate_frame(const struct enc *body, struct enc *out)
{
    uint8_t h[VMSTATE_HEADER], crc[4];
    memcpy(h, VMSTATE_MAGIC, 8);
    put_le(h + 8, VMSTATE_FORMAT, 4);
    put_le(h + 12, arch_id(), 4);
    put_le(h + 16, body->len, 8);
    enc_init(out);
    enc_raw(out, h, sizeof(h));
    enc_raw(out, body->buf, body->len);
    put_le(crc, crc32c(0, out->buf, out->len), 4);
    enc_raw(out, crc, 4);
    return out->err ? vmm_err(-out->err, "out of memory encoding vmstate") : 0;
}

int vmstate_parse(const uint8_t *buf, size_t len, struct dec_map *root)
{
    if (len < VMSTATE_HEADER + 4)
        return vmm_err(EINVAL, "vmstate is truncated: %zu bytes, less than a header", len);
    if (memcmp(buf, VMSTATE_MAGIC, 8) != 0)
        return vmm_err(EINVAL, "not a vmmd vmstate file (bad magic)");
    uint32_t format = (uint32_t)get_le(buf + 8, 4), arch = (uint32_t)get_le(buf + 12, 4);
    uint64_t body = get_le(buf + 16, 8);
    if (format > VMSTATE_FORMAT)
        return vmm_err(EPROTONOSUPPORT,
                       "vmstate format %u is newer than this build reads (%d): upgrade vmmd "
                       "or take the snapshot again with this version", format, VMSTATE_FORMAT);
    if (format < 1)
        return vmm_err(EINVAL, "vmstate format %u is not valid", format);
    if (arch != arch_id())
        return vmm_err(EXDEV, "snapshot is for %s; this host is %s", arch_name(arch),
                       arch_name(arch_id()));
    if (body != len - VMSTATE_HEADER - 4)
        return vmm_err(EINVAL, "vmstate is truncated or padded: header says %llu body bytes, file "
                       "has %zu", (unsigned long long)body, len - VMSTATE_HEADER - 4);
    uint32_t want = (uint32_t)get_le(buf + len - 4, 4), got = crc32c(0, buf, len - 4);
    if (want != got)
        return vmm_err(EBADMSG, "vmstate checksum mismatch (stored %08x, computed %08x): the file "
                       "is corrupt", want, got);
    const uint8_t *p = buf + VMSTATE_HEADER, *end = buf + len - 4;
    struct dec_val v;
    int r = dec_next(&p, end, &v);
    if (r)
        return r;
    if (p != end)
        return vmm_err(EINVAL, "vmstate has trailing bytes after its sections");
    return dec_as_map(&v, root, "root");
}

int vmstate_read_file(const char *path, uint8_t **buf, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vmm_err(errno, "open %s: %m", path);
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size > VMSTATE_MAX) {
        int e = errno;
        close(fd);
        return e ? vmm_err(e, "stat %s: %s", path, strerror(e))
                 : vmm_err(EFBIG, "%s is %lld bytes: too large for a vmstate", path,
                           (long long)st.st_size);
    }
    uint8_t *b = malloc((size_t)st.st_size + 1);
    if (!b) {
        close(fd);
        return vmm_err(ENOMEM, "out of memory reading %s", path);
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *buf = b;
    *len = got;
    return 0;
}

/* A section's "v": newer than this build knows is refused before anything is built. */
int vmstate_check_version(const struct dec_map *m, const char *name, uint32_t max)
{
    uint64_t v;
    int r = dec_get_uint(m, "v", &v);
    if (r)
        return r;
    if (v > max || v == 0)
        return vmm_err(EPROTONOSUPPORT, "vmstate section %s is version %llu; this build reads "
                       "1..%u: upgrade vmmd or take the snapshot again", name,
                       (unsigned long long)v, max);
    return 0;
}
