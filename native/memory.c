/*
 * memory.c - guest RAM: one host mapping, its KVM slots, the pages dirtied since the parent
 * snapshot, the snapshot layers behind it, and the gm_* layer through which devices and the
 * host touch it. Host reads take each page from where its true content is (guest memory if the
 * VM touched it, else the layer file, else zero), so they never fault in untouched memory, never
 * wait on a page server, and fail rather than return zeros that are not the VM's.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include "internal.h"

/* Mappings one VM's layer chain may use (vm.max_map_count is 65530 for the whole process);
 * a layer that would go past it is copied instead. */
#define MAX_LAYER_MAPPINGS 8192

#define PAGEMAP_PRESENT (1ULL << 63)
#define PAGEMAP_SWAPPED (1ULL << 62)
#define PAGEMAP_FILE    (1ULL << 61)
#define PAGEMAP_BATCH 4096

int mem_alloc(struct guest_mem *m, const uint64_t *gpas, const uint64_t *sizes, int n, int backend)
{
    memset(m, 0, sizeof(*m));
    m->backend = backend;
    for (int i = 0; i < n; i++) {
        m->r[i] = (struct mem_region){.gpa = gpas[i], .size = sizes[i], .offset = m->size};
        m->size += sizes[i];
    }
    m->nr = n;
    m->npages = m->size / PAGE_SIZE;
    m->base = mmap(NULL, m->size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m->base == MAP_FAILED) {
        m->base = NULL;
        return vmm_err(errno, "mmap of %llu bytes of guest memory: %m",
                       (unsigned long long)m->size);
    }
    for (int i = 0; i < n; i++)
        m->r[i].host = m->base + m->r[i].offset;
    m->dirty = calloc(bitmap_words(m->npages), sizeof(uint64_t));
    m->removed = calloc(bitmap_words(m->npages), sizeof(uint64_t));
    if (!m->dirty || !m->removed)
        return vmm_err(ENOMEM, "out of memory for the page bitmaps");
    return 0;
}

void mem_layers_free(struct mem_layer *layers, int n)
{
    for (int i = 0; i < n; i++) {
        if (layers[i].fd >= 0)
            close(layers[i].fd);
        free(layers[i].bitmap);
        layers[i] = (struct mem_layer){.fd = -1};
    }
}

void mem_free(struct guest_mem *m)
{
    if (m->base)
        munmap(m->base, m->size);
    free((void *)m->dirty);
    free((void *)m->removed);
    mem_layers_free(m->layers, m->nlayers);
    memset(m, 0, sizeof(*m));
}

void mem_fail(struct guest_mem *m, const char *why)
{
    int expected = 0;
    if (atomic_load(&m->failed))
        return;
    snprintf(m->failed_why, sizeof(m->failed_why), "%s", why);
    atomic_compare_exchange_strong(&m->failed, &expected, 1);
}

static int failed_err(struct guest_mem *m)
{
    return vmm_err(EIO, "guest memory is no longer truthful: %s", m->failed_why);
}

/* The linear offset of [gpa, gpa+len) if it lies inside one region; *ok says whether it does. */
uint64_t mem_linear(const struct guest_mem *m, uint64_t gpa, uint64_t len, bool *ok)
{
    for (int i = 0; i < m->nr; i++) {
        const struct mem_region *r = &m->r[i];
        if (gpa >= r->gpa && gpa - r->gpa <= r->size && len <= r->size - (gpa - r->gpa)) {
            *ok = true;
            return r->offset + (gpa - r->gpa);
        }
    }
    *ok = false;
    return 0;
}

/* ---------- the gm layer ---------- */

static void mark_linear(struct guest_mem *m, uint64_t off, uint64_t len)
{
    if (!len)
        return;
    for (uint64_t p = off / PAGE_SIZE; p <= (off + len - 1) / PAGE_SIZE && p < m->npages; p++)
        abit_set(m->dirty, p);
}

void gm_mark_dirty(struct guest_mem *m, uint64_t gpa, uint64_t len)
{
    bool ok;
    uint64_t off = mem_linear(m, gpa, len, &ok);
    if (ok)
        mark_linear(m, off, len);
}

void *gm_slice(struct guest_mem *m, uint64_t gpa, uint64_t len, bool write)
{
    bool ok;
    uint64_t off = mem_linear(m, gpa, len, &ok);
    if (!ok)
        return NULL;
    if (write)
        mark_linear(m, off, len);
    return m->base + off;
}

int gm_done(struct guest_mem *m)
{
    return atomic_load_explicit(&m->failed, memory_order_acquire) ? failed_err(m) : 0;
}

int gm_read(struct guest_mem *m, uint64_t gpa, void *dst, uint64_t len)
{
    uint8_t *p = gm_slice(m, gpa, len, false);
    if (!p)
        return vmm_err(EFAULT, "guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                       (unsigned long long)len);
    memcpy(dst, p, len);
    return gm_done(m);   /* a copy that raced a dead page server may hold zeros: refuse it */
}

int gm_write(struct guest_mem *m, uint64_t gpa, const void *src, uint64_t len)
{
    bool ok;
    uint64_t off = mem_linear(m, gpa, len, &ok);
    if (!ok)
        return vmm_err(EFAULT, "guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                       (unsigned long long)len);
    memcpy(m->base + off, src, len);
    mark_linear(m, off, len);   /* after the copy: a snapshot can only see the bit late, not early */
    return gm_done(m);
}

int gm_load_acquire16(struct guest_mem *m, uint64_t gpa, uint16_t *v)
{
    uint16_t *p = gpa % 2 ? NULL : gm_slice(m, gpa, 2, false);
    if (!p)
        return vmm_err(EFAULT, "ring index at 0x%llx is unaligned or not RAM",
                       (unsigned long long)gpa);
    *v = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    return gm_done(m);
}

int gm_store_release16(struct guest_mem *m, uint64_t gpa, uint16_t v)
{
    uint16_t *p = gpa % 2 ? NULL : gm_slice(m, gpa, 2, true);
    if (!p)
        return vmm_err(EFAULT, "ring index at 0x%llx is unaligned or not RAM",
                       (unsigned long long)gpa);
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    return gm_done(m);
}

/* ---------- KVM slots and the dirty log ---------- */

int mem_register_kvm(struct vmm *vm, bool log_dirty)
{
    struct guest_mem *m = &vm->mem;
    uint64_t t0 = now_ns();
    for (int i = 0; i < m->nr; i++) {
        struct kvm_userspace_memory_region reg = {
            .slot = (uint32_t)i,
            .flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0,
            .guest_phys_addr = m->r[i].gpa,
            .memory_size = m->r[i].size,
            .userspace_addr = (uint64_t)(uintptr_t)m->r[i].host,
        };
        if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &reg) < 0)
            return vmm_err(errno, "KVM_SET_USER_MEMORY_REGION slot %d: %m", i);
    }
    atomic_fetch_add(&vm->st.memslot_ns, now_ns() - t0);
    vm->cfg.track_dirty = log_dirty;
    return 0;
}

/* Moves KVM's log (which reading clears) into m->dirty, where bits stay until a snapshot that
 * holds their pages is durable. */
int mem_harvest_dirty(struct vmm *vm)
{
    struct guest_mem *m = &vm->mem;
    if (!vm->cfg.track_dirty)
        return 0;
    for (int i = 0; i < m->nr; i++) {
        uint64_t pages = m->r[i].size / PAGE_SIZE, words = (pages + 63) / 64;
        uint64_t *log = calloc(words, 8);
        if (!log)
            return vmm_err(ENOMEM, "out of memory for the dirty log");
        struct kvm_dirty_log dl = {.slot = (uint32_t)i, .dirty_bitmap = log};
        if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &dl) < 0) {
            free(log);
            return vmm_err(errno, "KVM_GET_DIRTY_LOG slot %d: %m", i);
        }
        uint64_t first = m->r[i].offset / PAGE_SIZE;
        for (uint64_t w = 0; w < words; w++)
            for (uint64_t b = log[w]; b; b &= b - 1)
                abit_set(m->dirty, first + w * 64 + (uint64_t)__builtin_ctzll(b));
        free(log);
    }
    return 0;
}

/* ---------- layers: mapping, protection, health ---------- */

static int map_run(struct guest_mem *m, int fd, uint64_t first, uint64_t n, bool copy)
{
    uint64_t off = first * PAGE_SIZE, len = n * PAGE_SIZE;
    if (copy) {
        for (uint64_t done = 0; done < len;) {
            ssize_t r = pread(fd, m->base + off + done, len - done, (off_t)(off + done));
            if (r <= 0)
                return vmm_err(r < 0 ? errno : EIO, "reading the memory file at %llu: %s",
                               (unsigned long long)(off + done), r < 0 ? strerror(errno) : "short file");
            done += (uint64_t)r;
        }
        return 0;
    }
    if (mmap(m->base + off, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
             fd, (off_t)off) == MAP_FAILED)
        return vmm_err(errno, "mmap of the memory file at %llu: %m", (unsigned long long)off);
    return 0;
}

static uint64_t count_runs(const uint8_t *bm, uint64_t npages)
{
    uint64_t runs = 0;
    for (uint64_t p = 0; p < npages; p++)
        if (bit_test(bm, p) && (p == 0 || !bit_test(bm, p - 1)))
            runs++;
    return runs;
}

/* mmap backend: the base file maps whole, each diff maps over it where it has pages, or is
 * copied once the chain's mappings would pass the budget. */
int mem_map_layers(struct guest_mem *m)
{
    if (m->nlayers < 1)
        return vmm_err(EINVAL, "no memory file to map");
    int r = map_run(m, m->layers[m->nlayers - 1].fd, 0, m->npages, false);
    if (r)
        return r;
    uint64_t used = 1;
    for (int l = m->nlayers - 2; l >= 0; l--) {
        const uint8_t *bm = m->layers[l].bitmap;
        uint64_t runs = count_runs(bm, m->npages);
        /* each run is one mapping and may split the one under it in two */
        bool copy = used + 2 * runs > MAX_LAYER_MAPPINGS;
        if (!copy)
            used += 2 * runs;
        for (uint64_t p = 0; p < m->npages;) {
            if (!bit_test(bm, p)) {
                p++;
                continue;
            }
            uint64_t q = p;
            while (q < m->npages && bit_test(bm, q))
                q++;
            if ((r = map_run(m, m->layers[l].fd, p, q - p, copy)))
                return r;
            p = q;
        }
    }
    return 0;
}

/* A file truncated under a MAP_PRIVATE mapping turns the next touch into SIGBUS; an immutable
 * file cannot be truncated, written or replaced, so mapped layers are made so. */
int mem_protect_layers(struct guest_mem *m)
{
    for (int l = 0; l < m->nlayers; l++) {
        int flags = 0;
        if (ioctl(m->layers[l].fd, FS_IOC_GETFLAGS, &flags) < 0 ||
            (!(flags & FS_IMMUTABLE_FL) &&
             (flags |= FS_IMMUTABLE_FL, ioctl(m->layers[l].fd, FS_IOC_SETFLAGS, &flags) < 0)))
            return vmm_err(errno, "the mmap backend keeps memory files immutable while they are "
                           "mapped, and layer %d's cannot be made so (%m): keep snapshots on a "
                           "filesystem with chattr +i (ext4, xfs, btrfs, tmpfs) and run with "
                           "CAP_LINUX_IMMUTABLE, or restore with the uffd backend", l);
    }
    return 0;
}

int mem_check_backing(struct guest_mem *m)
{
    if (atomic_load(&m->failed))
        return failed_err(m);
    for (int l = 0; l < m->nlayers; l++) {
        struct stat st;
        if (fstat(m->layers[l].fd, &st) < 0 || (uint64_t)st.st_size < m->size) {
            char why[200];
            snprintf(why, sizeof(why), "the memory file of layer %d was truncated to %lld bytes "
                     "under the VM", l, (long long)st.st_size);
            mem_fail(m, why);
            return failed_err(m);
        }
    }
    return 0;
}

/* ---------- where a page's content is ---------- */

static int layer_of(const struct guest_mem *m, uint64_t pg)
{
    for (int l = 0; l < m->nlayers; l++)
        if (bit_test(m->layers[l].bitmap, pg))
            return l;
    return PAGE_ZERO;
}

/*
 * For each page of [first, first+n): guest memory if the VM wrote or was given it (present and
 * anonymous, or swapped out), else zero if discarded, else the newest layer holding it, else
 * zero. /proc/self/pagemap tells without touching the page.
 */
int mem_page_sources(struct guest_mem *m, uint64_t first, uint64_t n, int8_t *out)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vmm_err(errno, "open /proc/self/pagemap: %m");
    uint64_t *ent = malloc(PAGEMAP_BATCH * sizeof(*ent));
    if (!ent) {
        close(fd);
        return vmm_err(ENOMEM, "out of memory reading the page map");
    }
    uint64_t vbase = (uint64_t)(uintptr_t)m->base / PAGE_SIZE;
    int r = 0;
    for (uint64_t i = 0; i < n && !r;) {
        uint64_t k = n - i < PAGEMAP_BATCH ? n - i : PAGEMAP_BATCH;
        ssize_t got = pread(fd, ent, k * 8, (off_t)((vbase + first + i) * 8));
        if (got != (ssize_t)(k * 8)) {
            r = vmm_err(got < 0 ? errno : EIO, "reading /proc/self/pagemap: %s",
                        got < 0 ? strerror(errno) : "short read");
            break;
        }
        for (uint64_t j = 0; j < k; j++) {
            uint64_t pg = first + i + j, e = ent[j];
            bool touched = (e & PAGEMAP_SWAPPED) || ((e & PAGEMAP_PRESENT) && !(e & PAGEMAP_FILE));
            if (touched)
                out[i + j] = PAGE_FROM_MEMORY;
            else if (abit_test(m->removed, pg))
                out[i + j] = PAGE_ZERO;
            else
                out[i + j] = (int8_t)layer_of(m, pg);
        }
        i += k;
    }
    free(ent);
    close(fd);
    return r;
}

/* Guest memory into buf through the kernel: a page the kernel cannot supply is EFAULT here,
 * not SIGBUS. */
static int copy_from_memory(struct guest_mem *m, uint64_t off, uint8_t *buf, uint64_t len)
{
    while (len) {
        struct iovec local = {.iov_base = buf, .iov_len = len};
        struct iovec remote = {.iov_base = m->base + off, .iov_len = len};
        ssize_t r = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (r <= 0)
            return vmm_err(r < 0 ? errno : EIO, "guest memory at linear offset 0x%llx cannot be "
                           "read (%s): its backing is gone",
                           (unsigned long long)off, r < 0 ? strerror(errno) : "no progress");
        off += (uint64_t)r;
        buf += r;
        len -= (uint64_t)r;
    }
    return 0;
}

static int copy_from_layer(struct guest_mem *m, int l, uint64_t off, uint8_t *buf, uint64_t len)
{
    while (len) {
        ssize_t r = pread(m->layers[l].fd, buf, len, (off_t)off);
        if (r <= 0) {
            char why[200];
            snprintf(why, sizeof(why), "the memory file of layer %d cannot give offset 0x%llx: %s",
                     l, (unsigned long long)off, r < 0 ? strerror(errno) : "truncated");
            if (r == 0)
                mem_fail(m, why);
            return vmm_err(r < 0 ? errno : EIO, "%s", why);
        }
        off += (uint64_t)r;
        buf += r;
        len -= (uint64_t)r;
    }
    return 0;
}

/* Linear [off, off+len) into buf, each page from where its content is. */
static int read_linear(struct guest_mem *m, uint64_t off, uint8_t *buf, uint64_t len)
{
    if (!len)
        return gm_done(m);
    uint64_t first = off / PAGE_SIZE, last = (off + len - 1) / PAGE_SIZE;
    int8_t src[256];
    int r = 0;
    for (uint64_t pg = first; pg <= last && !r;) {
        uint64_t n = last - pg + 1 < sizeof(src) ? last - pg + 1 : sizeof(src);
        if ((r = mem_page_sources(m, pg, n, src)))
            break;
        for (uint64_t i = 0; i < n && !r;) {
            uint64_t j = i + 1;
            while (j < n && src[j] == src[i])
                j++;
            uint64_t a = (pg + i) * PAGE_SIZE, b = (pg + j) * PAGE_SIZE;
            if (a < off)
                a = off;
            if (b > off + len)
                b = off + len;
            uint8_t *dst = buf + (a - off);
            if (src[i] == PAGE_FROM_MEMORY)
                r = copy_from_memory(m, a, dst, b - a);
            else if (src[i] == PAGE_ZERO)
                memset(dst, 0, b - a);
            else
                r = copy_from_layer(m, src[i], a, dst, b - a);
            i = j;
        }
        pg += n;
    }
    return r ? r : gm_done(m);
}

int mem_read_src(struct guest_mem *m, uint64_t first, uint64_t n, int src, uint8_t *buf)
{
    uint64_t off = first * PAGE_SIZE, len = n * PAGE_SIZE;
    if (src == PAGE_FROM_MEMORY)
        return copy_from_memory(m, off, buf, len);
    if (src == PAGE_ZERO) {
        memset(buf, 0, len);
        return 0;
    }
    return copy_from_layer(m, src, off, buf, len);
}

int mem_read_host(struct guest_mem *m, uint64_t off, void *buf, uint64_t len)
{
    int r = atomic_load(&m->failed) ? failed_err(m) : 0;
    return r ? r : read_linear(m, off, buf, len);
}

/* ---------- discard ---------- */

int vmm_mem_discard(struct vmm *vm, unsigned long long gpa, unsigned long long len)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    struct guest_mem *m = &vm->mem;
    bool ok;
    uint64_t off = mem_linear(m, gpa, len, &ok);
    if (!ok || gpa % PAGE_SIZE || len % PAGE_SIZE) {
        r = vmm_err(EINVAL, "discard 0x%llx+0x%llx: not page-aligned RAM", gpa, len);
        goto out;
    }
    if ((r = mem_check_backing(m)))
        goto out;
    for (uint64_t p = off / PAGE_SIZE; p < (off + len) / PAGE_SIZE; p++)
        abit_set(m->removed, p);
    uint8_t *p = m->base + off;
    if (m->backend == VMM_MEM_MMAP) {
        /* DONTNEED on a private file mapping would bring the file's page back, not zeros */
        if (mmap(p, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
            r = vmm_err(errno, "remapping discarded memory: %m");
    } else if (madvise(p, len, MADV_DONTNEED) < 0) {
        r = vmm_err(errno, "madvise(MADV_DONTNEED): %m");
    }
    mark_linear(m, off, len);
out:
    vm_op_end(vm);
    return r;
}
