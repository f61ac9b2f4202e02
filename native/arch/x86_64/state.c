/* x86_64 VM and vCPU state: every piece KVM exposes, saved as one vmstate section each. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include "x86.h"

#define GET(fd, req, arg, what) \
    do { if (ioctl(fd, req, arg) < 0) return vmm_err(errno, "%s: %m", what); } while (0)

int arch_vm_save(struct vmm *vm, struct enc *e)
{
    struct kvm_pit_state2 pit;
    struct kvm_irqchip chips[3];
    struct kvm_clock_data clock = {0};
    GET(vm->vm_fd, KVM_GET_PIT2, &pit, "KVM_GET_PIT2");
    for (int i = 0; i < 3; i++) {
        memset(&chips[i], 0, sizeof(chips[i]));
        chips[i].chip_id = (uint32_t)i;   /* PIC master, PIC slave, IOAPIC */
        GET(vm->vm_fd, KVM_GET_IRQCHIP, &chips[i], "KVM_GET_IRQCHIP");
    }
    GET(vm->vm_fd, KVM_GET_CLOCK, &clock, "KVM_GET_CLOCK");
    enc_map(e, 6);
    enc_kv_uint(e, "v", ARCH_VM_STATE_VERSION);
    enc_kv_bin(e, "pit", &pit, sizeof(pit));
    enc_kv_bin(e, "pic_master", &chips[0], sizeof(chips[0]));
    enc_kv_bin(e, "pic_slave", &chips[1], sizeof(chips[1]));
    enc_kv_bin(e, "ioapic", &chips[2], sizeof(chips[2]));
    enc_kv_uint(e, "clock", clock.clock);
    return 0;
}

int arch_vm_load(struct vmm *vm, const struct dec_map *m)
{
    struct kvm_pit_state2 pit;
    struct kvm_irqchip chips[3];
    uint64_t clock;
    int r;
    if ((r = dec_get_bin_exact(m, "pit", &pit, sizeof(pit))) ||
        (r = dec_get_bin_exact(m, "pic_master", &chips[0], sizeof(chips[0]))) ||
        (r = dec_get_bin_exact(m, "pic_slave", &chips[1], sizeof(chips[1]))) ||
        (r = dec_get_bin_exact(m, "ioapic", &chips[2], sizeof(chips[2]))) ||
        (r = dec_get_uint(m, "clock", &clock)))
        return r;
    for (int i = 0; i < 3; i++)
        if (chips[i].chip_id != (uint32_t)i)
            return vmm_err(EINVAL, "vmstate vm: irqchip %d has chip_id %u", i, chips[i].chip_id);
    GET(vm->vm_fd, KVM_SET_PIT2, &pit, "KVM_SET_PIT2");
    for (int i = 0; i < 3; i++)
        GET(vm->vm_fd, KVM_SET_IRQCHIP, &chips[i], "KVM_SET_IRQCHIP");
    struct kvm_clock_data cd = {.clock = clock};
    GET(vm->vm_fd, KVM_SET_CLOCK, &cd, "KVM_SET_CLOCK");
    return 0;
}

struct msrs_buf {
    struct kvm_msrs h;
    struct kvm_msr_entry e[X86_MAX_MSRS];
};

struct cpuid_buf {
    struct kvm_cpuid2 h;
    struct kvm_cpuid_entry2 e[X86_MAX_CPUID];
};

int arch_vcpu_save(struct vmm *vm, struct vcpu *c, struct enc *e)
{
    struct x86_vm *a = x86(vm);
    int r = x86_probe_msrs(vm, vm->vcpus[0].fd);
    if (r)
        return r;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_xcrs xcrs;
    struct kvm_debugregs dregs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_mp_state mp;
    struct msrs_buf msrs = {.h.nmsrs = a->nmsrs};
    struct cpuid_buf cpuid = {.h.nent = X86_MAX_CPUID};
    int fd = c->fd;

    void *xsave = calloc(1, a->xsave_size);
    if (!xsave)
        return vmm_err(ENOMEM, "out of memory for XSAVE state");
    unsigned long xreq = a->xsave_size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE;
    if (ioctl(fd, xreq, xsave) < 0) {
        free(xsave);
        return vmm_err(errno, "KVM_GET_XSAVE on vCPU %d: %m", c->id);
    }
    for (uint32_t i = 0; i < a->nmsrs; i++)
        msrs.e[i].index = a->msrs[i];
    if (ioctl(fd, KVM_GET_REGS, &regs) < 0) r = vmm_err(errno, "KVM_GET_REGS: %m");
    else if (ioctl(fd, KVM_GET_SREGS, &sregs) < 0) r = vmm_err(errno, "KVM_GET_SREGS: %m");
    else if (ioctl(fd, KVM_GET_XCRS, &xcrs) < 0) r = vmm_err(errno, "KVM_GET_XCRS: %m");
    else if (ioctl(fd, KVM_GET_DEBUGREGS, &dregs) < 0) r = vmm_err(errno, "KVM_GET_DEBUGREGS: %m");
    else if (ioctl(fd, KVM_GET_LAPIC, &lapic) < 0) r = vmm_err(errno, "KVM_GET_LAPIC: %m");
    else if (ioctl(fd, KVM_GET_MP_STATE, &mp) < 0) r = vmm_err(errno, "KVM_GET_MP_STATE: %m");
    else if (ioctl(fd, KVM_GET_CPUID2, &cpuid) < 0) r = vmm_err(errno, "KVM_GET_CPUID2: %m");
    else {
        int n = ioctl(fd, KVM_GET_MSRS, &msrs);
        if (n < 0 || (uint32_t)n != a->nmsrs)
            r = vmm_err(n < 0 ? errno : EIO, "KVM_GET_MSRS read %d of %u", n, a->nmsrs);
        /* events last: reading the others must not leave an exception half-injected */
        else if (ioctl(fd, KVM_GET_VCPU_EVENTS, &events) < 0)
            r = vmm_err(errno, "KVM_GET_VCPU_EVENTS: %m");
    }
    if (r) {
        free(xsave);
        return vmm_err_ctx(r, "saving vCPU %d", c->id);
    }
    enc_map(e, 12);
    enc_kv_uint(e, "v", ARCH_VCPU_STATE_VERSION);
    enc_kv_bin(e, "cpuid", cpuid.e, cpuid.h.nent * sizeof(cpuid.e[0]));
    enc_kv_bin(e, "regs", &regs, sizeof(regs));
    enc_kv_bin(e, "sregs", &sregs, sizeof(sregs));
    enc_kv_bin(e, "xsave", xsave, a->xsave_size);
    enc_kv_bin(e, "xcrs", &xcrs, sizeof(xcrs));
    enc_kv_bin(e, "debugregs", &dregs, sizeof(dregs));
    enc_kv_bin(e, "lapic", &lapic, sizeof(lapic));
    enc_kv_bin(e, "msrs", msrs.e, a->nmsrs * sizeof(msrs.e[0]));
    enc_kv_bin(e, "events", &events, sizeof(events));
    enc_kv_uint(e, "mp_state", mp.mp_state);
    enc_kv_uint(e, "tsc_khz", (uint64_t)(int64_t)ioctl(fd, KVM_GET_TSC_KHZ, 0));
    free(xsave);
    return 0;
}

/* A field holding whole kernel structs (CPUID entries, MSR entries), at most `max` of them. */
static int get_entries(const struct dec_map *m, const char *key, void *dst, size_t size,
                       uint32_t max, uint32_t *count)
{
    const uint8_t *p;
    uint32_t len;
    int r = dec_get_bin(m, key, &p, &len);
    if (r)
        return r;
    if (len % size || len / size > max)
        return vmm_err(EINVAL, "vmstate %s is %u bytes: not whole entries, or more than %u",
                       key, len, max);
    memcpy(dst, p, len);
    *count = (uint32_t)(len / size);
    return 0;
}

/* Everything is decoded and checked first; KVM is touched only once all of it is valid. */
int arch_vcpu_load(struct vmm *vm, struct vcpu *c, const struct dec_map *m)
{
    struct x86_vm *a = x86(vm);
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_xcrs xcrs;
    struct kvm_debugregs dregs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct msrs_buf msrs;
    struct cpuid_buf cpuid;
    uint64_t mp;
    int r, fd = c->fd;

    if ((r = dec_get_bin_exact(m, "regs", &regs, sizeof(regs))) ||
        (r = dec_get_bin_exact(m, "sregs", &sregs, sizeof(sregs))) ||
        (r = dec_get_bin_exact(m, "xcrs", &xcrs, sizeof(xcrs))) ||
        (r = dec_get_bin_exact(m, "debugregs", &dregs, sizeof(dregs))) ||
        (r = dec_get_bin_exact(m, "lapic", &lapic, sizeof(lapic))) ||
        (r = dec_get_bin_exact(m, "events", &events, sizeof(events))) ||
        (r = dec_get_uint(m, "mp_state", &mp)))
        return r;
    cpuid.h.padding = 0;
    msrs.h.pad = 0;
    if ((r = get_entries(m, "cpuid", cpuid.e, sizeof(cpuid.e[0]), X86_MAX_CPUID, &cpuid.h.nent)) ||
        (r = get_entries(m, "msrs", msrs.e, sizeof(msrs.e[0]), X86_MAX_MSRS, &msrs.h.nmsrs)))
        return vmm_err_ctx(r, "vCPU %d", c->id);
    const uint8_t *xs;
    uint32_t xlen;
    if ((r = dec_get_bin(m, "xsave", &xs, &xlen)))
        return r;
    if (xlen < sizeof(struct kvm_xsave) || xlen > a->xsave_size)
        return vmm_err(EINVAL, "vmstate vcpu %d: xsave is %u bytes; this host takes %zu..%u",
                       c->id, xlen, sizeof(struct kvm_xsave), a->xsave_size);
    void *xsave = calloc(1, a->xsave_size);
    if (!xsave)
        return vmm_err(ENOMEM, "out of memory for XSAVE state");
    memcpy(xsave, xs, xlen);

    /* Firecracker's order: CPUID first (it shapes what XSAVE and MSRs accept), events last. */
    struct kvm_mp_state mps = {.mp_state = (uint32_t)mp};
    if (ioctl(fd, KVM_SET_CPUID2, &cpuid) < 0) r = vmm_err(errno, "KVM_SET_CPUID2: %m");
    else if (ioctl(fd, KVM_SET_MP_STATE, &mps) < 0) r = vmm_err(errno, "KVM_SET_MP_STATE: %m");
    else if (ioctl(fd, KVM_SET_REGS, &regs) < 0) r = vmm_err(errno, "KVM_SET_REGS: %m");
    else if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0) r = vmm_err(errno, "KVM_SET_SREGS: %m");
    else if (ioctl(fd, KVM_SET_XSAVE, xsave) < 0) r = vmm_err(errno, "KVM_SET_XSAVE: %m");
    else if (ioctl(fd, KVM_SET_XCRS, &xcrs) < 0) r = vmm_err(errno, "KVM_SET_XCRS: %m");
    else if (ioctl(fd, KVM_SET_DEBUGREGS, &dregs) < 0) r = vmm_err(errno, "KVM_SET_DEBUGREGS: %m");
    else if (ioctl(fd, KVM_SET_LAPIC, &lapic) < 0) r = vmm_err(errno, "KVM_SET_LAPIC: %m");
    else {
        int n = ioctl(fd, KVM_SET_MSRS, &msrs);
        if (n < 0 || (uint32_t)n != msrs.h.nmsrs)
            r = vmm_err(n < 0 ? errno : EINVAL,
                        "KVM_SET_MSRS stopped at entry %d of %u (MSR 0x%x): the snapshot was taken "
                        "on a host whose CPU this one does not match",
                        n, msrs.h.nmsrs, n >= 0 && (uint32_t)n < msrs.h.nmsrs ? msrs.e[n].index : 0);
        else if (ioctl(fd, KVM_SET_VCPU_EVENTS, &events) < 0)
            r = vmm_err(errno, "KVM_SET_VCPU_EVENTS: %m");
    }
    free(xsave);
    return r ? vmm_err_ctx(r, "restoring vCPU %d", c->id) : 0;
}
