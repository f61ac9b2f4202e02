/* x86_64 vCPU set-up: CPUID, the MSR list, and the flat CPL3 long-mode boot of test guests. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include "x86.h"

/* Flat boot puts its tables at fixed low addresses; the guest image must avoid [0x500, 0x8000). */
#define GDT_ADDR   0x500ULL
#define PML4_ADDR  0x1000ULL
#define PDPT_ADDR  0x2000ULL
#define PD_ADDR    0x3000ULL     /* four PDs: 0x3000..0x6fff map 4 GiB with 2 MiB pages */
#define FLAT_RESERVED_END 0x8000ULL

#define PTE_P  0x1ULL
#define PTE_RW 0x2ULL
#define PTE_US 0x4ULL
#define PTE_PS 0x80ULL

#define CR0_PE 0x1ULL
#define CR0_MP 0x2ULL
#define CR0_ET 0x10ULL
#define CR0_NE 0x20ULL
#define CR0_WP 0x10000ULL
#define CR0_AM 0x40000ULL
#define CR0_PG 0x80000000ULL
#define CR4_PAE 0x20ULL
#define CR4_OSFXSR 0x200ULL
#define CR4_OSXMMEXCPT 0x400ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL
#define RFLAGS_IOPL3 0x3000ULL
#define RFLAGS_FIXED 0x2ULL

static int cmp_msr(const void *a, const void *b)
{
    /* TSC first: writing it later would move the deadline timer it is relative to */
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int kx = x == MSR_IA32_TSC ? 0 : x == MSR_IA32_TSC_DEADLINE ? 2 : 1;
    int ky = y == MSR_IA32_TSC ? 0 : y == MSR_IA32_TSC_DEADLINE ? 2 : 1;
    return kx != ky ? kx - ky : (x > y) - (x < y);
}

/* Which MSRs this host's KVM lets us read from a vCPU: the index list, minus any GET refuses. */
int x86_probe_msrs(struct vmm *vm, int vcpu_fd)
{
    struct x86_vm *a = x86(vm);
    if (a->msrs_probed)
        return 0;
    struct {
        struct kvm_msr_list h;
        uint32_t idx[X86_MAX_MSRS];
    } list = {.h.nmsrs = X86_MAX_MSRS};
    if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &list) < 0)
        return vmm_err(errno, "KVM_GET_MSR_INDEX_LIST: %m");
    a->nmsrs = 0;
    for (uint32_t i = 0; i < list.h.nmsrs && i < X86_MAX_MSRS; i++) {
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e;
        } one = {.h.nmsrs = 1, .e.index = list.idx[i]};
        if (ioctl(vcpu_fd, KVM_GET_MSRS, &one) == 1)
            a->msrs[a->nmsrs++] = list.idx[i];
    }
    qsort(a->msrs, a->nmsrs, sizeof(uint32_t), cmp_msr);
    a->msrs_probed = true;
    return 0;
}

int x86_probe(struct vmm *vm)
{
    struct x86_vm *a = calloc(1, sizeof(*a));
    if (!a)
        return vmm_err(ENOMEM, "out of memory for x86 VM data");
    vm->arch = a;
    int xs = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    a->xsave_size = xs > (int)sizeof(struct kvm_xsave) ? (uint32_t)xs : sizeof(struct kvm_xsave);
    return 0;
}

static void normalize_cpuid(struct kvm_cpuid2 *c, int id)
{
    for (uint32_t i = 0; i < c->nent; i++) {
        struct kvm_cpuid_entry2 *e = &c->entries[i];
        switch (e->function) {
        case 1:
            e->ebx = (e->ebx & 0x00ffffff) | ((uint32_t)id << 24);  /* initial APIC id */
            e->ecx |= 1u << 31;                                      /* hypervisor present */
            break;
        case 0xb:
        case 0x1f:
            e->edx = (uint32_t)id;                                   /* x2APIC id */
            break;
        }
    }
}

int arch_vcpu_defaults(struct vmm *vm, struct vcpu *c)
{
    struct x86_vm *a = x86(vm);
    if (!a->cpuid_fetched) {
        a->cpuid.h.nent = X86_MAX_CPUID;
        if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, &a->cpuid) < 0)
            return vmm_err(errno, "KVM_GET_SUPPORTED_CPUID: %m");
        a->cpuid_fetched = true;
    }
    struct {
        struct kvm_cpuid2 h;
        struct kvm_cpuid_entry2 e[X86_MAX_CPUID];
    } cpuid;
    memcpy(&cpuid, &a->cpuid, sizeof(cpuid));
    normalize_cpuid(&cpuid.h, c->id);
    if (ioctl(c->fd, KVM_SET_CPUID2, &cpuid) < 0)
        return vmm_err(errno, "KVM_SET_CPUID2 on vCPU %d: %m", c->id);
    return 0;
}

int arch_vcpu_resumed(struct vmm *vm, struct vcpu *c)
{
    (void)vm;
    /* Tells a pvclock guest its clock stopped; EINVAL just means the guest never enabled it. */
    if (ioctl(c->fd, KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL)
        return vmm_err(errno, "KVM_KVMCLOCK_CTRL on vCPU %d: %m", c->id);
    return 0;
}

static void flat_sregs(struct kvm_sregs *s)
{
    struct kvm_segment code = {.base = 0, .limit = 0xffffffff, .selector = 0x23, .type = 11,
                               .present = 1, .dpl = 3, .s = 1, .l = 1, .g = 1};
    struct kvm_segment data = {.base = 0, .limit = 0xffffffff, .selector = 0x1b, .type = 3,
                               .present = 1, .dpl = 3, .db = 1, .s = 1, .g = 1};
    s->cs = code;
    s->ds = s->es = s->fs = s->gs = s->ss = data;
    s->gdt.base = GDT_ADDR;
    s->gdt.limit = 5 * 8 - 1;
    s->cr3 = PML4_ADDR;
    s->cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s->cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    s->efer = EFER_LME | EFER_LMA;
}

static int flat_regs(int fd, uint64_t rip, uint64_t rsp, uint64_t id)
{
    struct kvm_sregs s;
    if (ioctl(fd, KVM_GET_SREGS, &s) < 0)
        return vmm_err(errno, "KVM_GET_SREGS: %m");
    flat_sregs(&s);
    if (ioctl(fd, KVM_SET_SREGS, &s) < 0)
        return vmm_err(errno, "KVM_SET_SREGS: %m");
    /* IOPL=3 so CPL3 code may use port I/O; IF=0: test guests take no interrupts */
    struct kvm_regs r = {.rip = rip, .rsp = rsp, .rdi = id, .rflags = RFLAGS_FIXED | RFLAGS_IOPL3};
    if (ioctl(fd, KVM_SET_REGS, &r) < 0)
        return vmm_err(errno, "KVM_SET_REGS: %m");
    return 0;
}

/*
 * Test guests run at CPL3 in long mode with identity-mapped user pages: on the nested KVM
 * we develop on, CPL0 guest code is emulated and slow, CPL3 runs natively (docs/kvm-notes.md).
 */
int arch_flat_boot(struct vmm *vm, const struct vmm_flat_boot *b)
{
    uint8_t *low = mem_hva(&vm->mem, 0, FLAT_RESERVED_END);
    if (!low)
        return vmm_err(EINVAL, "flat boot needs guest memory at [0, 0x%llx)", FLAT_RESERVED_END);
    uint64_t *gdt = (uint64_t *)(low + GDT_ADDR);
    gdt[0] = 0;
    gdt[1] = 0x00af9b000000ffffULL;   /* 0x08 kernel code64 */
    gdt[2] = 0x00cf93000000ffffULL;   /* 0x10 kernel data */
    gdt[3] = 0x00cff3000000ffffULL;   /* 0x18 user data, DPL3 */
    gdt[4] = 0x00affb000000ffffULL;   /* 0x20 user code64, DPL3 */
    uint64_t *pml4 = (uint64_t *)(low + PML4_ADDR), *pdpt = (uint64_t *)(low + PDPT_ADDR);
    memset(pml4, 0, PAGE_SIZE);
    pml4[0] = PDPT_ADDR | PTE_P | PTE_RW | PTE_US;
    for (int i = 0; i < 4; i++) {
        uint64_t *pd = (uint64_t *)(low + PD_ADDR + (uint64_t)i * PAGE_SIZE);
        pdpt[i] = (PD_ADDR + (uint64_t)i * PAGE_SIZE) | PTE_P | PTE_RW | PTE_US;
        for (int j = 0; j < 512; j++)
            pd[j] = (((uint64_t)i << 30) + ((uint64_t)j << 21)) | PTE_P | PTE_RW | PTE_US | PTE_PS;
    }
    mem_mark_dirty(&vm->mem, 0, FLAT_RESERVED_END);
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        int r = flat_regs(c->fd, b->entry, b->stack_top - (uint64_t)i * b->stack_size, i);
        if (r)
            return vmm_err_ctx(r, "vCPU %u", i);
        /* APs would otherwise wait for INIT/SIPI in the in-kernel LAPIC */
        struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
        if (ioctl(c->fd, KVM_SET_MP_STATE, &mp) < 0)
            return vmm_err(errno, "KVM_SET_MP_STATE on vCPU %u: %m", i);
    }
    return 0;
}

int arch_flat_vcpu_regs(int vcpu_fd, const void *regs, size_t len)
{
    struct kvm_regs r;
    if (len != sizeof(r))
        return vmm_err(EINVAL, "regs are %zu bytes; struct kvm_regs is %zu", len, sizeof(r));
    memcpy(&r, regs, sizeof(r));
    int rc = flat_regs(vcpu_fd, r.rip, r.rsp, r.rdi);
    if (!rc && ioctl(vcpu_fd, KVM_SET_REGS, &r) < 0)
        rc = vmm_err(errno, "KVM_SET_REGS: %m");
    return rc;
}
