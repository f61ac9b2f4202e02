/* memory.c - guest RAM: one host mapping, its KVM slots, dirty pages, snapshot layers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "internal.h"

/* Above this many runs in one diff layer, copying beats thousands of small mappings. */
#define MAX_LAYER_MAPPINGS 8192

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
    if (!(m->host_dirty = calloc(1, bitmap_bytes(m->npages))))
        return vmm_err(ENOMEM, "out of memory for the dirty bitmap");
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
    free(m->host_dirty);
    mem_layers_free(m->layers, m->nlayers);
    memset(m, 0, sizeof(*m));
}

uint8_t *mem_hva(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
    for (int i = 0; i < m->nr; i++) {
        const struct mem_region *r = &m->r[i];
        if (gpa >= r->gpa && gpa - r->gpa <= r->size && len <= r->size - (gpa - r->gpa))
            return r->host + (gpa - r->gpa);
    }
    return NULL;
}

void mem_mark_dirty(struct guest_mem *m, uint64_t off, uint64_t len)
{
    if (!len)
        return;
    for (uint64_t p = off / PAGE_SIZE; p <= (off + len - 1) / PAGE_SIZE && p < m->npages; p++)
        bit_set(m->host_dirty, p);
}

int mem_register_kvm(struct vmm *vm, bool log_dirty)
{
    struct guest_mem *m = &vm->mem;
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
    vm->cfg.track_dirty = log_dirty;
    return 0;
}

int mem_dirty_bitmap(struct vmm *vm, uint8_t *out)
{
    struct guest_mem *m = &vm->mem;
    if (!vm->cfg.track_dirty)
        return vmm_err(EINVAL, "dirty tracking is off in this VM; create it with track_dirty");
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
                bit_set(out, first + w * 64 + (uint64_t)__builtin_ctzll(b));
        free(log);
    }
    for (size_t i = 0; i < bitmap_bytes(m->npages); i++) {
        out[i] |= m->host_dirty[i];
        m->host_dirty[i] = 0;
    }
    return 0;
}

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

/* mmap backend: the base file maps whole, each diff maps over it only where it has pages. */
int mem_map_layers(struct guest_mem *m)
{
    if (m->nlayers < 1)
        return vmm_err(EINVAL, "no memory file to map");
    int r = map_run(m, m->layers[m->nlayers - 1].fd, 0, m->npages, false);
    if (r)
        return r;
    for (int l = m->nlayers - 2; l >= 0; l--) {
        const uint8_t *bm = m->layers[l].bitmap;
        bool copy = count_runs(bm, m->npages) > MAX_LAYER_MAPPINGS;
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

int vmm_mem_discard(struct vmm *vm, unsigned long long gpa, unsigned long long len)
{
    struct guest_mem *m = &vm->mem;
    uint8_t *p = mem_hva(m, gpa, len);
    if (!p || gpa % PAGE_SIZE || len % PAGE_SIZE)
        return vmm_err(EINVAL, "discard 0x%llx+0x%llx: not page-aligned RAM", gpa, len);
    if (m->backend == VMM_MEM_MMAP) {
        /* DONTNEED on a private file mapping would bring the file's page back, not zeros */
        if (mmap(p, len, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
            return vmm_err(errno, "remapping discarded memory: %m");
    } else if (madvise(p, len, MADV_DONTNEED) < 0) {
        return vmm_err(errno, "madvise(MADV_DONTNEED): %m");
    }
    mem_mark_dirty(m, (uint64_t)(p - m->base), len);
    return 0;
}

#define PAGEMAP_PRESENT (1ULL << 63)
#define PAGEMAP_SWAPPED (1ULL << 62)
#define PAGEMAP_BATCH 4096

/*
 * Pages of anonymous guest memory that may hold data: present or swapped out. A page never
 * populated reads as zero, and reading it to find out would fault it in. Only meaningful for the
 * anon backend (a file mapping's missing page is in the file, a uffd one in the layers).
 */
int mem_populated(const struct guest_mem *m, uint8_t *out)
{
    if (m->backend != VMM_MEM_ANON)
        return vmm_err(EINVAL, "populated pages are known only for anonymous memory");
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vmm_err(errno, "open /proc/self/pagemap: %m");
    uint64_t ent[PAGEMAP_BATCH];
    uint64_t first = (uint64_t)(uintptr_t)m->base / PAGE_SIZE;
    int r = 0;
    for (uint64_t p = 0; p < m->npages && !r;) {
        uint64_t n = m->npages - p < PAGEMAP_BATCH ? m->npages - p : PAGEMAP_BATCH;
        ssize_t got = pread(fd, ent, n * 8, (off_t)((first + p) * 8));
        if (got != (ssize_t)(n * 8)) {
            r = vmm_err(got < 0 ? errno : EIO, "reading /proc/self/pagemap: %s",
                        got < 0 ? strerror(errno) : "short read");
            break;
        }
        for (uint64_t i = 0; i < n; i++)
            if (ent[i] & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED))
                bit_set(out, p + i);
        p += n;
    }
    close(fd);
    return r;
}
