/* vm.c - a VM's life: create, start, pause, resume, stop, wait, destroy. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "internal.h"
#include "arch.h"
#include "devices/devices.h"

#define PAUSE_TIMEOUT_MS 5000

int vm_add_device(struct vmm *vm, const struct device_ops *ops, void *dev)
{
    if (vm->ndevices >= VMM_MAX_DEVICES)
        return vmm_err(ENOSPC, "too many devices (%d)", VMM_MAX_DEVICES);
    vm->devices[vm->ndevices++] = (struct device){ops, dev};
    return 0;
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

static int check_config(const struct vmm_config *cfg)
{
    if (cfg->vcpus < 1 || cfg->vcpus > VMM_MAX_VCPUS)
        return vmm_err(EINVAL, "vcpus=%u: a VM has 1 to %d vCPUs", cfg->vcpus, VMM_MAX_VCPUS);
    if (cfg->mem_size < VMM_MIN_MEM || cfg->mem_size > VMM_MAX_MEM || cfg->mem_size % PAGE_SIZE)
        return vmm_err(EINVAL, "mem_size=%llu: memory is a multiple of 4 KiB from 1 MiB to 32 GiB",
                       cfg->mem_size);
    return 0;
}

/* Guest memory as the backend wants it, registered with KVM; takes the layers, even on failure. */
static int build_memory(struct vmm *vm, int backend, struct mem_layer *layers, int nlayers)
{
    uint64_t gpas[VMM_MAX_REGIONS], sizes[VMM_MAX_REGIONS];
    int n = arch_memory_layout(vm->cfg.mem_size, gpas, sizes, VMM_MAX_REGIONS);
    if (n < 0)
        return n;
    int r = mem_alloc(&vm->mem, gpas, sizes, n, backend);
    if (r) {
        mem_layers_free(layers, nlayers);
        return r;
    }
    for (int i = 0; i < nlayers; i++)
        vm->mem.layers[i] = layers[i];
    vm->mem.nlayers = nlayers;
    if (backend == VMM_MEM_MMAP)
        r = mem_map_layers(&vm->mem);
    else if (backend == VMM_MEM_UFFD)
        r = uffd_setup(vm);
    return r ? r : mem_register_kvm(vm, vm->cfg.track_dirty);
}

/*
 * Everything but memory contents and vCPU registers: shared by create and restore. `layers` are
 * the snapshot's memory files for the mmap and uffd backends; the VM owns them from here on,
 * even when this fails.
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
    vm->kvm_fd = vm->vm_fd = -1;
    for (int i = 0; i < VMM_MAX_VCPUS; i++)
        vm->vcpus[i].fd = -1;
    pthread_mutex_init(&vm->lock, NULL);
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
    if (r || (r = arch_irqchip_init(vm)))
        goto fail;
    int run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run)) {
        r = vmm_err(errno, "KVM_GET_VCPU_MMAP_SIZE: %m");
        goto fail;
    }
    for (unsigned i = 0; i < cfg->vcpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        c->vm = vm;
        c->id = (int)i;
        if ((c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i)) < 0) {
            r = vmm_err(errno, "KVM_CREATE_VCPU %u: %m", i);
            goto fail;
        }
        c->run_size = (size_t)run_size;
        c->run = mmap(NULL, c->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
        if (c->run == MAP_FAILED) {
            c->run = NULL;
            r = vmm_err(errno, "mmap of vCPU %u's kvm_run: %m", i);
            goto fail;
        }
    }
    if ((r = arch_platform_devices(vm)))
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

void vmm_destroy(struct vmm *vm)
{
    if (!vm)
        return;
    vm_end(vm, VMM_STOP_HOST, 0, "destroyed by the host");
    uffd_teardown(vm);    /* wakes any vCPU blocked on a missing page */
    vcpus_join(vm);
    for (int i = 0; i < vm->ndevices; i++)
        vm->devices[i].ops->destroy(vm->devices[i].dev);
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
    pthread_cond_destroy(&vm->cond);
    free(vm);
}

int vmm_load_flat(struct vmm *vm, const void *image, unsigned long long len,
                  const struct vmm_flat_boot *boot)
{
    if (vm->state != VMM_STATE_CREATED)
        return vmm_err(EBUSY, "load a guest before starting the VM");
    uint8_t *dst = mem_hva(&vm->mem, boot->load_gpa, len);
    if (!dst)
        return vmm_err(EINVAL, "image of %llu bytes at 0x%llx does not fit in guest memory",
                       len, boot->load_gpa);
    memcpy(dst, image, len);
    mem_mark_dirty(&vm->mem, (uint64_t)(dst - vm->mem.base), len);
    return arch_flat_boot(vm, boot);
}

int vmm_start(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    int st = vm->state;
    pthread_mutex_unlock(&vm->lock);
    if (st != VMM_STATE_CREATED)
        return vmm_err(EBUSY, "VM is not newly created or restored (state %d); start it once", st);
    int r;
    if (vm->uffd && (r = uffd_start(vm)))
        return r;
    for (unsigned i = 0; i < vm->cfg.vcpus; i++)
        if ((r = arch_vcpu_resumed(vm, &vm->vcpus[i])))
            return r;
    pthread_mutex_lock(&vm->lock);
    vm->state = VMM_STATE_RUNNING;
    pthread_mutex_unlock(&vm->lock);
    if ((r = vcpus_start(vm))) {
        vm_end(vm, VMM_STOP_ERROR, 0, vmm_last_error());
        return r;
    }
    return 0;
}

/* Folds a finished run into the state; caller holds the lock. */
static int settled_state(struct vmm *vm)
{
    if (atomic_load(&vm->stop_req) && vm->live_threads == 0 && vm->state != VMM_STATE_CREATED)
        vm->state = vm->stop_reason == VMM_STOP_ERROR ? VMM_STATE_FAILED : VMM_STATE_STOPPED;
    return vm->state;
}

static void deadline_in(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int vmm_pause(struct vmm *vm)
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
    if (r) {
        atomic_store(&vm->pause_req, false);
        pthread_cond_broadcast(&vm->cond);
    } else {
        vm->state = VMM_STATE_PAUSED;
    }
    pthread_mutex_unlock(&vm->lock);
    return r;
}

int vmm_resume(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    if (vm->state != VMM_STATE_PAUSED) {
        int st = vm->state;
        pthread_mutex_unlock(&vm->lock);
        return vmm_err(EBUSY, "VM is not paused (state %d)", st);
    }
    atomic_store(&vm->pause_req, false);
    vm->state = VMM_STATE_RUNNING;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

int vmm_stop(struct vmm *vm)
{
    vm_end(vm, VMM_STOP_HOST, 0, "stopped by the host");
    vcpus_join(vm);
    pthread_mutex_lock(&vm->lock);
    if (vm->state == VMM_STATE_CREATED || vm->state == VMM_STATE_PAUSED ||
        vm->state == VMM_STATE_RUNNING)
        vm->state = vm->stop_reason == VMM_STOP_ERROR ? VMM_STATE_FAILED : VMM_STATE_STOPPED;
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

int vmm_wait(struct vmm *vm, int timeout_ms, struct vmm_exit_info *info)
{
    struct timespec ts;
    if (timeout_ms >= 0)
        deadline_in(&ts, timeout_ms);
    int r = 0;
    pthread_mutex_lock(&vm->lock);
    for (;;) {
        int st = settled_state(vm);
        if (st == VMM_STATE_STOPPED || st == VMM_STATE_FAILED)
            break;
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
    return r;
}

int vmm_get_state(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    int st = settled_state(vm);
    pthread_mutex_unlock(&vm->lock);
    return st;
}

int vmm_get_stats(struct vmm *vm, struct vmm_stats *o)
{
    memset(o, 0, sizeof(*o));
    o->exits_total = atomic_load(&vm->st.exits_total);
    o->exits_io = atomic_load(&vm->st.exits_io);
    o->exits_mmio = atomic_load(&vm->st.exits_mmio);
    o->exits_intr = atomic_load(&vm->st.exits_intr);
    o->exits_other = atomic_load(&vm->st.exits_other);
    o->io_unhandled = atomic_load(&vm->st.io_unhandled);
    o->uffd_faults = atomic_load(&vm->st.uffd_faults);
    o->uffd_pages = atomic_load(&vm->st.uffd_pages);
    o->uffd_zero_pages = atomic_load(&vm->st.uffd_zero_pages);
    o->uffd_prefetched = atomic_load(&vm->st.uffd_prefetched);
    o->uffd_removes = atomic_load(&vm->st.uffd_removes);
    o->uffd_fault_ns = atomic_load(&vm->st.uffd_fault_ns);
    o->debug_mark = atomic_load(&vm->st.debug_mark);
    o->debug_marks = atomic_load(&vm->st.debug_marks);
    if (vm->serial) {
        uint64_t bytes, dropped, first;
        serial_stats(vm->serial, &bytes, &dropped, &first);
        o->serial_bytes = bytes;
        o->serial_dropped = dropped;
        o->first_serial_ns = first;
    }
    return 0;
}

int vmm_serial_read(struct vmm *vm, void *buf, unsigned long long len)
{
    if (!vm->serial)
        return vmm_err(ENODEV, "VM has no serial port");
    if (len > 0x7fffffff)
        len = 0x7fffffff;
    return (int)serial_read_output(vm->serial, buf, len);
}

int vmm_serial_write(struct vmm *vm, const void *buf, unsigned long long len)
{
    if (!vm->serial)
        return vmm_err(ENODEV, "VM has no serial port");
    return serial_push_input(vm->serial, buf, len);
}

static int mem_usable(struct vmm *vm)
{
    pthread_mutex_lock(&vm->lock);
    int failed = vm->stop_reason == VMM_STOP_ERROR;
    pthread_mutex_unlock(&vm->lock);
    /* a failed VM's lazily loaded memory may be gone, or worse, block forever */
    return failed ? vmm_err(EIO, "VM failed, its memory is unavailable: %s", vm->message) : 0;
}

/* Host access to [gpa, gpa+len): refused for a failed VM or a range that is not all RAM. */
static int host_range(struct vmm *vm, uint64_t gpa, uint64_t len, uint8_t **p)
{
    int r = mem_usable(vm);
    if (r)
        return r;
    if (!(*p = mem_hva(&vm->mem, gpa, len)))
        return vmm_err(EFAULT, "guest range 0x%llx+0x%llx is not RAM", (unsigned long long)gpa,
                       (unsigned long long)len);
    return 0;
}

int vmm_mem_read(struct vmm *vm, unsigned long long gpa, void *buf, unsigned long long len)
{
    uint8_t *p;
    int r = host_range(vm, gpa, len, &p);
    if (!r)
        memcpy(buf, p, len);
    return r;
}

int vmm_mem_write(struct vmm *vm, unsigned long long gpa, const void *buf, unsigned long long len)
{
    uint8_t *p;
    int r = host_range(vm, gpa, len, &p);
    if (!r) {
        memcpy(p, buf, len);
        mem_mark_dirty(&vm->mem, (uint64_t)(p - vm->mem.base), len);
    }
    return r;
}

int vmm_inject(struct vmm *vm, int what)
{
    if (what == VMM_INJECT_UFFD_HANDLER_DEATH)
        return uffd_inject_death(vm);
    return vmm_err(EINVAL, "unknown fault to inject: %d", what);
}
