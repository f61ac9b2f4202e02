/*
 * vm.c - a VM's life: create, start, pause, resume, stop, wait, destroy; and the rules every
 * public call follows. Each call registers itself in flight (vm_enter) so destroy can wait for
 * it; operations that change the VM also hold op_lock, so pause/resume/snapshot/state/stop
 * never interleave. Errors are per-thread messages, like errno.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "internal.h"
#include "arch.h"
#include "devices/devices.h"
#include "devices/virtio_mmio.h"

#define PAUSE_TIMEOUT_MS 5000
#define QUIESCE_TIMEOUT_MS 5000
#define STOP_GRACE_MS 200

/* ---------- errors and time ---------- */

/* Thread-local like errno: a failed vmm_create has no handle to hang a message on. */
static _Thread_local char last_error[VMM_ERR_LEN];

const char *vmm_last_error(void) { return last_error; }

int vmm_err(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return -err;
}

int vmm_err_ctx(int err, const char *fmt, ...)
{
    char prev[VMM_ERR_LEN], pre[VMM_ERR_LEN];
    snprintf(prev, sizeof(prev), "%s", last_error);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof(pre), fmt, ap);
    va_end(ap);
    snprintf(last_error, sizeof(last_error), "%s: %s", pre, prev);
    return err < 0 ? err : -err;
}

uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

const char *vmm_version(void) { return "vmm-native " VMM_NATIVE_VERSION; }

/* ---------- calls in flight and the operation lock ---------- */

int vm_enter(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    bool closing = vm->closing;
    if (!closing)
        vm->users++;
    pthread_mutex_unlock(&vm->lock);
    return closing ? vmm_err(ESHUTDOWN, "the VM is being destroyed") : 0;
}

void vm_leave(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    if (--vm->users == 0)
        pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
}

int vm_op_begin(struct vmm *vm)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    pthread_mutex_lock(&vm->op_lock);
    pthread_mutex_lock(&vm->lock);
    bool closing = vm->closing;
    pthread_mutex_unlock(&vm->lock);
    if (closing) {
        vm_op_end(vm);
        return vmm_err(ESHUTDOWN, "the VM is being destroyed");
    }
    return 0;
}

void vm_op_end(struct vmm *vm)
{
    pthread_mutex_unlock(&vm->op_lock);
    vm_leave(vm);
}

void vm_end(struct vmm *vm, int reason, long long code, const char *msg)
{
    pthread_mutex_lock(&vm->lock);
    if (vm->stop_reason == VMM_STOP_NONE) {
        vm->stop_reason = reason;
        vm->exit_code = code;
        snprintf(vm->message, sizeof(vm->message), "%s", msg);
    }
    atomic_store(&vm->stop_req, true);
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    vcpus_kick(vm);
}

/* Folds a finished run into the state; caller holds the lock. */
static int settled_state(struct vmm *vm)
{
    if (atomic_load(&vm->stop_req) && vm->live_threads == 0 &&
        (vm->state == VMM_STATE_RUNNING || vm->state == VMM_STATE_PAUSED))
        vm->state = vm->stop_reason == VMM_STOP_ERROR ? VMM_STATE_FAILED : VMM_STATE_STOPPED;
    return vm->state;
}

int vm_state_locked(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    int st = settled_state(vm);
    pthread_mutex_unlock(&vm->lock);
    return st;
}

/* FAILED from the moment this returns: nobody may resume what is half-changed while the
 * parked vCPU threads are still on their way out. */
void vm_fail(struct vmm *vm, const char *msg)
{
    vm_end(vm, VMM_STOP_ERROR, 0, msg);
    pthread_mutex_lock(&vm->lock);
    vm->state = VMM_STATE_FAILED;
    pthread_mutex_unlock(&vm->lock);
}

/* ---------- building ---------- */

static int check_config(const struct vmm_config *cfg)
{
    if (cfg->vcpus < 1 || cfg->vcpus > VMM_MAX_VCPUS)
        return vmm_err(EINVAL, "vcpus=%u: a VM has 1 to %d vCPUs", cfg->vcpus, VMM_MAX_VCPUS);
    if (cfg->mem_size < VMM_MIN_MEM || cfg->mem_size > VMM_MAX_MEM || cfg->mem_size % PAGE_SIZE)
        return vmm_err(EINVAL, "mem_size=%llu: memory is a multiple of 4 KiB from 1 MiB to 32 GiB",
                       cfg->mem_size);
    if (cfg->ndevices > VMM_MAX_CONFIG_DEVICES || (cfg->ndevices && !cfg->devices))
        return vmm_err(EINVAL, "%u devices: a VM has at most %d configured devices",
                       cfg->ndevices, VMM_MAX_CONFIG_DEVICES);
    return 0;
}

/* Guest memory as the backend wants it, registered with KVM; takes the layers, even on failure. */
static int build_memory(struct vmm *vm, int backend, struct mem_layer *layers, int nlayers)
{
    uint64_t gpas[VMM_MAX_REGIONS], sizes[VMM_MAX_REGIONS];
    int n = arch_memory_layout(vm->cfg.mem_size, gpas, sizes, VMM_MAX_REGIONS);
    if (n < 0) {
        mem_layers_free(layers, nlayers);
        return n;
    }
    int r = mem_alloc(&vm->mem, gpas, sizes, n, backend);
    if (r) {
        mem_layers_free(layers, nlayers);
        return r;
    }
    for (int i = 0; i < nlayers; i++)
        vm->mem.layers[i] = layers[i];
    vm->mem.nlayers = nlayers;
    if (backend == VMM_MEM_MMAP)
        r = mem_protect_layers(&vm->mem);
    if (!r && backend == VMM_MEM_MMAP)
        r = mem_map_layers(&vm->mem);
    else if (!r && backend == VMM_MEM_UFFD)
        r = uffd_setup(vm);
    return r ? r : mem_register_kvm(vm, vm->cfg.track_dirty);
}

static int create_vcpus(struct vmm *vm)
{
    int run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run))
        return vmm_err(errno, "KVM_GET_VCPU_MMAP_SIZE: %m");
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        c->vm = vm;
        c->id = (int)i;
        if ((c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i)) < 0)
            return vmm_err(errno, "KVM_CREATE_VCPU %u: %m", i);
        c->run_size = (size_t)run_size;
        c->run = mmap(NULL, c->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
        if (c->run == MAP_FAILED) {
            c->run = NULL;
            return vmm_err(errno, "mmap of vCPU %u's kvm_run: %m", i);
        }
        int r = arch_vcpu_init(vm, c);
        if (r)
            return r;
    }
    return 0;
}

/*
 * Everything but memory contents and vCPU registers: shared by create and restore. `layers` are
 * the snapshot's memory files for the mmap and uffd backends; the VM owns them from here on,
 * even when this fails. Devices come from cfg->devices, never from a snapshot.
 */
int vm_build(const struct vmm_config *cfg, int backend, struct mem_layer *layers, int nlayers,
             struct vmm **out)
{
    int r = check_config(cfg);
    struct vmm *vm = r ? NULL : calloc(1, sizeof(*vm));
    if (!vm) {
        mem_layers_free(layers, nlayers);
        return r ? r : vmm_err(ENOMEM, "out of memory for the VM");
    }
    vm->cfg = *cfg;
    for (unsigned i = 0; i < cfg->ndevices; i++)
        vm->devcfg[i] = cfg->devices[i];   /* paths are read only while building: then cleared */
    vm->cfg.devices = vm->devcfg;
    vm->kvm_fd = vm->vm_fd = -1;
    for (int i = 0; i < VMM_MAX_VCPUS; i++)
        vm->vcpus[i].fd = -1;
    pthread_mutex_init(&vm->lock, NULL);
    pthread_mutex_init(&vm->op_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&vm->cond, &ca);
    pthread_condattr_destroy(&ca);
    vm->state = VMM_STATE_CREATED;

    if ((vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)) < 0) {
        r = vmm_err(errno, "open /dev/kvm: %m (is KVM available and are you in the kvm group?)");
        goto fail;
    }
    if (ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
        r = vmm_err(ENOTSUP, "KVM API version is not %d", KVM_API_VERSION);
        goto fail;
    }
    if ((vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0)) < 0) {
        r = vmm_err(errno, "KVM_CREATE_VM: %m");
        goto fail;
    }
    if ((r = arch_vm_init(vm)))
        goto fail;
    r = build_memory(vm, backend, layers, nlayers);
    nlayers = 0;
    if (r || (r = arch_irqchip_create(vm)) || (r = create_vcpus(vm)) ||
        (r = arch_irqchip_finalize(vm)) || (r = evl_create(&vm->loop)))
        goto fail;
    vm->dm.env = (struct dev_env){.mem = &vm->mem, .loop = vm->loop, .vm_fd = vm->vm_fd,
                                  .st = &vm->st};
    r = devmgr_build(vm, cfg->devices, cfg->ndevices);
    for (unsigned i = 0; i < cfg->ndevices; i++)       /* the caller's strings: not kept */
        vm->devcfg[i].path = vm->devcfg[i].overlay = NULL;
    if (r)
        goto fail;
    *out = vm;
    return 0;
fail:
    mem_layers_free(layers, nlayers);   /* nonzero only if we failed before memory took them */
    vmm_destroy(vm);
    return r;
}

int vmm_create(const struct vmm_config *cfg, struct vmm **out)
{
    struct vmm *vm;
    int r = vm_build(cfg, VMM_MEM_ANON, NULL, 0, &vm);
    if (r)
        return r;
    for (unsigned i = 0; i < cfg->vcpus; i++)
        if ((r = arch_vcpu_defaults(vm, &vm->vcpus[i]))) {
            vmm_destroy(vm);
            return r;
        }
    *out = vm;
    return 0;
}

/* ---------- ending ---------- */

/* vCPU threads stuck on a page the server does not deliver are released by revoking memory. */
static void end_threads(struct vmm *vm, bool revoke)
{
    if (vm->uffd && (revoke || !vcpus_wait_exit(vm, STOP_GRACE_MS)))
        uffd_revoke(vm, revoke ? "the VM was destroyed"
                               : "the VM was stopped while its page server did not respond");
    vcpus_join(vm);
}

void vmm_shutdown(struct vmm *vm)
{
    if (!vm)
        return;
    pthread_mutex_lock(&vm->lock);
    vm->closing = true;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    vm_end(vm, VMM_STOP_HOST, 0, "destroyed by the host");
    /* a call in flight may wait on a page the server never delivers: release it */
    if (vm->uffd)
        uffd_revoke(vm, "the VM was destroyed");
}

void vmm_destroy(struct vmm *vm)
{
    if (!vm)
        return;
    vmm_shutdown(vm);
    pthread_mutex_lock(&vm->lock);
    while (vm->users > 0)
        pthread_cond_wait(&vm->cond, &vm->lock);
    pthread_mutex_unlock(&vm->lock);
    end_threads(vm, true);
    evl_destroy(vm->loop);       /* before devices: handlers point into them */
    devmgr_destroy(&vm->dm);
    uffd_teardown(vm);
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        if (vm->vcpus[i].run)
            munmap(vm->vcpus[i].run, vm->vcpus[i].run_size);
        if (vm->vcpus[i].fd >= 0)
            close(vm->vcpus[i].fd);
    }
    if (vm->arch)
        arch_vm_destroy(vm);
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->kvm_fd >= 0)
        close(vm->kvm_fd);
    mem_free(&vm->mem);
    pthread_mutex_destroy(&vm->lock);
    pthread_mutex_destroy(&vm->op_lock);
    pthread_cond_destroy(&vm->cond);
    free(vm);
}

/* ---------- running ---------- */

int vmm_load_flat(struct vmm *vm, const void *image, unsigned long long len,
                  const struct vmm_flat_boot *boot)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    if (vm_state_locked(vm) != VMM_STATE_CREATED)
        r = vmm_err(EBUSY, "load a guest before starting the VM");
    else if ((r = gm_write(&vm->mem, boot->load_gpa, image, len)))
        r = vmm_err(EINVAL, "image of %llu bytes at 0x%llx does not fit in guest memory",
                    len, boot->load_gpa);
    else
        r = arch_flat_boot(vm, boot);
    vm_op_end(vm);
    return r;
}

/* A file the host names (kernel, initrd), mapped read-only for the loader. */
static int map_file(const char *path, const char *what, void **p, size_t *len)
{
    *p = NULL;
    *len = 0;
    if (!path)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return vmm_err(errno, "%s %s: %m", what, path);
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size == 0)
        r = vmm_err(EINVAL, "%s %s is not a non-empty regular file", what, path);
    else if ((*p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED) {
        *p = NULL;
        r = vmm_err(errno, "mapping %s %s: %m", what, path);
    } else
        *len = (size_t)st.st_size;
    close(fd);
    return r;
}

int vmm_load_linux(struct vmm *vm, const struct vmm_linux_boot *boot)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    void *kernel = NULL, *initrd = NULL;
    size_t klen = 0, ilen = 0;
    if (vm_state_locked(vm) != VMM_STATE_CREATED || vm->has_parent)
        r = vmm_err(EBUSY, "load a kernel into a new VM, before it starts");
    else if (!boot || !boot->kernel)
        r = vmm_err(EINVAL, "no kernel to load");
    else if (!(r = map_file(boot->kernel, "kernel", &kernel, &klen)) &&
             !(r = map_file(boot->initrd, "initrd", &initrd, &ilen)))
        r = arch_load_linux(vm, kernel, klen, initrd, ilen, boot->cmdline ? boot->cmdline : "");
    if (kernel)
        munmap(kernel, klen);
    if (initrd)
        munmap(initrd, ilen);
    vm_op_end(vm);
    return r;
}

int vmm_start(struct vmm *vm)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    int st = vm_state_locked(vm);
    if (st != VMM_STATE_CREATED) {
        vm_op_end(vm);
        return vmm_err(EBUSY, "VM is not newly created or restored (state %d); start it once", st);
    }
    if (vm->uffd && (r = uffd_start(vm)))
        goto out;
    for (unsigned i = 0; i < vm->cfg.vcpus && !r; i++)
        r = arch_vcpu_resumed(vm, &vm->vcpus[i]);
    if (r || (r = arch_vm_resume(vm)) || (r = evl_start(vm->loop)))
        goto out;
    pthread_mutex_lock(&vm->lock);
    vm->state = VMM_STATE_RUNNING;
    pthread_mutex_unlock(&vm->lock);
    if ((r = vcpus_start(vm)))
        vm_end(vm, VMM_STOP_ERROR, 0, vmm_last_error());
out:
    vm_op_end(vm);
    return r;
}

void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* vCPUs park with their I/O completed (vcpu.c); then the event loop and devices go quiet. */
static int pause_locked(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    int st = settled_state(vm);
    if (st != VMM_STATE_RUNNING) {
        pthread_mutex_unlock(&vm->lock);
        return st == VMM_STATE_PAUSED ? 0 : vmm_err(EBUSY, "VM is not running (state %d)", st);
    }
    atomic_store(&vm->pause_req, true);
    pthread_mutex_unlock(&vm->lock);
    vcpus_kick(vm);
    struct timespec ts;
    deadline_in(&ts, PAUSE_TIMEOUT_MS);
    int r = 0;
    pthread_mutex_lock(&vm->lock);
    while (vm->parked < vm->live_threads && !atomic_load(&vm->stop_req))
        if (pthread_cond_timedwait(&vm->cond, &vm->lock, &ts) == ETIMEDOUT) {
            r = vmm_err(ETIMEDOUT, "vCPUs did not park within %d ms", PAUSE_TIMEOUT_MS);
            break;
        }
    if (!r && atomic_load(&vm->stop_req))
        r = vmm_err(ESHUTDOWN, "VM stopped while pausing: %s", vm->message);
    pthread_mutex_unlock(&vm->lock);
    if (r == -ETIMEDOUT && vm->uffd) {
        /* A vCPU that cannot park is waiting on a page the server does not deliver; kicked, it
         * spins in KVM on this kind of host until the page comes. Such a VM is broken: end it
         * loudly rather than leave it burning a CPU (docs/kvm-notes.md). */
        const char *why = "a vCPU waited on a page the userfaultfd handler did not serve for "
                          "the whole pause timeout";
        uffd_revoke(vm, why);
        vm_fail(vm, why);
        r = vmm_err(ETIMEDOUT, "vCPUs did not park within %d ms: %s; the VM is failed",
                    PAUSE_TIMEOUT_MS, why);
    }
    bool arch_paused = !r && !(r = arch_vm_paused(vm));
    if (!r && (r = evl_quiesce(vm->loop, QUIESCE_TIMEOUT_MS)) == 0) {
        devmgr_quiesce(&vm->dm);
        vm->loop_quiesced = true;
    }
    if (r && arch_paused)
        arch_vm_resume(vm);         /* the vCPUs run on after all */
    pthread_mutex_lock(&vm->lock);
    if (r) {
        atomic_store(&vm->pause_req, false);
        pthread_cond_broadcast(&vm->cond);
    } else {
        vm->state = VMM_STATE_PAUSED;
    }
    pthread_mutex_unlock(&vm->lock);
    return r;
}

int vmm_pause(struct vmm *vm)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    r = pause_locked(vm);
    vm_op_end(vm);
    return r;
}

int vmm_resume(struct vmm *vm)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    pthread_mutex_lock(&vm->lock);
    int st = settled_state(vm);
    pthread_mutex_unlock(&vm->lock);
    if (st != VMM_STATE_PAUSED) {
        vm_op_end(vm);
        return vmm_err(EBUSY, "VM is not paused (state %d)", st);
    }
    if ((r = arch_vm_resume(vm))) {
        vm_op_end(vm);
        return r;
    }
    if (vm->loop_quiesced) {
        devmgr_resume(&vm->dm);
        evl_resume(vm->loop);
        vm->loop_quiesced = false;
    }
    pthread_mutex_lock(&vm->lock);
    atomic_store(&vm->pause_req, false);
    vm->state = VMM_STATE_RUNNING;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    vm_op_end(vm);
    return 0;
}

int vmm_stop(struct vmm *vm)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    vm_end(vm, VMM_STOP_HOST, 0, "stopped by the host");
    end_threads(vm, false);
    pthread_mutex_lock(&vm->lock);
    if (vm->state == VMM_STATE_CREATED || vm->state == VMM_STATE_PAUSED ||
        vm->state == VMM_STATE_RUNNING)
        vm->state = vm->stop_reason == VMM_STOP_ERROR ? VMM_STATE_FAILED : VMM_STATE_STOPPED;
    pthread_mutex_unlock(&vm->lock);
    vm_op_end(vm);
    return 0;
}

int vmm_wait(struct vmm *vm, int timeout_ms, struct vmm_exit_info *info)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    struct timespec ts;
    if (timeout_ms >= 0)
        deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&vm->lock);
    for (;;) {
        int st = settled_state(vm);
        if (st == VMM_STATE_STOPPED || st == VMM_STATE_FAILED)
            break;
        if (vm->closing) {
            r = vmm_err(ESHUTDOWN, "the VM was destroyed while waiting for it");
            break;
        }
        if (st == VMM_STATE_CREATED) {
            r = vmm_err(EINVAL, "VM was never started");
            break;
        }
        if (timeout_ms < 0)
            pthread_cond_wait(&vm->cond, &vm->lock);
        else if (pthread_cond_timedwait(&vm->cond, &vm->lock, &ts) == ETIMEDOUT) {
            r = vmm_err(ETIMEDOUT, "VM still running after %d ms", timeout_ms);
            break;
        }
    }
    if (info) {
        info->state = vm->state;
        info->reason = vm->stop_reason;
        info->exit_code = vm->exit_code;
        snprintf(info->message, sizeof(info->message), "%s", vm->message);
    }
    pthread_mutex_unlock(&vm->lock);
    if (!r)
        vcpus_join(vm);
    vm_leave(vm);
    return r;
}

int vmm_get_state(struct vmm *vm)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    int st = vm_state_locked(vm);
    vm_leave(vm);
    return st;
}

int vmm_get_stats(struct vmm *vm, struct vmm_stats *o)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    memset(o, 0, sizeof(*o));
    o->exits_total = atomic_load(&vm->st.exits_total);
    o->exits_io = atomic_load(&vm->st.exits_io);
    o->exits_mmio = atomic_load(&vm->st.exits_mmio);
    o->exits_intr = atomic_load(&vm->st.exits_intr);
    o->exits_other = atomic_load(&vm->st.exits_other);
    o->io_unhandled = atomic_load(&vm->st.io_unhandled);
    o->io_completions = atomic_load(&vm->st.io_completions);
    o->uffd_faults = atomic_load(&vm->st.uffd_faults);
    o->uffd_pages = atomic_load(&vm->st.uffd_pages);
    o->uffd_zero_pages = atomic_load(&vm->st.uffd_zero_pages);
    o->uffd_prefetched = atomic_load(&vm->st.uffd_prefetched);
    o->uffd_removes = atomic_load(&vm->st.uffd_removes);
    o->uffd_fault_ns = atomic_load(&vm->st.uffd_fault_ns);
    o->debug_mark = atomic_load(&vm->st.debug_mark);
    o->debug_marks = atomic_load(&vm->st.debug_marks);
    o->dirty_pages = atomic_load(&vm->st.dirty_pages);
    o->memslot_ns = atomic_load(&vm->st.memslot_ns);
    if (vm->serial) {
        uint64_t bytes, dropped, first;
        serial_stats(vm->serial, &bytes, &dropped, &first);
        o->serial_bytes = bytes;
        o->serial_dropped = dropped;
        o->first_serial_ns = first;
    }
    vm_leave(vm);
    return 0;
}

int vmm_serial_read(struct vmm *vm, void *buf, unsigned long long len)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    if (!vm->serial)
        r = vmm_err(ENODEV, "VM has no serial port");
    else
        r = (int)serial_read_output(vm->serial, buf, len > 0x7fffffff ? 0x7fffffff : len);
    vm_leave(vm);
    return r;
}

int vmm_serial_write(struct vmm *vm, const void *buf, unsigned long long len)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    r = vm->serial ? serial_push_input(vm->serial, buf, len)
                   : vmm_err(ENODEV, "VM has no serial port");
    vm_leave(vm);
    return r;
}

int vmm_serial_fd(struct vmm *vm)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    r = vm->serial ? serial_output_fd(vm->serial) : vmm_err(ENODEV, "VM has no serial port");
    vm_leave(vm);
    return r;
}

/* ---------- virtio-net: the host's side ---------- */

static struct device *net_device(struct vmm *vm, unsigned int id)
{
    struct device *d = devmgr_find(&vm->dm, VMM_DEV_VIRTIO_NET, id);
    if (!d)
        vmm_err(ENODEV, "the VM has no virtio-net device with id %u", id);
    return d;
}

int vmm_net_set_policy(struct vmm *vm, unsigned int id, const struct vmm_net_policy *p)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    struct device *d = net_device(vm, id);
    r = d ? virtio_net_set_policy(d, p) : -ENODEV;
    vm_leave(vm);
    return r;
}

int vmm_net_stats(struct vmm *vm, unsigned int id, struct vmm_net_stats *out)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    struct device *d = net_device(vm, id);
    if (d)
        virtio_net_stats(d, out);
    vm_leave(vm);
    return d ? 0 : -ENODEV;
}

int vmm_virtio_info(struct vmm *vm, int type, unsigned int id, struct vmm_virtio_info *out)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    memset(out, 0, sizeof(*out));
    struct device *d = NULL;
    if (type == VMM_DEV_VIRTIO_BLK || type == VMM_DEV_VIRTIO_VSOCK ||
        type == VMM_DEV_VIRTIO_RNG || type == VMM_DEV_VIRTIO_NET)
        d = devmgr_find(&vm->dm, type, id);
    if (!d)
        r = vmm_err(ENODEV, "the VM has no virtio device of type %d with id %u", type, id);
    /* the queues are the loop's: read them at rest (a paused VM's loop already is) */
    bool parked = false;
    if (!r && !vm->loop_quiesced) {
        r = evl_quiesce(vm->loop, QUIESCE_TIMEOUT_MS);
        parked = !r;
    }
    if (!r)
        virtio_info(d->priv, out);   /* every virtio device's state begins with its virtio_dev */
    if (parked)
        evl_resume(vm->loop);
    vm_op_end(vm);
    return r;
}

/* ---------- host access to guest memory ---------- */

static int host_offset(struct vmm *vm, uint64_t gpa, uint64_t len, uint64_t *off)
{
    bool ok;
    *off = mem_linear(&vm->mem, gpa, len, &ok);
    if (!ok)
        return vmm_err(EFAULT, "guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                       (unsigned long long)len);
    return 0;
}

int vmm_mem_read(struct vmm *vm, unsigned long long gpa, void *buf, unsigned long long len)
{
    int r = vm_enter(vm);
    if (r)
        return r;
    uint64_t off;
    if (!(r = host_offset(vm, gpa, len, &off)))
        r = mem_read_host(&vm->mem, off, buf, len);
    vm_leave(vm);
    return r;
}

int vmm_mem_write(struct vmm *vm, unsigned long long gpa, const void *buf, unsigned long long len)
{
    int r = vm_op_begin(vm);
    if (r)
        return r;
    uint64_t off;
    if (!(r = host_offset(vm, gpa, len, &off)) && (r = mem_check_backing(&vm->mem)) == 0)
        r = gm_write(&vm->mem, gpa, buf, len);
    vm_op_end(vm);
    return r;
}

int vmm_host_probe(void)
{
    return arch_host_probe();
}
