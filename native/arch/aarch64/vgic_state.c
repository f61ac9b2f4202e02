/*
 * The vGICv3's state, through the device attribute API on the GIC fd layout.c created: the
 * distributor, each vCPU's redistributor and CPU interface (addressed by the vCPU's MPIDR), and
 * the interrupt input line levels (KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO; the pending registers hold
 * only the latch). One vmstate section ("vm"), registers in fixed tables, so the section's
 * version names the layout.
 *
 * Restore runs after the vCPUs' (arch_vcpus_first): KVM finds a redistributor by the MPIDR the
 * vCPU state restores. Before the vCPUs the vGIC needs only to exist and be initialized, which
 * vm_build does for every VM. Order (QEMU's, and the KVM documentation's): GICD_IIDR first, the
 * distributor's control, each redistributor, the distributor's SPIs (configuration and routing
 * before line levels and pending bits, so level/edge and targets are right when they land), then
 * each CPU interface (ICC_CTLR before the binary points it governs). Set/clear register pairs
 * are written exactly: the clear register with the complement, then the set register.
 *
 * No ITS is created, so there are no LPIs and nothing for KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES
 * to write; a GICD_TYPER announcing LPIs is refused rather than saved half (the tables would
 * have to reach guest memory before it is copied).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include "arm.h"

#define SGI_BASE 0x10000u
#define GICD_TYPER_LPIS (1u << 17)
#define DIST_TYPER 1                               /* its word: dist_early[1] */
#define SPI_WORDS ((GIC_NR_IRQS - 32) / 32)    /* 1 bit per SPI */

enum { R_WRITE = 0, R_CHECK = 1, R_SETCLR = 2, R_LEVEL = 4, R_CHANGED = 8 };

/* `n` 32-bit registers from `off`, `stride` bytes apart. R_LEVEL: line levels of 32 INTIDs from
 * `off` (a vINTID) per word. R_SETCLR: the clear register is `off` + 0x80. R_CHANGED: written
 * only if it differs from what KVM holds, because KVM sanitizes what is written (the LPI table
 * bases: a 0 written reads back with cacheability bits set). */
struct gic_reg {
    uint32_t off;
    uint16_t n, stride;
    uint8_t how;
};

static const struct gic_reg dist_early[] = {
    {0x0008, 1, 4, R_WRITE},        /* GICD_IIDR: first, it selects KVM's behaviour */
    {0x0004, 1, 4, R_CHECK},        /* GICD_TYPER: the number of SPIs, LPIs */
    {0x0000, 1, 4, R_WRITE},        /* GICD_CTLR */
    {0x0010, 1, 4, R_WRITE},        /* GICD_STATUSR */
};
static const struct gic_reg dist_spis[] = {   /* the first word (SGIs, PPIs) is RAZ/WI */
    {0x0084, SPI_WORDS, 4, R_WRITE},             /* GICD_IGROUPR */
    {0x6000 + 8 * 32, GIC_NR_IRQS - 32, 8, R_WRITE},   /* GICD_IROUTER, low words (Aff3 is RAZ) */
    {0x0c08, SPI_WORDS * 2, 4, R_WRITE},         /* GICD_ICFGR */
    {0x0420, SPI_WORDS * 8, 4, R_WRITE},         /* GICD_IPRIORITYR */
    {32, SPI_WORDS, 32, R_LEVEL},                /* SPI line levels */
    {0x0104, SPI_WORDS, 4, R_SETCLR},            /* GICD_ISENABLER / ICENABLER */
    {0x0204, SPI_WORDS, 4, R_WRITE},             /* GICD_ISPENDR: exact through this API */
    {0x0304, SPI_WORDS, 4, R_SETCLR},            /* GICD_ISACTIVER / ICACTIVER */
};
static const struct gic_reg redist[] = {
    {0x0008, 2, 4, R_CHECK},                     /* GICR_TYPER: vCPU number, affinity, Last */
    {0x0010, 1, 4, R_WRITE},                     /* GICR_STATUSR */
    {0x0014, 1, 4, R_WRITE},                     /* GICR_WAKER */
    {0x0070, 2, 4, R_CHANGED},                   /* GICR_PROPBASER */
    {0x0078, 2, 4, R_CHANGED},                   /* GICR_PENDBASER */
    {0x0000, 1, 4, R_WRITE},                     /* GICR_CTLR: after the tables it enables */
    {SGI_BASE + 0x0080, 1, 4, R_WRITE},          /* GICR_IGROUPR0 */
    {SGI_BASE + 0x0c00, 2, 4, R_WRITE},          /* GICR_ICFGR0/1 */
    {SGI_BASE + 0x0400, 8, 4, R_WRITE},          /* GICR_IPRIORITYR0..7 */
    {0, 1, 32, R_LEVEL},                         /* PPI line levels (SGIs read as 0) */
    {SGI_BASE + 0x0100, 1, 4, R_SETCLR},         /* GICR_ISENABLER0 / ICENABLER0 */
    {SGI_BASE + 0x0200, 1, 4, R_WRITE},          /* GICR_ISPENDR0 */
    {SGI_BASE + 0x0300, 1, 4, R_SETCLR},         /* GICR_ISACTIVER0 / ICACTIVER0 */
};

/* CPU interface system registers, op0..op2 as the attribute encodes them. */
#define ICC(op1, crn, crm, op2) ((3u << 14) | ((op1) << 11) | ((crn) << 7) | ((crm) << 3) | (op2))
static const uint16_t icc[] = {
    ICC(0, 12, 12, 5),   /* ICC_SRE_EL1 */
    ICC(0, 12, 12, 4),   /* ICC_CTLR_EL1: before the binary points (CBPR) */
    ICC(0, 4, 6, 0),     /* ICC_PMR_EL1 */
    ICC(0, 12, 8, 3),    /* ICC_BPR0_EL1 */
    ICC(0, 12, 12, 3),   /* ICC_BPR1_EL1 */
    ICC(0, 12, 12, 6),   /* ICC_IGRPEN0_EL1 */
    ICC(0, 12, 12, 7),   /* ICC_IGRPEN1_EL1 */
    ICC(0, 12, 8, 4), ICC(0, 12, 8, 5), ICC(0, 12, 8, 6), ICC(0, 12, 8, 7),   /* ICC_AP0R0..3 */
    ICC(0, 12, 9, 0), ICC(0, 12, 9, 1), ICC(0, 12, 9, 2), ICC(0, 12, 9, 3),   /* ICC_AP1R0..3 */
};
#define ICC_N (sizeof(icc) / sizeof(icc[0]))
#define ICC_CTLR 1
#define ICC_AP0 7

#define N(t) (sizeof(t) / sizeof(t[0]))

static uint32_t words(const struct gic_reg *t, size_t n)
{
    uint32_t w = 0;
    for (size_t i = 0; i < n; i++)
        w += t[i].n;
    return w;
}

/* The active-priority registers a CPU interface has: as many as its priority bits need. */
static bool icc_present(unsigned slot, uint64_t ctlr)
{
    unsigned bits = (unsigned)((ctlr >> 8) & 7) + 1, k = (slot - ICC_AP0) % 4;
    return slot < ICC_AP0 || k == 0 || (k == 1 && bits >= 6) || bits == 7;
}

struct arch_vm_state {
    uint32_t *dist;                  /* dist_early then dist_spis, word by word */
    uint32_t *redist;                /* per vCPU, REDIST words each */
    uint64_t *icc;                   /* per vCPU, ICC_N each */
    unsigned nvcpus;
};

#define DIST_WORDS (words(dist_early, N(dist_early)) + words(dist_spis, N(dist_spis)))
#define REDIST_WORDS words(redist, N(redist))

void arch_vm_state_free(struct arch_vm_state *s)
{
    if (!s)
        return;
    free(s->dist);
    free(s->redist);
    free(s->icc);
    free(s);
}

bool arch_vcpus_first(void) { return true; }

/* The attribute's view of an MPIDR: Aff3.Aff2.Aff1.Aff0 in the top 32 bits. */
static int vcpu_mpidr(struct vcpu *c, uint64_t *attr)
{
    uint64_t mpidr;
    struct kvm_one_reg reg = {.id = REG_MPIDR_EL1, .addr = (uint64_t)(uintptr_t)&mpidr};
    if (ioctl(c->fd, KVM_GET_ONE_REG, &reg) < 0)
        return vmm_err(errno, "reading vCPU %d's MPIDR: %m", c->id);
    *attr = (((mpidr >> 8) & 0xff000000ULL) | (mpidr & 0xffffffULL)) << 32;
    return 0;
}

static int attr_io(int fd, bool set, uint32_t group, uint64_t attr, void *val)
{
    struct kvm_device_attr a = {.group = group, .attr = attr, .addr = (uint64_t)(uintptr_t)val};
    return ioctl(fd, set ? KVM_SET_DEVICE_ATTR : KVM_GET_DEVICE_ATTR, &a) < 0 ? -errno : 0;
}

static const char *where(uint32_t group)
{
    return group == KVM_DEV_ARM_VGIC_GRP_DIST_REGS ? "distributor" : "redistributor";
}

/* Reads (or with `set`, writes) one table's registers into/from `w`. */
static int table_io(int fd, bool set, uint32_t group, uint64_t mpidr, const struct gic_reg *t,
                    size_t n, uint32_t *w, int vcpu)
{
    char who[24] = "";
    if (vcpu >= 0)
        snprintf(who, sizeof(who), " of vCPU %d", vcpu);
    for (size_t i = 0; i < n; i++)
        for (unsigned j = 0; j < t[i].n; j++, w++) {
            uint32_t off = t[i].off + j * t[i].stride, g = group, have = 0;
            uint64_t attr = mpidr | off;
            int r;
            if (t[i].how == R_LEVEL) {
                g = KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO;
                attr = mpidr | ((uint64_t)VGIC_LEVEL_INFO_LINE_LEVEL <<
                                KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT) | off;
            }
            if (!set) {
                if ((r = attr_io(fd, false, g, attr, w)))
                    return vmm_err(-r, "reading vGIC %s register 0x%x%s: %s", where(group),
                                   off, who, strerror(-r));
                continue;
            }
            if (t[i].how == R_CHECK || t[i].how == R_CHANGED) {
                if ((r = attr_io(fd, false, g, attr, &have)))
                    return vmm_err(-r, "reading vGIC %s register 0x%x%s: %s", where(group), off,
                                   who, strerror(-r));
                if (t[i].how == R_CHANGED && have == *w)
                    continue;
            }
            if (t[i].how == R_CHECK) {
                if (have != *w)
                    return vmm_err(EINVAL, "vGIC %s register 0x%x%s is 0x%x here and 0x%x in "
                                   "the snapshot: this VM's interrupt controller or vCPUs are "
                                   "not laid out like the snapshot's", where(group), off, who,
                                   have, *w);
                continue;
            }
            if (t[i].how == R_SETCLR) {
                uint32_t clear = ~*w;
                if ((r = attr_io(fd, true, g, mpidr | (off + 0x80), &clear)))
                    return vmm_err(-r, "clearing vGIC %s register 0x%x%s: %s", where(group),
                                   off + 0x80, who, strerror(-r));
            }
            if ((r = attr_io(fd, true, g, attr, w)))
                return vmm_err(-r, "the vGIC refused %s register 0x%x%s = 0x%x: %s (a "
                               "snapshot from a host whose interrupt controller differs?)",
                               where(group), off, who, *w, strerror(-r));
        }
    return 0;
}

static int icc_io(int fd, bool set, uint64_t mpidr, uint64_t *v, int vcpu)
{
    for (unsigned k = 0; k < ICC_N; k++) {
        if (!icc_present(k, v[ICC_CTLR])) {
            if (!set)
                v[k] = 0;
            continue;
        }
        int r = attr_io(fd, set, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, mpidr | icc[k], &v[k]);
        if (r)
            return vmm_err(-r, "%s vCPU %d's CPU interface register 0x%x: %s%s",
                           set ? "the vGIC refused" : "reading", vcpu, icc[k], strerror(-r),
                           set ? " (a snapshot from a host whose GIC has other priority bits?)"
                               : "");
    }
    return 0;
}

int arch_vm_save(struct vmm *vm, struct enc *e)
{
    int fd = arm(vm)->gic_fd, r;
    unsigned nv = vm->cfg.vcpus;
    uint32_t dw = DIST_WORDS, rw = REDIST_WORDS;
    uint32_t *dist = calloc(dw, 4), *rd = calloc((size_t)nv * rw, 4);
    uint64_t *ic = calloc((size_t)nv * ICC_N, 8);
    if (!dist || !rd || !ic) {
        r = vmm_err(ENOMEM, "out of memory saving the vGIC");
        goto out;
    }
    if ((r = table_io(fd, false, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0, dist_early, N(dist_early),
                      dist, -1)) ||
        (r = table_io(fd, false, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0, dist_spis, N(dist_spis),
                      dist + words(dist_early, N(dist_early)), -1)))
        goto out;
    if (dist[DIST_TYPER] & GICD_TYPER_LPIS) {
        r = vmm_err(ENOTSUP, "the vGIC has LPIs (an ITS), whose pending tables this VMM does not "
                    "save");
        goto out;
    }
    for (unsigned i = 0; i < nv; i++) {
        uint64_t mpidr;
        if ((r = vcpu_mpidr(&vm->vcpus[i], &mpidr)) ||
            (r = table_io(fd, false, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, mpidr, redist, N(redist),
                          rd + (size_t)i * rw, (int)i)))
            goto out;
        uint64_t *v = ic + (size_t)i * ICC_N;
        /* the priority bits (ICC_CTLR) say which active-priority registers exist */
        if ((r = attr_io(fd, false, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, mpidr | icc[ICC_CTLR],
                         &v[ICC_CTLR]))) {
            r = vmm_err(-r, "reading vCPU %u's ICC_CTLR_EL1: %s", i, strerror(-r));
            goto out;
        }
        if ((r = icc_io(fd, false, mpidr, v, (int)i)))
            goto out;
    }
    enc_map(e, 4);
    enc_kv_uint(e, "v", ARCH_VM_STATE_VERSION);
    enc_kv_bin(e, "gicd", dist, (size_t)dw * 4);
    enc_str(e, "gicr");
    enc_array(e, nv);
    for (unsigned i = 0; i < nv; i++)
        enc_bin(e, rd + (size_t)i * rw, (size_t)rw * 4);
    enc_str(e, "icc");
    enc_array(e, nv);
    for (unsigned i = 0; i < nv; i++)
        enc_bin(e, ic + (size_t)i * ICC_N, ICC_N * 8);
out:
    free(dist);
    free(rd);
    free(ic);
    return r ? vmm_err_ctx(r, "saving the vGIC") : 0;
}

/* An array of `n` bins of exactly `size` bytes each, copied to `dst` back to back. */
static int get_bins(const struct dec_map *m, const char *key, unsigned n, size_t size, void *dst)
{
    struct dec_val v, one;
    int r = dec_get(m, key, DEC_ARRAY, &v);
    if (r)
        return r;
    if (v.u != n)
        return vmm_err(EINVAL, "vmstate vm: %s has %llu entries for %u vCPUs", key,
                       (unsigned long long)v.u, n);
    const uint8_t *p = v.p;
    for (unsigned i = 0; i < n; i++) {
        if ((r = dec_next(&p, v.end, &one)))
            return r;
        if (one.type != DEC_BIN || one.len != size)
            return vmm_err(EINVAL, "vmstate vm: %s entry %u is not %zu bytes", key, i, size);
        memcpy((uint8_t *)dst + i * size, one.p, size);
    }
    return 0;
}

int arch_vm_decode(struct vmm *vm, const struct dec_map *m, struct arch_vm_state **out)
{
    unsigned nv = vm->cfg.vcpus;
    uint32_t dw = DIST_WORDS, rw = REDIST_WORDS;
    struct arch_vm_state *s = calloc(1, sizeof(*s));
    if (!s)
        return vmm_err(ENOMEM, "out of memory decoding vmstate");
    s->nvcpus = nv;
    s->dist = calloc(dw, 4);
    s->redist = calloc((size_t)nv * rw, 4);
    s->icc = calloc((size_t)nv * ICC_N, 8);
    int r;
    if (!s->dist || !s->redist || !s->icc) {
        r = vmm_err(ENOMEM, "out of memory decoding vmstate");
        goto fail;
    }
    if ((r = dec_get_bin_exact(m, "gicd", s->dist, (size_t)dw * 4)) ||
        (r = get_bins(m, "gicr", nv, (size_t)rw * 4, s->redist)) ||
        (r = get_bins(m, "icc", nv, ICC_N * 8, s->icc)))
        goto fail;
    uint32_t typer = s->dist[DIST_TYPER];
    if (typer & GICD_TYPER_LPIS || ((typer & 0x1f) + 1) * 32 != GIC_NR_IRQS) {
        r = vmm_err(EINVAL, "vmstate vm: the vGIC had GICD_TYPER 0x%x; this VMM's has %d "
                    "interrupts and no LPIs", typer, GIC_NR_IRQS);
        goto fail;
    }
    for (unsigned i = 0; i < nv; i++)
        for (unsigned k = 0; k < ICC_N; k++) {
            const uint64_t *v = s->icc + (size_t)i * ICC_N;
            if (!icc_present(k, v[ICC_CTLR]) && v[k]) {
                r = vmm_err(EINVAL, "vmstate vm: vCPU %u's CPU interface sets an active-priority "
                            "register its priority bits do not have", i);
                goto fail;
            }
        }
    *out = s;
    return 0;
fail:
    arch_vm_state_free(s);
    return r;
}

int arch_vm_apply(struct vmm *vm, const struct arch_vm_state *s)
{
    int fd = arm(vm)->gic_fd, r = 0;
    uint32_t rw = REDIST_WORDS, early = words(dist_early, N(dist_early));
    uint64_t mpidr[VMM_MAX_VCPUS];
    uint32_t *dist = malloc((size_t)DIST_WORDS * 4), *rd = malloc((size_t)s->nvcpus * rw * 4);
    uint64_t *ic = malloc((size_t)s->nvcpus * ICC_N * 8);
    if (!dist || !rd || !ic) {     /* writable copies: the table walk passes words by pointer */
        r = vmm_err(ENOMEM, "out of memory restoring the vGIC");
        goto out;
    }
    memcpy(dist, s->dist, (size_t)DIST_WORDS * 4);
    memcpy(rd, s->redist, (size_t)s->nvcpus * rw * 4);
    memcpy(ic, s->icc, (size_t)s->nvcpus * ICC_N * 8);
    for (unsigned i = 0; i < s->nvcpus && !r; i++)
        r = vcpu_mpidr(&vm->vcpus[i], &mpidr[i]);
    if (r || (r = table_io(fd, true, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0, dist_early,
                           N(dist_early), dist, -1)))
        goto out;
    for (unsigned i = 0; i < s->nvcpus; i++)
        if ((r = table_io(fd, true, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS, mpidr[i], redist,
                          N(redist), rd + (size_t)i * rw, (int)i)))
            goto out;
    if ((r = table_io(fd, true, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, 0, dist_spis, N(dist_spis),
                      dist + early, -1)))
        goto out;
    for (unsigned i = 0; i < s->nvcpus; i++)
        if ((r = icc_io(fd, true, mpidr[i], ic + (size_t)i * ICC_N, (int)i)))
            goto out;
out:
    free(dist);
    free(rd);
    free(ic);
    return r ? vmm_err_ctx(r, "restoring the vGIC") : 0;
}
