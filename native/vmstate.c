/*
 * vmstate.c - the vmstate file: header (magic, format version, arch, length), a msgpack map of
 * versioned sections, CRC32C; and its sections: config (vCPUs, memory, the device set), memory
 * (written by snapshot.c), vm, one per vCPU, one per device keyed by "<type>.<id>". Loading
 * decodes and checks every section before it applies any, so a bad one changes nothing.
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
#define CONFIG_VERSION 2           /* 2: the device set */

const char *arch_name(uint32_t id)
{
    return id == ARCH_X86_64 ? "x86_64" : id == ARCH_AARCH64 ? "aarch64" : "unknown";
}

/* CRC32C (Castagnoli), reflected. The CPU computes it where it can (SSE4.2, ARMv8 CRC): a 2 GiB
 * VM's vmstate carries a 64 KiB page bitmap that every restore checks. Otherwise a table on the
 * stack, so the library keeps no mutable globals. */
static uint32_t crc32c_table(uint32_t crc, const uint8_t *p, size_t len)
{
    uint32_t t[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        t[i] = c;
    }
    while (len--)
        crc = t[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = crc;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
    }
    for (; len; p++, len--)
        c = _mm_crc32_u8((uint32_t)c, *p);
    return (uint32_t)c;
}
static bool crc32c_hw_ok(void) { return __builtin_cpu_supports("sse4.2"); }
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
__attribute__((target("+crc")))
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t len)
{
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        crc = __crc32cd(crc, w);
    }
    for (; len; p++, len--)
        crc = __crc32cb(crc, *p);
    return crc;
}
static bool crc32c_hw_ok(void) { return getauxval(AT_HWCAP) & HWCAP_CRC32; }
#else
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t len) { return crc32c_table(crc, p, len); }
static bool crc32c_hw_ok(void) { return false; }
#endif

uint32_t crc32c(uint32_t crc, const void *buf, size_t len)
{
    crc = ~crc;
    crc = crc32c_hw_ok() ? crc32c_hw(crc, buf, len) : crc32c_table(crc, buf, len);
    return ~crc;
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

/* Reads a whole small file from an fd opened by open_regular. */
int vmstate_read_fd(int fd, const char *name, uint8_t **buf, size_t *len)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return vmm_err(errno, "stat %s: %m", name);
    if (st.st_size > VMSTATE_MAX)
        return vmm_err(EFBIG, "%s is %lld bytes: too large", name, (long long)st.st_size);
    uint8_t *b = malloc((size_t)st.st_size + 1);
    if (!b)
        return vmm_err(ENOMEM, "out of memory reading %s", name);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = pread(fd, b + got, (size_t)st.st_size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
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

/* ---------- encoding ---------- */

/* `memory` encodes the memory section (snapshot.c knows it); NULL for state without memory. */
int vmstate_encode(struct vmm *vm, struct enc *e, int (*memory)(struct enc *, const void *),
                   const void *ctx)
{
    int r;
    enc_map(e, memory ? 5 : 4);
    enc_str(e, "config");
    enc_map(e, 4);
    enc_kv_uint(e, "v", CONFIG_VERSION);
    enc_kv_uint(e, "vcpus", vm->cfg.vcpus);
    enc_kv_uint(e, "mem_size", vm->cfg.mem_size);
    enc_str(e, "devices");
    if ((r = devmgr_save_config(&vm->dm, e)))
        return r;
    if (memory) {
        enc_str(e, "memory");
        if ((r = memory(e, ctx)))
            return r;
    }
    enc_str(e, "vm");
    if ((r = arch_vm_save(vm, e)))
        return r;
    enc_str(e, "vcpu");
    enc_array(e, vm->cfg.vcpus);
    for (unsigned i = 0; i < vm->cfg.vcpus; i++)
        if ((r = arch_vcpu_save(vm, &vm->vcpus[i], e)))
            return r;
    enc_str(e, "devices");
    enc_map(e, (uint32_t)vm->dm.n);
    for (int i = 0; i < vm->dm.n; i++) {
        struct device *d = &vm->dm.devs[i];
        enc_str(e, d->key);
        if ((r = d->ops->save(d, e)))
            return vmm_err_ctx(r, "saving device %s", d->key);
    }
    return e->err ? vmm_err(-e->err, "out of memory encoding vmstate") : 0;
}

/* ---------- decoding: everything checked, nothing applied ---------- */

struct decoded_state {
    struct arch_vm_state *vm;
    struct arch_vcpu_state *vcpu[VMM_MAX_VCPUS];
    void *dev[VMM_MAX_DEVICES];
    unsigned nvcpus;
    int ndevs;
};

void vmstate_free(struct decoded_state *ds)
{
    if (!ds)
        return;
    arch_vm_state_free(ds->vm);
    for (unsigned i = 0; i < ds->nvcpus; i++)
        arch_vcpu_state_free(ds->vcpu[i]);
    free(ds);
}

static void free_devs(struct vmm *vm, struct decoded_state *ds)
{
    for (int i = 0; i < ds->ndevs; i++)
        if (ds->dev[i])
            vm->dm.devs[i].ops->free_state(ds->dev[i]);
    ds->ndevs = 0;
}

int vmstate_read_config(const struct dec_map *root, struct vmm_config *cfg, struct dec_map *c)
{
    uint64_t vcpus, mem;
    int r = dec_get_map(root, "config", c);
    if (!r)
        r = vmstate_check_version(c, "config", CONFIG_VERSION);
    if (!r) {
        uint64_t v;
        dec_get_uint(c, "v", &v);
        if (v < CONFIG_VERSION)
            r = vmm_err(EPROTONOSUPPORT, "vmstate section config is version %llu, older than "
                        "this build reads (%d): take the snapshot again", (unsigned long long)v,
                        CONFIG_VERSION);
    }
    if (r || (r = dec_get_uint(c, "vcpus", &vcpus)) || (r = dec_get_uint(c, "mem_size", &mem)))
        return r;
    if (vcpus < 1 || vcpus > VMM_MAX_VCPUS || mem < VMM_MIN_MEM || mem > VMM_MAX_MEM ||
        mem % PAGE_SIZE)
        return vmm_err(EINVAL, "snapshot config out of range: %llu vCPUs, %llu bytes",
                       (unsigned long long)vcpus, (unsigned long long)mem);
    cfg->vcpus = (unsigned)vcpus;
    cfg->mem_size = mem;
    return 0;
}

static int decode_device(struct vmm *vm, const struct dec_map *devs, int i, void **out)
{
    struct device *d = &vm->dm.devs[i];
    struct dec_map m;
    uint64_t ver;
    int r = dec_get_map(devs, d->key, &m);
    if (r == -ENOENT)
        return vmm_err(EINVAL, "vmstate has no state for device %s", d->key);
    if (r || (r = vmstate_check_version(&m, d->key, d->ops->version)) ||
        (r = dec_get_uint(&m, "v", &ver)) || (r = d->ops->decode(d, &m, (uint32_t)ver, out)))
        return vmm_err_ctx(r, "device %s", d->key);
    return 0;
}

int vmstate_decode(struct vmm *vm, const struct dec_map *root, struct decoded_state **out)
{
    struct decoded_state *ds = calloc(1, sizeof(*ds));
    if (!ds)
        return vmm_err(ENOMEM, "out of memory decoding vmstate");
    struct vmm_config cfg;
    struct dec_map c, m, devs;
    struct dec_val v;
    int r;
    if ((r = vmstate_read_config(root, &cfg, &c)))
        goto fail;
    if (cfg.vcpus != vm->cfg.vcpus || cfg.mem_size != vm->cfg.mem_size) {
        r = vmm_err(EINVAL, "vmstate is for %u vCPUs and %llu bytes; this VM has %u and %llu",
                    cfg.vcpus, cfg.mem_size, vm->cfg.vcpus, vm->cfg.mem_size);
        goto fail;
    }
    if ((r = devmgr_check_config(&vm->dm, &c)))
        goto fail;
    if ((r = dec_get_map(root, "vm", &m)) ||
        (r = vmstate_check_version(&m, "vm", ARCH_VM_STATE_VERSION)) ||
        (r = arch_vm_decode(vm, &m, &ds->vm)))
        goto fail;
    if ((r = dec_get(root, "vcpu", DEC_ARRAY, &v)))
        goto fail;
    if (v.u != vm->cfg.vcpus) {
        r = vmm_err(EINVAL, "vmstate has %llu vCPU sections for %u vCPUs",
                    (unsigned long long)v.u, vm->cfg.vcpus);
        goto fail;
    }
    const uint8_t *p = v.p;
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct dec_val one;
        if ((r = dec_next(&p, v.end, &one)) || (r = dec_as_map(&one, &m, "vcpu")) ||
            (r = vmstate_check_version(&m, "vcpu", ARCH_VCPU_STATE_VERSION)) ||
            (r = arch_vcpu_decode(vm, &vm->vcpus[i], &m, &ds->vcpu[i])))
            goto fail;
        ds->nvcpus = i + 1;
    }
    if ((r = dec_get_map(root, "devices", &devs)))
        goto fail;
    if (devs.n != (uint32_t)vm->dm.n) {
        r = vmm_err(EINVAL, "vmstate has %u device sections; this VM has %d devices", devs.n,
                    vm->dm.n);
        goto fail;
    }
    for (int i = 0; i < vm->dm.n; i++) {
        if ((r = decode_device(vm, &devs, i, &ds->dev[i])))
            goto fail;
        ds->ndevs = i + 1;
    }
    *out = ds;
    return 0;
fail:
    free_devs(vm, ds);
    vmstate_free(ds);
    return r;
}

/* Applies decoded sections in the arch's order; the device states are consumed. A failure here
 * has changed the VM partway: the caller fails the VM. */
int vmstate_apply(struct vmm *vm, struct decoded_state *ds)
{
    int r = 0;
    if (!arch_vcpus_first())
        r = arch_vm_apply(vm, ds->vm);
    for (unsigned i = 0; i < vm->cfg.vcpus && !r; i++)
        r = arch_vcpu_apply(vm, &vm->vcpus[i], ds->vcpu[i]);
    if (!r && arch_vcpus_first())
        r = arch_vm_apply(vm, ds->vm);
    if (r) {
        free_devs(vm, ds);
        return r;
    }
    for (int i = 0; i < ds->ndevs; i++) {
        vm->dm.devs[i].ops->apply(&vm->dm.devs[i], ds->dev[i]);
        ds->dev[i] = NULL;
    }
    ds->ndevs = 0;
    for (int i = 0; i < vm->dm.n && !r; i++)
        if (vm->dm.devs[i].ops->post_load)
            r = vm->dm.devs[i].ops->post_load(&vm->dm.devs[i]);
    return r;
}
