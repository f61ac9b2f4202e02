/*
 * snapshot.c - a snapshot is a directory: `vmstate` (every section) and `memory` (guest RAM at
 * linear offsets, sparse). A diff holds only pages dirtied since its parent, which it names.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "internal.h"
#include "arch.h"

#define CONFIG_VERSION 1
#define MEMORY_VERSION 1

struct memory_section {
    uint64_t size, pages, diff;
    char parent[PATH_MAX];
    const uint8_t *bitmap;
    uint32_t bitmap_len;
};

/* Room is left for the file names we add to the directory. */
#define DIR_MAX (PATH_MAX - 32)

static int snapshot_dir(const char *dir, char *real)
{
    if (!realpath(dir, real))
        return vmm_err(errno, "snapshot directory %s: %m", dir);
    if (strlen(real) >= DIR_MAX)
        return vmm_err(ENAMETOOLONG, "snapshot directory path is longer than %d bytes", DIR_MAX);
    return 0;
}

/* ---------- encoding ---------- */

static int encode_body(struct vmm *vm, struct enc *e, const struct memory_section *ms)
{
    int r;
    enc_map(e, ms ? 5 : 4);
    enc_str(e, "config");
    enc_map(e, 4);
    enc_kv_uint(e, "v", CONFIG_VERSION);
    enc_kv_uint(e, "vcpus", vm->cfg.vcpus);
    enc_kv_uint(e, "mem_size", vm->cfg.mem_size);
    enc_kv_uint(e, "debug_devices", (uint64_t)vm->cfg.debug_devices);
    if (ms) {
        enc_str(e, "memory");
        enc_map(e, 7);
        enc_kv_uint(e, "v", MEMORY_VERSION);
        enc_kv_uint(e, "size", ms->size);
        enc_kv_uint(e, "page_size", PAGE_SIZE);
        enc_kv_uint(e, "diff", ms->diff);
        enc_kv_str(e, "parent", ms->parent);
        enc_kv_uint(e, "pages", ms->pages);
        enc_kv_bin(e, "bitmap", ms->bitmap, ms->bitmap_len);
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
    enc_map(e, (uint32_t)vm->ndevices);
    for (int i = 0; i < vm->ndevices; i++) {
        enc_str(e, vm->devices[i].ops->name);
        if ((r = vm->devices[i].ops->save(vm->devices[i].dev, e)))
            return vmm_err_ctx(r, "saving device %s", vm->devices[i].ops->name);
    }
    return e->err ? vmm_err(-e->err, "out of memory encoding vmstate") : 0;
}

static int require_quiet(struct vmm *vm)
{
    int st = vmm_get_state(vm);
    if (st != VMM_STATE_PAUSED && st != VMM_STATE_CREATED)
        return vmm_err(EBUSY, "pause the VM first: state is read only while vCPUs are parked "
                       "(state %d)", st);
    return 0;
}

static int write_all(int fd, const void *buf, size_t len, off_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t r = pwrite(fd, p, len, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return vmm_err(errno, "write: %m");
        }
        p += r;
        len -= (size_t)r;
        off += r;
    }
    return 0;
}

/* Written beside, synced, renamed: a crash leaves the old file or the new one. */
static int write_file_atomic(const char *dir, const char *name, const void *buf, size_t len)
{
    char tmp[PATH_MAX], dst[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return vmm_err(errno, "create %s: %m", tmp);
    int r = write_all(fd, buf, len, 0);
    if (!r && fsync(fd) < 0)
        r = vmm_err(errno, "fsync %s: %m", tmp);
    close(fd);
    if (!r && rename(tmp, dst) < 0)
        r = vmm_err(errno, "rename to %s: %m", dst);
    if (r)
        unlink(tmp);
    return r;
}

static bool page_is_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < PAGE_SIZE / 8; i++)
        if (w[i])
            return false;
    return true;
}

/*
 * Writes the pages set in `bm` into dir/.memory.tmp; zero pages stay holes. `nonzero` gets the
 * pages that hold data, so a full snapshot can list exactly those.
 */
static int write_memory(struct vmm *vm, const char *dir, const uint8_t *bm, uint8_t *nonzero)
{
    struct guest_mem *m = &vm->mem;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s/.memory.tmp", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return vmm_err(errno, "create %s: %m", tmp);
    int r = 0;
    if (ftruncate(fd, (off_t)m->size) < 0)
        r = vmm_err(errno, "ftruncate %s: %m", tmp);
    uint64_t run_start = 0, run_len = 0;
    for (uint64_t p = 0; !r && p <= m->npages; p++) {
        bool take = p < m->npages && bit_test(bm, p) && !page_is_zero(m->base + p * PAGE_SIZE);
        if (take)
            bit_set(nonzero, p);
        if (take && run_len && run_start + run_len == p) {
            run_len++;
            continue;
        }
        if (run_len)
            r = write_all(fd, m->base + run_start * PAGE_SIZE, run_len * PAGE_SIZE,
                          (off_t)(run_start * PAGE_SIZE));
        run_start = p;
        run_len = take ? 1 : 0;
    }
    if (!r && fsync(fd) < 0)
        r = vmm_err(errno, "fsync %s: %m", tmp);
    close(fd);
    if (r)
        unlink(tmp);
    return r;
}

static uint64_t count_bits(const uint8_t *bm, uint64_t n)
{
    uint64_t c = 0;
    for (size_t i = 0; i < bitmap_bytes(n); i++)
        c += (uint64_t)__builtin_popcount(bm[i]);
    return c;
}

/*
 * A snapshot directory is written once: overwriting one in place could leave a new memory file
 * beside an old vmstate after a crash, or pull pages from under a VM restored from it.
 */
static int check_fresh(const char *dir)
{
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof(path), "%s/vmstate", dir);
    if (stat(path, &st) == 0)
        return vmm_err(EEXIST, "%s already holds a snapshot; write the new one to another "
                       "directory (and rename it into place if it must replace the old)", dir);
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return vmm_err(errno, "open %s: %m", dir);
    int r = fsync(fd) < 0 ? vmm_err(errno, "fsync %s: %m", dir) : 0;
    close(fd);
    return r;
}

int vmm_snapshot(struct vmm *vm, const char *dir, const struct vmm_snapshot_opts *opts)
{
    bool diff = opts && opts->diff;
    int r = require_quiet(vm);
    if (r)
        return r;
    char real[PATH_MAX];
    if ((r = snapshot_dir(dir, real)))
        return r;
    if ((r = check_fresh(real)))
        return r;
    if (diff && !vm->parent[0])
        return vmm_err(EINVAL, "a diff snapshot needs a parent: take a full snapshot of this VM "
                       "first, or restore it from one");
    if (diff && !vm->cfg.track_dirty)
        return vmm_err(EINVAL, "a diff snapshot needs dirty tracking: create or restore the VM "
                       "with track_dirty");
    struct guest_mem *m = &vm->mem;
    uint8_t *bm = calloc(1, bitmap_bytes(m->npages)), *nonzero = calloc(1, bitmap_bytes(m->npages));
    if (!bm || !nonzero) {
        free(bm);
        free(nonzero);
        return vmm_err(ENOMEM, "out of memory for the page bitmap");
    }
    /* Reading the dirty log also resets it: the next diff starts at this snapshot. */
    if (vm->cfg.track_dirty)
        r = mem_dirty_bitmap(vm, bm);
    if (!r && !diff) {
        /* anonymous memory: skip what was never populated instead of faulting it in to look */
        if (m->backend == VMM_MEM_ANON) {
            memset(bm, 0, bitmap_bytes(m->npages));
            r = mem_populated(m, bm);
        } else {
            memset(bm, 0xff, bitmap_bytes(m->npages));   /* bits past npages are never read */
        }
    }
    if (!r)
        r = write_memory(vm, real, bm, nonzero);
    /* A diff lists every dirtied page (a zeroed one must hide its parent's); a full snapshot
     * lists only the pages holding data, so uffd zero-fills the rest without reading. */
    const uint8_t *listed = diff ? bm : nonzero;
    struct memory_section ms = {.size = m->size, .diff = diff, .bitmap = listed,
                                .bitmap_len = (uint32_t)bitmap_bytes(m->npages),
                                .pages = count_bits(listed, m->npages)};
    if (diff)
        snprintf(ms.parent, sizeof(ms.parent), "%s", vm->parent);
    struct enc body, file;
    enc_init(&body);
    enc_init(&file);
    if (!r)
        r = encode_body(vm, &body, &ms);
    if (!r)
        r = vmstate_frame(&body, &file);
    char tmp[PATH_MAX], dst[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s/.memory.tmp", real);
    snprintf(dst, sizeof(dst), "%s/memory", real);
    if (!r && rename(tmp, dst) < 0)
        r = vmm_err(errno, "rename to %s: %m", dst);
    if (!r)
        r = write_file_atomic(real, "vmstate", file.buf, file.len);
    if (!r)
        r = fsync_dir(real);
    if (r)
        unlink(tmp);
    else
        snprintf(vm->parent, sizeof(vm->parent), "%s", real);
    enc_free(&body);
    enc_free(&file);
    free(bm);
    free(nonzero);
    return r;
}

/* ---------- decoding ---------- */

struct parsed {
    uint8_t *buf;
    size_t len;
    struct dec_map root;
};

static int parse_dir(const char *dir, struct parsed *p)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/vmstate", dir);
    memset(p, 0, sizeof(*p));
    int r = vmstate_read_file(path, &p->buf, &p->len);
    if (r)
        return errno == ENOENT || r == -ENOENT
                   ? vmm_err(ENOENT, "%s is not a snapshot: it has no vmstate", dir) : r;
    if ((r = vmstate_parse(p->buf, p->len, &p->root))) {
        free(p->buf);
        p->buf = NULL;
        return vmm_err_ctx(r, "%s", path);
    }
    return 0;
}

static int get_section(const struct dec_map *root, const char *name, uint32_t max,
                       struct dec_map *out)
{
    int r = dec_get_map(root, name, out);
    if (!r)
        r = vmstate_check_version(out, name, max);
    return r;
}

static int read_memory_section(const struct dec_map *root, struct memory_section *ms)
{
    struct dec_map m;
    uint64_t page_size;
    int r = get_section(root, "memory", MEMORY_VERSION, &m);
    if (r || (r = dec_get_uint(&m, "size", &ms->size)) ||
        (r = dec_get_uint(&m, "page_size", &page_size)) ||
        (r = dec_get_uint(&m, "diff", &ms->diff)) ||
        (r = dec_get_uint(&m, "pages", &ms->pages)) ||
        (r = dec_get_str(&m, "parent", ms->parent, sizeof(ms->parent))) ||
        (r = dec_get_bin(&m, "bitmap", &ms->bitmap, &ms->bitmap_len)))
        return r;
    if (page_size != PAGE_SIZE)
        return vmm_err(EINVAL, "snapshot pages are %llu bytes; this build uses %llu",
                       (unsigned long long)page_size, PAGE_SIZE);
    if (ms->size % PAGE_SIZE || ms->size > VMM_MAX_MEM || ms->size < VMM_MIN_MEM ||
        ms->bitmap_len != bitmap_bytes(ms->size / PAGE_SIZE))
        return vmm_err(EINVAL, "snapshot memory section is inconsistent: %llu bytes, bitmap of %u",
                       (unsigned long long)ms->size, ms->bitmap_len);
    if (ms->diff && !ms->parent[0])
        return vmm_err(EINVAL, "diff snapshot names no parent");
    return 0;
}

/* Opens dir/memory and copies the layer's bitmap: one link of the chain. */
static int open_layer(const char *dir, const struct memory_section *ms, struct mem_layer *l)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/memory", dir);
    l->bitmap = NULL;
    l->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (l->fd < 0)
        return vmm_err(errno, "snapshot %s: memory file %s: %m", dir, path);
    struct stat st;
    if (fstat(l->fd, &st) < 0 || (uint64_t)st.st_size < ms->size)
        return vmm_err(EINVAL, "snapshot %s: memory file is %lld bytes, the snapshot needs %llu",
                       dir, (long long)st.st_size, (unsigned long long)ms->size);
    if (!(l->bitmap = malloc(ms->bitmap_len)))
        return vmm_err(ENOMEM, "out of memory for a layer bitmap");
    memcpy(l->bitmap, ms->bitmap, ms->bitmap_len);
    return 0;
}

/* Walks diff -> parent -> ... -> full, opening every memory file, newest first. */
static int open_chain(const char *dir, const struct memory_section *top, struct mem_layer *layers,
                      int *n)
{
    struct memory_section ms = *top;
    struct parsed p = {0};          /* owns ms.bitmap once we are past the top */
    char cur[PATH_MAX], parent[PATH_MAX];
    int r = 0;
    snprintf(cur, sizeof(cur), "%s", dir);
    *n = 0;
    for (;;) {
        if (*n == VMM_MAX_LAYERS) {
            r = vmm_err(ELOOP, "snapshot chain is deeper than %d layers: take a full snapshot",
                        VMM_MAX_LAYERS);
            break;
        }
        struct mem_layer *l = &layers[(*n)++];
        if ((r = open_layer(cur, &ms, l)) || !ms.diff)
            break;
        uint64_t want = ms.size;
        snprintf(parent, sizeof(parent), "%s", ms.parent);
        free(p.buf);
        p.buf = NULL;
        if ((r = parse_dir(parent, &p))) {
            r = vmm_err_ctx(r, "parent of %s", cur);
            break;
        }
        if ((r = read_memory_section(&p.root, &ms)))
            break;
        if (ms.size != want) {
            r = vmm_err(EINVAL, "parent %s has %llu bytes of memory, its child %llu", parent,
                        (unsigned long long)ms.size, (unsigned long long)want);
            break;
        }
        snprintf(cur, sizeof(cur), "%s", parent);
    }
    free(p.buf);
    return r;
}

static int read_config(const struct dec_map *root, struct vmm_config *cfg)
{
    struct dec_map c;
    uint64_t vcpus, mem, dbg;
    int r = get_section(root, "config", CONFIG_VERSION, &c);
    if (r || (r = dec_get_uint(&c, "vcpus", &vcpus)) || (r = dec_get_uint(&c, "mem_size", &mem)) ||
        (r = dec_get_uint(&c, "debug_devices", &dbg)))
        return r;
    if (vcpus < 1 || vcpus > VMM_MAX_VCPUS || mem > VMM_MAX_MEM)
        return vmm_err(EINVAL, "snapshot config out of range: %llu vCPUs, %llu bytes",
                       (unsigned long long)vcpus, (unsigned long long)mem);
    cfg->vcpus = (unsigned)vcpus;
    cfg->mem_size = mem;
    cfg->debug_devices = dbg != 0;
    return 0;
}

static const struct device *find_device(struct vmm *vm, const char *name, size_t len)
{
    for (int i = 0; i < vm->ndevices; i++)
        if (strlen(vm->devices[i].ops->name) == len &&
            memcmp(vm->devices[i].ops->name, name, len) == 0)
            return &vm->devices[i];
    return NULL;
}

/* Every section present, known, and not newer than this build, before any of it is applied. */
static int check_sections(struct vmm *vm, const struct dec_map *root)
{
    struct dec_map m;
    struct dec_val v;
    int r;
    if ((r = get_section(root, "vm", ARCH_VM_STATE_VERSION, &m)))
        return r;
    if ((r = dec_get(root, "vcpu", DEC_ARRAY, &v)))
        return r;
    if (v.u != vm->cfg.vcpus)
        return vmm_err(EINVAL, "vmstate has %llu vCPU sections for %u vCPUs",
                       (unsigned long long)v.u, vm->cfg.vcpus);
    const uint8_t *p = v.p;
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct dec_val c;
        if ((r = dec_next(&p, v.end, &c)) || (r = dec_as_map(&c, &m, "vcpu")) ||
            (r = vmstate_check_version(&m, "vcpu", ARCH_VCPU_STATE_VERSION)))
            return r;
    }
    struct dec_map devs;
    if ((r = dec_get_map(root, "devices", &devs)))
        return r;
    if (devs.n != (uint32_t)vm->ndevices)
        return vmm_err(EINVAL, "vmstate has %u device sections; this VM has %d devices", devs.n,
                       vm->ndevices);
    p = devs.p;
    for (uint32_t i = 0; i < devs.n; i++) {
        struct dec_val k, d;
        if ((r = dec_next(&p, devs.end, &k)) || (r = dec_next(&p, devs.end, &d)))
            return r;
        const struct device *dev = k.type == DEC_STR ? find_device(vm, (const char *)k.p, k.len)
                                                     : NULL;
        if (!dev)
            return vmm_err(EINVAL, "vmstate has state for a device this VM does not have (%.*s)",
                           k.type == DEC_STR ? (int)k.len : 1, k.type == DEC_STR ? (const char *)k.p : "?");
        if ((r = dec_as_map(&d, &m, dev->ops->name)) ||
            (r = vmstate_check_version(&m, dev->ops->name, dev->ops->version)))
            return r;
    }
    return 0;
}

static int apply_sections(struct vmm *vm, const struct dec_map *root)
{
    struct dec_map m, devs;
    struct dec_val v;
    int r;
    if ((r = check_sections(vm, root)))
        return r;
    if ((r = dec_get_map(root, "vm", &m)) || (r = arch_vm_load(vm, &m)))
        return r;
    if ((r = dec_get(root, "vcpu", DEC_ARRAY, &v)))
        return r;
    const uint8_t *p = v.p;
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct dec_val c;
        if ((r = dec_next(&p, v.end, &c)) || (r = dec_as_map(&c, &m, "vcpu")) ||
            (r = arch_vcpu_load(vm, &vm->vcpus[i], &m)))
            return r;
    }
    if ((r = dec_get_map(root, "devices", &devs)))
        return r;
    for (int i = 0; i < vm->ndevices; i++) {
        const struct device *d = &vm->devices[i];
        uint64_t ver;
        if ((r = dec_get_map(&devs, d->ops->name, &m)) || (r = dec_get_uint(&m, "v", &ver)) ||
            (r = d->ops->load(d->dev, &m, (uint32_t)ver)))
            return vmm_err_ctx(r, "device %s", d->ops->name);
    }
    return 0;
}

int vmm_restore(const char *dir, const struct vmm_restore_opts *opts, struct vmm **out)
{
    int backend = opts ? opts->backend : VMM_MEM_MMAP;
    if (backend != VMM_MEM_MMAP && backend != VMM_MEM_UFFD)
        return vmm_err(EINVAL, "restore backend %d: use mmap (%d) or uffd (%d)", backend,
                       VMM_MEM_MMAP, VMM_MEM_UFFD);
    char real[PATH_MAX];
    int r = snapshot_dir(dir, real);
    if (r)
        return r;
    struct parsed p;
    if ((r = parse_dir(real, &p)))
        return r;
    struct vmm_config cfg = {0};
    struct memory_section ms;
    struct mem_layer layers[VMM_MAX_LAYERS];
    int nlayers = 0;
    struct vmm *vm = NULL;
    if ((r = read_config(&p.root, &cfg)) || (r = read_memory_section(&p.root, &ms)))
        goto out;
    if (ms.size != cfg.mem_size) {
        r = vmm_err(EINVAL, "snapshot memory is %llu bytes, its config says %llu",
                    (unsigned long long)ms.size, cfg.mem_size);
        goto out;
    }
    if ((r = open_chain(real, &ms, layers, &nlayers)))
        goto out;
    cfg.track_dirty = opts && opts->track_dirty;
    r = vm_build(&cfg, backend, layers, nlayers, &vm);
    nlayers = 0;   /* vm_build owns them, even when it fails */
    if (!r)
        r = apply_sections(vm, &p.root);
    if (!r && backend == VMM_MEM_UFFD && opts && opts->working_set)
        r = uffd_prefetch(vm, opts->working_set);
    if (r)
        goto out;
    snprintf(vm->parent, sizeof(vm->parent), "%s", real);
    *out = vm;
    vm = NULL;
out:
    if (r)
        r = vmm_err_ctx(r, "restore from %s", real);
    mem_layers_free(layers, nlayers);
    vmm_destroy(vm);
    free(p.buf);
    return r;
}

int vmm_snapshot_inspect(const char *dir, struct vmm_snapshot_info *info)
{
    struct parsed p;
    int r = parse_dir(dir, &p);
    if (r)
        return r;
    struct vmm_config cfg = {0};
    struct memory_section ms;
    if (!(r = read_config(&p.root, &cfg)) && !(r = read_memory_section(&p.root, &ms))) {
        memset(info, 0, sizeof(*info));
        info->mem_size = ms.size;
        info->vcpus = cfg.vcpus;
        info->diff = (int)ms.diff;
        info->pages = ms.pages;
        struct mem_layer layers[VMM_MAX_LAYERS];
        int n = 0;
        r = open_chain(dir, &ms, layers, &n);
        mem_layers_free(layers, n);
        info->depth = n > 0 ? (unsigned)n - 1 : 0;
    }
    free(p.buf);
    return r;
}

/* ---------- state without memory: for inspection and round trips ---------- */

static int encode_state(struct vmm *vm, struct enc *file)
{
    struct enc body;
    enc_init(&body);
    int r = encode_body(vm, &body, NULL);
    if (!r)
        r = vmstate_frame(&body, file);
    enc_free(&body);
    return r;
}

int vmm_state_size(struct vmm *vm, unsigned long long *size)
{
    int r = require_quiet(vm);
    if (r)
        return r;
    struct enc f;
    enc_init(&f);
    if (!(r = encode_state(vm, &f)))
        *size = f.len;
    enc_free(&f);
    return r;
}

int vmm_state_get(struct vmm *vm, void *buf, unsigned long long len, unsigned long long *used)
{
    int r = require_quiet(vm);
    if (r)
        return r;
    struct enc f;
    enc_init(&f);
    if (!(r = encode_state(vm, &f))) {
        if (f.len > len)
            r = vmm_err(ENOSPC, "vmstate needs %zu bytes, buffer has %llu", f.len, len);
        else {
            memcpy(buf, f.buf, f.len);
            *used = f.len;
        }
    }
    enc_free(&f);
    return r;
}

int vmm_state_set(struct vmm *vm, const void *buf, unsigned long long len)
{
    int r = require_quiet(vm);
    if (r)
        return r;
    struct dec_map root;
    struct vmm_config cfg = {0};
    if ((r = vmstate_parse(buf, len, &root)) || (r = read_config(&root, &cfg)))
        return r;
    if (cfg.vcpus != vm->cfg.vcpus || cfg.mem_size != vm->cfg.mem_size)
        return vmm_err(EINVAL, "vmstate is for %u vCPUs and %llu bytes; this VM has %u and %llu",
                       cfg.vcpus, cfg.mem_size, vm->cfg.vcpus, vm->cfg.mem_size);
    return apply_sections(vm, &root);
}
