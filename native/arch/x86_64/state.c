/*
 * x86_64 VM and vCPU state: every piece KVM exposes, saved as one vmstate section each. Loading
 * is two steps: decode checks every field against the others and against the KVM field it fills
 * (no KVM call), apply writes KVM. A restore decodes all sections before it applies any.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include "x86.h"

/* Firecracker's tolerance: TSC frequencies closer than this need no scaling. */
#define TSC_KHZ_TOLERANCE_PPM 250

#define GET(fd, req, arg, what) \
    do { if (ioctl(fd, req, arg) < 0) return vmm_err(errno, "%s: %m", what); } while (0)

struct arch_vm_state {
    struct kvm_pit_state2 pit;
    struct kvm_irqchip chips[3];   /* PIC master, PIC slave, IOAPIC */
    uint64_t clock;
};

struct arch_vcpu_state {
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_xcrs xcrs;
    struct kvm_debugregs dregs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_mp_state mp;
    uint32_t tsc_khz;              /* 0: the snapshot's host did not say */
    struct kvm_cpuid2 *cpuid;
    struct kvm_msrs *msrs;
    void *xsave;
};

int arch_vm_save(struct vmm *vm, struct enc *e)
{
    struct arch_vm_state s;
    struct kvm_clock_data clock = {0};
    GET(vm->vm_fd, KVM_GET_PIT2, &s.pit, "KVM_GET_PIT2");
    for (int i = 0; i < 3; i++) {
        memset(&s.chips[i], 0, sizeof(s.chips[i]));
        s.chips[i].chip_id = (uint32_t)i;
        GET(vm->vm_fd, KVM_GET_IRQCHIP, &s.chips[i], "KVM_GET_IRQCHIP");
    }
    GET(vm->vm_fd, KVM_GET_CLOCK, &clock, "KVM_GET_CLOCK");
    enc_map(e, 6);
    enc_kv_uint(e, "v", ARCH_VM_STATE_VERSION);
    enc_kv_bin(e, "pit", &s.pit, sizeof(s.pit));
    enc_kv_bin(e, "pic_master", &s.chips[0], sizeof(s.chips[0]));
    enc_kv_bin(e, "pic_slave", &s.chips[1], sizeof(s.chips[1]));
    enc_kv_bin(e, "ioapic", &s.chips[2], sizeof(s.chips[2]));
    enc_kv_uint(e, "clock", clock.clock);
    return 0;
}

int arch_vm_decode(struct vmm *vm, const struct dec_map *m, struct arch_vm_state **out)
{
    (void)vm;
    struct arch_vm_state *s = calloc(1, sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory decoding vmstate");
    int r;
    if ((r = dec_get_bin_exact(m, "pit", &s->pit, sizeof(s->pit))) ||
        (r = dec_get_bin_exact(m, "pic_master", &s->chips[0], sizeof(s->chips[0]))) ||
        (r = dec_get_bin_exact(m, "pic_slave", &s->chips[1], sizeof(s->chips[1]))) ||
        (r = dec_get_bin_exact(m, "ioapic", &s->chips[2], sizeof(s->chips[2]))) ||
        (r = dec_get_uint(m, "clock", &s->clock)))
        goto fail;
    for (int i = 0; i < 3; i++)
        if (s->chips[i].chip_id != (uint32_t)i) {
            r = vmm_err(EINVAL, "vmstate vm: irqchip %d has chip_id %u", i, s->chips[i].chip_id);
            goto fail;
        }
    *out = s;
    return 0;
fail:
    free(s);
    return r;
}

int arch_vm_apply(struct vmm *vm, const struct arch_vm_state *s)
{
    GET(vm->vm_fd, KVM_SET_PIT2, (void *)&s->pit, "KVM_SET_PIT2");
    for (int i = 0; i < 3; i++)
        GET(vm->vm_fd, KVM_SET_IRQCHIP, (void *)&s->chips[i], "KVM_SET_IRQCHIP");
    struct kvm_clock_data cd = {.clock = s->clock};
    GET(vm->vm_fd, KVM_SET_CLOCK, &cd, "KVM_SET_CLOCK");
    return 0;
}

void arch_vm_state_free(struct arch_vm_state *s) { free(s); }

void arch_vcpu_state_free(struct arch_vcpu_state *s)
{
    if (!s)
        return;
    free(s->cpuid);
    free(s->msrs);
    free(s->xsave);
    free(s);
}

int arch_vcpu_save(struct vmm *vm, struct vcpu *c, struct enc *e)
{
    const struct x86_caps *hc = x86_caps();
    if (!hc)
        return -EIO;
    struct arch_vcpu_state s = {0};
    int fd = c->fd, r = 0;
    s.cpuid = calloc(1, sizeof(*s.cpuid) + X86_MAX_CPUID * sizeof(s.cpuid->entries[0]));
    s.msrs = calloc(1, sizeof(*s.msrs) + hc->nmsrs * sizeof(s.msrs->entries[0]));
    s.xsave = calloc(1, hc->xsave_size);
    if (!s.cpuid || !s.msrs || !s.xsave) {
        r = vmm_err(ENOMEM, "out of memory saving vCPU %d", c->id);
        goto out;
    }
    s.cpuid->nent = X86_MAX_CPUID;
    s.msrs->nmsrs = hc->nmsrs;
    for (uint32_t i = 0; i < hc->nmsrs; i++)
        s.msrs->entries[i].index = hc->msrs[i];
    unsigned long xreq = hc->xsave_size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE;
    int n;
    if (ioctl(fd, xreq, s.xsave) < 0) r = vmm_err(errno, "KVM_GET_XSAVE: %m");
    else if (ioctl(fd, KVM_GET_REGS, &s.regs) < 0) r = vmm_err(errno, "KVM_GET_REGS: %m");
    else if (ioctl(fd, KVM_GET_SREGS, &s.sregs) < 0) r = vmm_err(errno, "KVM_GET_SREGS: %m");
    else if (ioctl(fd, KVM_GET_XCRS, &s.xcrs) < 0) r = vmm_err(errno, "KVM_GET_XCRS: %m");
    else if (ioctl(fd, KVM_GET_DEBUGREGS, &s.dregs) < 0) r = vmm_err(errno, "KVM_GET_DEBUGREGS: %m");
    else if (ioctl(fd, KVM_GET_LAPIC, &s.lapic) < 0) r = vmm_err(errno, "KVM_GET_LAPIC: %m");
    else if (ioctl(fd, KVM_GET_MP_STATE, &s.mp) < 0) r = vmm_err(errno, "KVM_GET_MP_STATE: %m");
    else if (ioctl(fd, KVM_GET_CPUID2, s.cpuid) < 0) r = vmm_err(errno, "KVM_GET_CPUID2: %m");
    else if ((n = ioctl(fd, KVM_GET_MSRS, s.msrs)) < 0 || (uint32_t)n != hc->nmsrs)
        r = vmm_err(n < 0 ? errno : EIO, "KVM_GET_MSRS read %d of %u", n, hc->nmsrs);
    /* events last: reading the others must not leave an exception half-injected */
    else if (ioctl(fd, KVM_GET_VCPU_EVENTS, &s.events) < 0)
        r = vmm_err(errno, "KVM_GET_VCPU_EVENTS: %m");
    if (r) {
        r = vmm_err_ctx(r, "saving vCPU %d", c->id);
        goto out;
    }
    uint32_t nent = x86(vm)->cpuid_nent[c->id];
    if (!nent || nent > s.cpuid->nent) {
        r = vmm_err(EIO, "vCPU %d: KVM holds %u CPUID entries, this VM set %u", c->id,
                    s.cpuid->nent, nent);
        goto out;
    }
    s.cpuid->nent = nent;
    int khz = ioctl(fd, KVM_GET_TSC_KHZ, 0);
    enc_map(e, 12);
    enc_kv_uint(e, "v", ARCH_VCPU_STATE_VERSION);
    enc_kv_bin(e, "cpuid", s.cpuid->entries, s.cpuid->nent * sizeof(s.cpuid->entries[0]));
    enc_kv_bin(e, "regs", &s.regs, sizeof(s.regs));
    enc_kv_bin(e, "sregs", &s.sregs, sizeof(s.sregs));
    enc_kv_bin(e, "xsave", s.xsave, hc->xsave_size);
    enc_kv_bin(e, "xcrs", &s.xcrs, sizeof(s.xcrs));
    enc_kv_bin(e, "debugregs", &s.dregs, sizeof(s.dregs));
    enc_kv_bin(e, "lapic", &s.lapic, sizeof(s.lapic));
    enc_kv_bin(e, "msrs", s.msrs->entries, hc->nmsrs * sizeof(s.msrs->entries[0]));
    enc_kv_bin(e, "events", &s.events, sizeof(s.events));
    enc_kv_uint(e, "mp_state", s.mp.mp_state);
    enc_kv_uint(e, "tsc_khz", khz > 0 ? (uint64_t)khz : 0);
out:
    free(s.cpuid);
    free(s.msrs);
    free(s.xsave);
    return r;
}

/* A field holding whole kernel structs (CPUID entries, MSR entries), at most `max` of them. */
static int get_entries(const struct dec_map *m, const char *key, size_t size, uint32_t max,
                       void **dst, uint32_t *count, size_t header)
{
    const uint8_t *p;
    uint32_t len;
    int r = dec_get_bin(m, key, &p, &len);
    if (r)
        return r;
    if (len % size || len / size > max)
        return vmm_err(EINVAL, "vmstate %s is %u bytes: not whole entries, or more than %u",
                       key, len, max);
    uint8_t *b = calloc(1, header + len);
    if (!b)
        return vmm_err(ENOMEM, "out of memory decoding %s", key);
    memcpy(b + header, p, len);
    *dst = b;
    *count = (uint32_t)(len / size);
    return 0;
}

static bool known_mp_state(uint64_t mp)
{
    return mp == KVM_MP_STATE_RUNNABLE || mp == KVM_MP_STATE_UNINITIALIZED ||
           mp == KVM_MP_STATE_INIT_RECEIVED || mp == KVM_MP_STATE_HALTED ||
           mp == KVM_MP_STATE_SIPI_RECEIVED || mp == KVM_MP_STATE_AP_RESET_HOLD;
}

int arch_vcpu_decode(struct vmm *vm, struct vcpu *c, const struct dec_map *m,
                     struct arch_vcpu_state **out)
{
    (void)vm;
    const struct x86_caps *hc = x86_caps();
    if (!hc)
        return -EIO;
    struct arch_vcpu_state *s = calloc(1, sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory decoding vmstate");
    uint64_t mp, khz;
    int r;
    if ((r = dec_get_bin_exact(m, "regs", &s->regs, sizeof(s->regs))) ||
        (r = dec_get_bin_exact(m, "sregs", &s->sregs, sizeof(s->sregs))) ||
        (r = dec_get_bin_exact(m, "xcrs", &s->xcrs, sizeof(s->xcrs))) ||
        (r = dec_get_bin_exact(m, "debugregs", &s->dregs, sizeof(s->dregs))) ||
        (r = dec_get_bin_exact(m, "lapic", &s->lapic, sizeof(s->lapic))) ||
        (r = dec_get_bin_exact(m, "events", &s->events, sizeof(s->events))) ||
        (r = dec_get_uint(m, "mp_state", &mp)) || (r = dec_get_uint(m, "tsc_khz", &khz)))
        goto fail;
    if (!known_mp_state(mp)) {
        r = vmm_err(EINVAL, "vmstate vcpu %d: mp_state %llu is not an x86 vCPU state", c->id,
                    (unsigned long long)mp);
        goto fail;
    }
    if (khz > UINT32_MAX) {
        r = vmm_err(EINVAL, "vmstate vcpu %d: tsc_khz %llu is out of range", c->id,
                    (unsigned long long)khz);
        goto fail;
    }
    if (s->xcrs.nr_xcrs > KVM_MAX_XCRS) {
        r = vmm_err(EINVAL, "vmstate vcpu %d: %u XCRs, KVM has %d", c->id, s->xcrs.nr_xcrs,
                    KVM_MAX_XCRS);
        goto fail;
    }
    s->mp.mp_state = (uint32_t)mp;
    s->tsc_khz = (uint32_t)khz;
    uint32_t n;
    if ((r = get_entries(m, "cpuid", sizeof(struct kvm_cpuid_entry2), KVM_MAX_CPUID_ENTRIES,
                         (void **)&s->cpuid, &n, sizeof(struct kvm_cpuid2))))
        goto fail;
    s->cpuid->nent = n;
    if ((r = get_entries(m, "msrs", sizeof(struct kvm_msr_entry), X86_MAX_MSRS,
                         (void **)&s->msrs, &n, sizeof(struct kvm_msrs))))
        goto fail;
    s->msrs->nmsrs = n;
    const uint8_t *xs;
    uint32_t xlen;
    if ((r = dec_get_bin(m, "xsave", &xs, &xlen)))
        goto fail;
    if (xlen < sizeof(struct kvm_xsave) || xlen > hc->xsave_size) {
        r = vmm_err(EINVAL, "vmstate vcpu %d: xsave is %u bytes; this host takes %zu..%u",
                    c->id, xlen, sizeof(struct kvm_xsave), hc->xsave_size);
        goto fail;
    }
    if (!(s->xsave = calloc(1, hc->xsave_size))) {
        r = vmm_err(ENOMEM, "out of memory for XSAVE state");
        goto fail;
    }
    memcpy(s->xsave, xs, xlen);
    *out = s;
    return 0;
fail:
    arch_vcpu_state_free(s);
    return vmm_err_ctx(r, "vCPU %d", c->id);
}

/* The guest's TSC must tick as it did where the snapshot was taken. */
static int apply_tsc_khz(int fd, uint32_t want, int id)
{
    int have = ioctl(fd, KVM_GET_TSC_KHZ, 0);
    if (!want || have <= 0)
        return 0;
    uint64_t diff = want > (uint32_t)have ? want - (uint32_t)have : (uint32_t)have - want;
    if (diff * 1000000ULL <= (uint64_t)want * TSC_KHZ_TOLERANCE_PPM)
        return 0;
    if (ioctl(fd, KVM_SET_TSC_KHZ, (unsigned long)want) < 0)
        return vmm_err(errno, "vCPU %d: the snapshot's TSC ran at %u kHz, this host's at %d kHz, "
                       "and KVM cannot scale it (%m): restore on a host with the same TSC "
                       "frequency or with TSC scaling", id, want, have);
    return 0;
}

/* Firecracker's order: CPUID first (it shapes what XSAVE and MSRs accept), events last. */
int arch_vcpu_apply(struct vmm *vm, struct vcpu *c, const struct arch_vcpu_state *s)
{
    int fd = c->fd, r = 0, n;
    if (ioctl(fd, KVM_SET_CPUID2, s->cpuid) < 0) r = vmm_err(errno, "KVM_SET_CPUID2: %m");
    else
        x86(vm)->cpuid_nent[c->id] = s->cpuid->nent;
    if (!r)
        r = apply_tsc_khz(fd, s->tsc_khz, c->id);
    if (r)
        return vmm_err_ctx(r, "restoring vCPU %d", c->id);
    if (ioctl(fd, KVM_SET_MP_STATE, &s->mp) < 0) r = vmm_err(errno, "KVM_SET_MP_STATE: %m");
    else if (ioctl(fd, KVM_SET_REGS, &s->regs) < 0) r = vmm_err(errno, "KVM_SET_REGS: %m");
    else if (ioctl(fd, KVM_SET_SREGS, &s->sregs) < 0) r = vmm_err(errno, "KVM_SET_SREGS: %m");
    else if (ioctl(fd, KVM_SET_XSAVE, s->xsave) < 0) r = vmm_err(errno, "KVM_SET_XSAVE: %m");
    else if (ioctl(fd, KVM_SET_XCRS, &s->xcrs) < 0) r = vmm_err(errno, "KVM_SET_XCRS: %m");
    else if (ioctl(fd, KVM_SET_DEBUGREGS, &s->dregs) < 0) r = vmm_err(errno, "KVM_SET_DEBUGREGS: %m");
    else if (ioctl(fd, KVM_SET_LAPIC, &s->lapic) < 0) r = vmm_err(errno, "KVM_SET_LAPIC: %m");
    else if ((n = ioctl(fd, KVM_SET_MSRS, s->msrs)) < 0 || (uint32_t)n != s->msrs->nmsrs)
        r = vmm_err(n < 0 ? errno : EINVAL,
                    "KVM_SET_MSRS stopped at entry %d of %u (MSR 0x%x): the snapshot was taken "
                    "on a host whose CPU this one does not match", n, s->msrs->nmsrs,
                    n >= 0 && (uint32_t)n < s->msrs->nmsrs ? s->msrs->entries[n].index : 0);
    else if (ioctl(fd, KVM_SET_VCPU_EVENTS, &s->events) < 0)
        r = vmm_err(errno, "KVM_SET_VCPU_EVENTS: %m");
    return r ? vmm_err_ctx(r, "restoring vCPU %d", c->id) : 0;
}
