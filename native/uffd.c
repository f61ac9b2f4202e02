/*
 * uffd.c - lazy guest memory: anonymous pages registered with userfaultfd, served on first
 * touch from the snapshot's layer chain (diff -> parent -> base), zero where no layer has the
 * page or the guest gave it back (REMOVE). Each fault also installs the rest of its 64 KiB block
 * that the layers hold (fault-around): one wake-up for many pages, which matters because waking
 * the faulting vCPU is most of a fault's cost (docs/kvm-notes.md). The handler records the order
 * pages were installed in as the working set a later restore installs up front. If the handler
 * dies the VM fails loudly: guest memory is marked untruthful first, then the range is
 * unregistered, which releases every thread blocked on a missing page without a page server.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "internal.h"

#define WS_MAGIC "VMMDWSET"
#define WS_VERSION 1
#define CTL_STOP 1
#define CTL_DIE 2
#define CTL_STALL 3
#define CTL_UNSTALL 4
#define MSG_BATCH 64
#define EAGAIN_RETRIES 1000
#define AROUND_PAGES 16           /* fault-around block: Linux's fault_around_bytes default */

struct uffd {
    _Atomic int fd;
    int ctl;                  /* eventfd: CTL_STOP, CTL_DIE */
    pthread_t thread;
    bool started;
    _Atomic bool dead, revoked;
    uint8_t *installed;       /* present now; every population goes through us (MISSING mode) */
    uint8_t *maps[VMM_MAX_LAYERS];   /* each layer's memory file, mapped read-only */
    uint32_t *ws;             /* installation order */
    size_t ws_len, ws_cap;
    pthread_mutex_t lock;     /* ws and installed against a concurrent working-set save */
};

static int open_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0 || (errno != EPERM && errno != ENOSYS))
        return fd < 0 ? -errno : fd;
    /* unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE: the device node may still allow it */
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0)
        return -errno;
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    int e = errno;
    close(dev);
    return fd < 0 ? -e : fd;
}

/* The layer holding page `pg`, or -1: zero (no layer has it, or the guest discarded it). */
static int layer_of(struct vmm *vm, const struct uffd *u, uint64_t pg)
{
    (void)u;
    if (abit_test(vm->mem.removed, pg))
        return -1;
    for (int l = 0; l < vm->mem.nlayers; l++)
        if (bit_test(vm->mem.layers[l].bitmap, pg))
            return l;
    return -1;
}

static void record(struct uffd *u, uint64_t first, uint64_t n)
{
    pthread_mutex_lock(&u->lock);
    for (uint64_t pg = first; pg < first + n; pg++) {
        if (bit_test(u->installed, pg))
            continue;
        bit_set(u->installed, pg);
        if (u->ws_len == u->ws_cap) {
            size_t cap = u->ws_cap ? u->ws_cap * 2 : 4096;
            uint32_t *nw = realloc(u->ws, cap * sizeof(*nw));
            if (!nw)
                continue;   /* the working set is an optimisation: a gap in it costs a fault */
            u->ws = nw;
            u->ws_cap = cap;
        }
        u->ws[u->ws_len++] = (uint32_t)pg;
    }
    pthread_mutex_unlock(&u->lock);
}

static int layer_lost(int layer, uint64_t pg)
{
    return vmm_err(EIO, "memory file of layer %d cannot give page %llu: truncated or unreadable",
                   layer, (unsigned long long)pg);
}

/*
 * UFFDIO_COPY of [first, first+n) straight from the layer's read-only mapping (no bounce copy);
 * the kernel's copy from a truncated file fails with EFAULT instead of raising SIGBUS here.
 */
static int copy_from_layer(struct vmm *vm, struct uffd *u, int layer, uint64_t first, uint64_t n,
                           bool wake, uint64_t *done)
{
    uint64_t off = 0;
    while (off < n) {
        struct uffdio_copy c = {
            .dst = (uint64_t)(uintptr_t)(vm->mem.base + (first + off) * PAGE_SIZE),
            .src = (uint64_t)(uintptr_t)(u->maps[layer] + (first + off) * PAGE_SIZE),
            .len = (n - off) * PAGE_SIZE,
            .mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE,
        };
        if (ioctl(atomic_load(&u->fd), UFFDIO_COPY, &c) == 0) {
            record(u, first + off, n - off);
            *done += n - off;
            return 0;
        }
        uint64_t copied = c.copy > 0 ? (uint64_t)c.copy / PAGE_SIZE : 0;
        record(u, first + off, copied);
        *done += copied;
        if (errno == EEXIST)
            off += copied + 1;
        else if (errno == EAGAIN)
            return -EAGAIN;
        else if (errno == EFAULT)
            return layer_lost(layer, first + off + copied);
        else
            return vmm_err(errno, "UFFDIO_COPY of pages %llu+%llu: %m",
                           (unsigned long long)(first + off), (unsigned long long)(n - off));
    }
    return 0;
}

/* Installs pages [first, first+n), all held by layers: one copy per stretch of one layer. */
static int copy_run(struct vmm *vm, struct uffd *u, uint64_t first, uint64_t n, bool wake,
                    uint64_t *done)
{
    for (uint64_t i = 0, j; i < n; i = j) {
        int layer = layer_of(vm, u, first + i), r;
        for (j = i + 1; j < n && layer_of(vm, u, first + j) == layer; j++)
            ;
        /* only the stretch holding the faulting page needs to wake; others are DONTWAKE */
        if ((r = copy_from_layer(vm, u, layer, first + i, j - i, wake, done)))
            return r;
    }
    return 0;
}

/* A fault whose page someone else installed (fault-around, DONTWAKE) still has a sleeper. */
static int wake_page(struct vmm *vm, struct uffd *u, uint64_t pg)
{
    struct uffdio_range w = {.start = (uint64_t)(uintptr_t)(vm->mem.base + pg * PAGE_SIZE),
                             .len = PAGE_SIZE};
    if (ioctl(atomic_load(&u->fd), UFFDIO_WAKE, &w) < 0)
        return vmm_err(errno, "UFFDIO_WAKE of page %llu: %m", (unsigned long long)pg);
    return 0;
}

/* One page, from its layer or as a zero page; for the faulting page and working-set prefetch. */
static int install_one(struct vmm *vm, struct uffd *u, uint64_t pg, bool wake,
                       bool *zero)
{
    int layer = layer_of(vm, u, pg);
    uint64_t done = 0;
    *zero = layer < 0;
    if (layer >= 0) {
        int r = copy_run(vm, u, pg, 1, wake, &done);
        return !r && wake && done == 0 ? wake_page(vm, u, pg) : r;
    }
    struct uffdio_zeropage z = {
        .range = {.start = (uint64_t)(uintptr_t)(vm->mem.base + pg * PAGE_SIZE), .len = PAGE_SIZE},
        .mode = wake ? 0 : UFFDIO_ZEROPAGE_MODE_DONTWAKE,
    };
    if (ioctl(atomic_load(&u->fd), UFFDIO_ZEROPAGE, &z) == 0) {
        record(u, pg, 1);
        return 0;
    }
    if (errno == EEXIST)
        return wake ? wake_page(vm, u, pg) : 0;
    return errno == EAGAIN ? -EAGAIN : vmm_err(errno, "UFFDIO_ZEROPAGE of page %llu: %m",
                                               (unsigned long long)pg);
}

static bool installable(struct vmm *vm, const struct uffd *u, uint64_t pg)
{
    return !bit_test(u->installed, pg) && layer_of(vm, u, pg) >= 0;
}

/*
 * The faulting page's block: the run of layer-held pages around it goes in one UFFDIO_COPY that
 * also wakes the vCPU (one read, one ioctl, one wake-up for the common case), the block's other
 * runs follow without waking. A zero page is installed alone. `installed` changes only on this
 * thread once vCPUs run, so it is read without the lock.
 */
static int serve_block(struct vmm *vm, struct uffd *u, uint64_t pg, bool *zero,
                       uint64_t *pages)
{
    uint64_t start = pg & ~(uint64_t)(AROUND_PAGES - 1), end = start + AROUND_PAGES, done = 0;
    if (end > vm->mem.npages)
        end = vm->mem.npages;
    *pages = 0;
    if (!installable(vm, u, pg)) {      /* a zero page, or installed since the fault was queued */
        int r = install_one(vm, u, pg, true, zero);
        *pages = r ? 0 : 1;
        if (r || *zero)
            return r;
    } else {
        uint64_t a = pg, b = pg + 1;
        while (a > start && installable(vm, u, a - 1))
            a--;
        while (b < end && installable(vm, u, b))
            b++;
        *zero = false;
        int r = copy_run(vm, u, a, b - a, true, &done);
        if (!r && done == 0)
            r = wake_page(vm, u, pg);   /* all of it appeared meanwhile: still wake the vCPU */
        *pages = done;
        if (r)
            return r;
    }
    for (uint64_t p = start; p < end;) {
        if (!installable(vm, u, p)) {
            p++;
            continue;
        }
        uint64_t q = p + 1;
        while (q < end && installable(vm, u, q))
            q++;
        done = 0;
        int r = copy_run(vm, u, p, q - p, false, &done);
        *pages += done;
        if (r == -EAGAIN)
            return 0;   /* a REMOVE raced us: the rest of the block can fault in later */
        if (r)
            return r;
        p = q;
    }
    return 0;
}

static void on_remove(struct vmm *vm, struct uffd *u, const struct uffd_msg *msg)
{
    uint64_t base = (uint64_t)(uintptr_t)vm->mem.base;
    uint64_t start = msg->arg.remove.start, end = msg->arg.remove.end;
    if (start < base)
        start = base;
    if (end > base + vm->mem.size)
        end = base + vm->mem.size;
    pthread_mutex_lock(&u->lock);
    for (uint64_t a = start; a < end; a += PAGE_SIZE) {
        uint64_t pg = (a - base) / PAGE_SIZE;
        abit_set(vm->mem.removed, pg);
        u->installed[pg >> 3] &= (uint8_t)~(1u << (pg & 7));
    }
    pthread_mutex_unlock(&u->lock);
    atomic_fetch_add(&vm->st.uffd_removes, 1);
}

static int serve_fault(struct vmm *vm, struct uffd *u, uint64_t addr)
{
    uint64_t base = (uint64_t)(uintptr_t)vm->mem.base;
    if (addr < base || addr >= base + vm->mem.size)
        return vmm_err(EFAULT, "fault at 0x%llx is outside guest memory", (unsigned long long)addr);
    uint64_t pg = (addr - base) / PAGE_SIZE, t0 = now_ns(), pages = 0;
    bool zero = false;
    int r;
    for (int tries = 0; (r = serve_block(vm, u, pg, &zero, &pages)) == -EAGAIN; tries++) {
        /* the mapping changed under us (a REMOVE is queued): take the events, then retry */
        struct uffd_msg msg;
        while (read(atomic_load(&u->fd), &msg, sizeof(msg)) == sizeof(msg))
            if (msg.event == UFFD_EVENT_REMOVE)
                on_remove(vm, u, &msg);
        if (tries == EAGAIN_RETRIES)
            return vmm_err(EAGAIN, "page %llu kept changing under the handler",
                           (unsigned long long)pg);
    }
    if (r)
        return r;
    atomic_fetch_add(&vm->st.uffd_faults, 1);
    atomic_fetch_add(&vm->st.uffd_pages, pages);
    if (zero)
        atomic_fetch_add(&vm->st.uffd_zero_pages, 1);
    atomic_fetch_add(&vm->st.uffd_fault_ns, now_ns() - t0);
    return 0;
}

/* Memory is declared untruthful before anything can read a zero page in place of the VM's. */
static void unregister_all(struct vmm *vm, struct uffd *u)
{
    if (atomic_exchange(&u->revoked, true))
        return;
    struct uffdio_range range = {.start = (uint64_t)(uintptr_t)vm->mem.base, .len = vm->mem.size};
    int fd = atomic_load(&u->fd);
    if (fd >= 0)
        ioctl(fd, UFFDIO_UNREGISTER, &range);   /* wakes every faulting thread */
}

void uffd_revoke(struct vmm *vm, const char *why)
{
    if (!vm->uffd)
        return;
    mem_fail(&vm->mem, why);
    unregister_all(vm, vm->uffd);
}

static void handler_died(struct vmm *vm, struct uffd *u, const char *why)
{
    char msg[512];
    snprintf(msg, sizeof(msg), "userfaultfd handler died: %s", why);
    atomic_store(&u->dead, true);
    mem_fail(&vm->mem, msg);
    vm_end(vm, VMM_STOP_ERROR, 0, msg);
    unregister_all(vm, u);
}

bool uffd_alive(struct vmm *vm)
{
    return !vm->uffd || (!atomic_load(&vm->uffd->dead) && !atomic_load(&vm->uffd->revoked));
}

/* Test builds: the handler stops serving, as a stuck one would, until unstalled or stopped. */
static bool stall(struct uffd *u)
{
    for (;;) {
        struct pollfd p = {.fd = u->ctl, .events = POLLIN};
        uint64_t v = 0;
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            return false;
        if (read(u->ctl, &v, sizeof(v)) != sizeof(v))
            continue;
        if (v == CTL_UNSTALL)
            return true;
        if (v == CTL_STOP)
            return false;
    }
}

static void *handler_thread(void *arg)
{
    struct vmm *vm = arg;
    struct uffd *u = vm->uffd;
    struct uffd_msg msgs[MSG_BATCH];
    char why[VMM_ERR_LEN];
    for (;;) {
        struct pollfd p[2] = {{.fd = atomic_load(&u->fd), .events = POLLIN},
                              {.fd = u->ctl, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            snprintf(why, sizeof(why), "poll: %s", strerror(errno));
            goto died;
        }
        if (p[1].revents) {
            uint64_t v = 0;
            if (read(u->ctl, &v, sizeof(v)) != sizeof(v))
                continue;
            if (v == CTL_STOP)
                break;
            if (v == CTL_STALL) {
                if (!stall(u))
                    break;
                continue;
            }
            if (v == CTL_UNSTALL)
                continue;
            snprintf(why, sizeof(why), "killed by fault injection");
            goto died;
        }
        if (p[0].revents & (POLLERR | POLLHUP)) {
            snprintf(why, sizeof(why), "userfaultfd closed");
            goto died;
        }
        if (atomic_load(&u->revoked))
            break;    /* nothing is registered any more: the VM is ending */
        ssize_t n = read(atomic_load(&u->fd), msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            snprintf(why, sizeof(why), "read: %s", strerror(errno));
            goto died;
        }
        /* events first: a REMOVE in the batch must govern the faults that follow it */
        for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
            if (msgs[i].event == UFFD_EVENT_REMOVE)
                on_remove(vm, u, &msgs[i]);
        for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
                continue;
            if (serve_fault(vm, u, msgs[i].arg.pagefault.address & ~(PAGE_SIZE - 1))) {
                snprintf(why, sizeof(why), "%s", vmm_last_error());
                goto died;
            }
        }
    }
    return NULL;
died:
    handler_died(vm, u, why);
    return NULL;
}

int uffd_setup(struct vmm *vm)
{
    struct guest_mem *m = &vm->mem;
    struct uffd *u = calloc(1, sizeof(*u));
    if (!u)
        return vmm_err(ENOMEM, "out of memory for the uffd handler");
    atomic_store(&u->fd, -1);
    u->ctl = -1;
    pthread_mutex_init(&u->lock, NULL);
    vm->uffd = u;
    if (!(u->installed = calloc(1, bitmap_bytes(m->npages))))
        return vmm_err(ENOMEM, "out of memory for uffd bitmaps");
    int fd = open_uffd();
    if (fd < 0)
        return vmm_err(-fd, "userfaultfd: %s (root, or vm.unprivileged_userfaultfd=1, or "
                       "access to /dev/userfaultfd is needed)", strerror(-fd));
    atomic_store(&u->fd, fd);
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
    if (ioctl(fd, UFFDIO_API, &api) < 0)
        return vmm_err(errno, "UFFDIO_API: %m");
    struct uffdio_register reg = {
        .range = {.start = (uint64_t)(uintptr_t)m->base, .len = m->size},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
        return vmm_err(errno, "UFFDIO_REGISTER of %llu bytes: %m", (unsigned long long)m->size);
    uint64_t need = (1ULL << _UFFDIO_COPY) | (1ULL << _UFFDIO_ZEROPAGE);
    if ((reg.ioctls & need) != need)
        return vmm_err(ENOTSUP, "userfaultfd on this kernel lacks COPY/ZEROPAGE for anon memory");
    if ((u->ctl = eventfd(0, EFD_CLOEXEC)) < 0)
        return vmm_err(errno, "eventfd: %m");
    for (int l = 0; l < m->nlayers; l++) {
        u->maps[l] = mmap(NULL, m->size, PROT_READ, MAP_SHARED | MAP_NORESERVE, m->layers[l].fd, 0);
        if (u->maps[l] == MAP_FAILED) {
            u->maps[l] = NULL;
            return vmm_err(errno, "mmap of layer %d's memory file: %m", l);
        }
    }
    /* the handler must run before vCPUs do: restore and host reads touch memory too */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&u->thread, NULL, handler_thread, vm);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e)
        return vmm_err(e, "starting the uffd handler: %s", strerror(e));
    u->started = true;
    return 0;
}

int uffd_start(struct vmm *vm)
{
    if (!uffd_alive(vm))
        return vmm_err(EIO, "uffd handler is gone: %s", vm->mem.failed_why);
    return 0;
}

void uffd_teardown(struct vmm *vm)
{
    struct uffd *u = vm->uffd;
    if (!u)
        return;
    if (u->started) {
        uint64_t v = CTL_STOP;
        if (write(u->ctl, &v, sizeof(v)) != sizeof(v))
            pthread_cancel(u->thread);
        pthread_join(u->thread, NULL);
    }
    int fd = atomic_exchange(&u->fd, -1);
    if (fd >= 0)
        close(fd);
    if (u->ctl >= 0)
        close(u->ctl);
    for (int l = 0; l < VMM_MAX_LAYERS; l++)
        if (u->maps[l])
            munmap(u->maps[l], vm->mem.size);
    pthread_mutex_destroy(&u->lock);
    free(u->installed);
    free(u->ws);
    free(u);
    vm->uffd = NULL;
}

int uffd_inject(struct vmm *vm, int what)
{
    if (!vm->uffd || !vm->uffd->started)
        return vmm_err(EINVAL, "VM has no uffd handler (restore it with the uffd backend)");
    uint64_t v = what == 1 ? CTL_DIE : what == 2 ? CTL_STALL : CTL_UNSTALL;
    if (write(vm->uffd->ctl, &v, sizeof(v)) != sizeof(v))
        return vmm_err(errno, "eventfd write: %m");
    return 0;
}

/* ---------- working set file: magic, version, count, u32 pages, crc32c ---------- */

int uffd_save_working_set(struct vmm *vm, const char *path)
{
    struct uffd *u = vm->uffd;
    if (!u)
        return vmm_err(EINVAL, "VM has no uffd handler: working sets are recorded on uffd restores");
    struct enc e;
    enc_init(&e);
    uint32_t ver = WS_VERSION, count;
    pthread_mutex_lock(&u->lock);
    count = (uint32_t)u->ws_len;
    enc_raw(&e, WS_MAGIC, 8);
    enc_raw(&e, &ver, 4);
    enc_raw(&e, &count, 4);
    enc_raw(&e, u->ws, count * sizeof(uint32_t));
    pthread_mutex_unlock(&u->lock);
    uint32_t crc = crc32c(0, e.buf, e.len);
    enc_raw(&e, &crc, 4);
    int r = e.err ? vmm_err(ENOMEM, "out of memory") : publish_file(path, e.buf, e.len);
    enc_free(&e);
    return r;
}

int uffd_prefetch(struct vmm *vm, int fd, const char *path)
{
    uint8_t *buf;
    size_t len;
    int r = vmstate_read_fd(fd, path, &buf, &len);
    if (r)
        return vmm_err_ctx(r, "working set");
    uint32_t ver, count, crc;
    if (len < 20 || memcmp(buf, WS_MAGIC, 8) != 0) {
        free(buf);
        return vmm_err(EINVAL, "%s is not a working-set file", path);
    }
    memcpy(&ver, buf + 8, 4);
    memcpy(&count, buf + 12, 4);
    memcpy(&crc, buf + len - 4, 4);
    if (ver != WS_VERSION || (size_t)count * 4 + 20 != len || crc != crc32c(0, buf, len - 4)) {
        free(buf);
        return vmm_err(EINVAL, "working set %s is corrupt, truncated or of another version", path);
    }
    for (uint32_t i = 0; i < count && !r; i++) {
        uint32_t pg;
        memcpy(&pg, buf + 16 + (size_t)i * 4, 4);
        if (pg >= vm->mem.npages) {
            r = vmm_err(EINVAL, "working set names page %u; the VM has %llu", pg,
                        (unsigned long long)vm->mem.npages);
            break;
        }
        bool zero;
        r = install_one(vm, vm->uffd, pg, false, &zero);
        if (r == -EAGAIN)
            r = 0;   /* the handler will serve it on demand */
        else if (!r)
            atomic_fetch_add(&vm->st.uffd_prefetched, 1);
    }
    free(buf);
    return r;
}

int vmm_working_set_save(struct vmm *vm, const char *path)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    r = uffd_save_working_set(vm, path);
    vm_leave(vm);
    return r;
}
