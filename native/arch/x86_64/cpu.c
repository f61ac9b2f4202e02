/* x86_64 vCPU set-up: host capabilities, CPUID, and the flat CPL3 long-mode boot of test guests. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
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

/* ---------- host capabilities: probed once per process ---------- */

/* The one piece of process-wide state: facts about the machine, written once under
 * pthread_once and read-only after; several VMs in one process share them safely. */
static pthread_once_t caps_once = PTHREAD_ONCE_INIT;
static struct x86_caps caps;
static int caps_err;
static char caps_msg[VMM_ERR_LEN];

static int cmp_msr(const void *a, const void *b)
{
    /* TSC first: writing it later would move the deadline timer it is relative to */
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int kx = x == MSR_IA32_TSC ? 0 : x == MSR_IA32_TSC_DEADLINE ? 2 : 1;
    int ky = y == MSR_IA32_TSC ? 0 : y == MSR_IA32_TSC_DEADLINE ? 2 : 1;
    return kx != ky ? kx - ky : (x > y) - (x < y);
}

static int probe_cpuid(int kvm)
{
    for (uint32_t n = 256; n <= X86_MAX_CPUID; n *= 2) {
        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
        if (!c)
            return vmm_err(ENOMEM, "out of memory for CPUID");
        c->nent = n;
        if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, c) == 0) {
            caps.cpuid = c;
            return 0;
        }
        int e = errno;
        free(c);
        if (e != E2BIG)
            return vmm_err(e, "KVM_GET_SUPPORTED_CPUID: %s", strerror(e));
    }
    return vmm_err(E2BIG, "KVM_GET_SUPPORTED_CPUID wants more than %d entries", X86_MAX_CPUID);
}

/* The index list sized from what KVM says it holds, minus the MSRs a vCPU refuses to give. */
static int probe_msrs(int kvm, int vcpu)
{
    struct kvm_msr_list probe = {.nmsrs = 0};
    if (ioctl(kvm, KVM_GET_MSR_INDEX_LIST, &probe) == 0 || errno != E2BIG)
        return vmm_err(errno ? errno : EIO, "KVM_GET_MSR_INDEX_LIST did not report its size");
    uint32_t n = probe.nmsrs;
    if (n > X86_MAX_MSRS)
        return vmm_err(E2BIG, "KVM lists %u MSRs, more than %d", n, X86_MAX_MSRS);
    struct kvm_msr_list *list = calloc(1, sizeof(*list) + n * sizeof(uint32_t));
    caps.msrs = calloc(n ? n : 1, sizeof(uint32_t));
    if (!list || !caps.msrs) {
        free(list);
        return vmm_err(ENOMEM, "out of memory for the MSR list");
    }
    list->nmsrs = n;
    if (ioctl(kvm, KVM_GET_MSR_INDEX_LIST, list) < 0) {
        int e = errno;
        free(list);
        return vmm_err(e, "KVM_GET_MSR_INDEX_LIST: %s", strerror(e));
    }
    for (uint32_t i = 0; i < list->nmsrs && i < n; i++) {
        struct {
            struct kvm_msrs h;
            struct kvm_msr_entry e;
        } one = {.h.nmsrs = 1, .e.index = list->indices[i]};
        if (ioctl(vcpu, KVM_GET_MSRS, &one) == 1)
            caps.msrs[caps.nmsrs++] = list->indices[i];
    }
    free(list);
    qsort(caps.msrs, caps.nmsrs, sizeof(uint32_t), cmp_msr);
    return 0;
}

/* A throwaway VM with an irqchip and one vCPU: some MSRs exist only with a local APIC. */
static int probe(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), vmfd = -1, vcpu = -1, r;
    if (kvm < 0)
        return vmm_err(errno, "open /dev/kvm: %m");
    int xs = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    caps.xsave_size = xs > (int)sizeof(struct kvm_xsave) ? (uint32_t)xs : sizeof(struct kvm_xsave);
    caps.tsc_control = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) > 0;
    if ((r = probe_cpuid(kvm)))
        goto out;
    if ((vmfd = ioctl(kvm, KVM_CREATE_VM, 0)) < 0 || ioctl(vmfd, KVM_CREATE_IRQCHIP, 0) < 0 ||
        (vcpu = ioctl(vmfd, KVM_CREATE_VCPU, 0)) < 0) {
        r = vmm_err(errno, "a VM to probe MSRs with: %m");
        goto out;
    }
    if (ioctl(vcpu, KVM_SET_CPUID2, caps.cpuid) < 0) {
        r = vmm_err(errno, "KVM_SET_CPUID2 while probing: %m");
        goto out;
    }
    r = probe_msrs(kvm, vcpu);
out:
    if (vcpu >= 0)
        close(vcpu);
    if (vmfd >= 0)
        close(vmfd);
    close(kvm);
    return r;
}

static void probe_once(void)
{
    caps_err = probe();
    if (caps_err)
        snprintf(caps_msg, sizeof(caps_msg), "%s", vmm_last_error());
}

const struct x86_caps *x86_caps(void)
{
    pthread_once(&caps_once, probe_once);
    if (caps_err) {
        vmm_err(-caps_err, "probing the host's KVM: %s", caps_msg);
        return NULL;
    }
    return &caps;
}

int arch_host_probe(void)
{
    return x86_caps() ? 0 : -EIO;
}

int x86_vm_alloc(struct vmm *vm)
{
    if (!(vm->arch = calloc(1, sizeof(struct x86_vm))))
        return vmm_err(ENOMEM, "out of memory for x86 VM data");
    return 0;
}

/* ---------- vCPUs ---------- */

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

int arch_vcpu_init(struct vmm *vm, struct vcpu *c)
{
    (void)vm; (void)c;   /* x86 vCPUs need nothing before their state is set */
    return 0;
}

int arch_vcpu_defaults(struct vmm *vm, struct vcpu *c)
{
    const struct x86_caps *hc = x86_caps();
    if (!hc)
        return -EIO;
    size_t size = sizeof(*hc->cpuid) + hc->cpuid->nent * sizeof(hc->cpuid->entries[0]);
    struct kvm_cpuid2 *cpuid = malloc(size);
    if (!cpuid)
        return vmm_err(ENOMEM, "out of memory for CPUID");
    memcpy(cpuid, hc->cpuid, size);
    normalize_cpuid(cpuid, c->id);
    int r = ioctl(c->fd, KVM_SET_CPUID2, cpuid) < 0
                ? vmm_err(errno, "KVM_SET_CPUID2 on vCPU %d: %m", c->id) : 0;
    if (!r)
        x86(vm)->cpuid_nent[c->id] = cpuid->nent;
    free(cpuid);
    return r;
}

int arch_vcpu_resumed(struct vmm *vm, struct vcpu *c)
{
    (void)vm;
    /* Tells a pvclock guest its clock stopped; EINVAL just means the guest never enabled it. */
    if (ioctl(c->fd, KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL)
        return vmm_err(errno, "KVM_KVMCLOCK_CTRL on vCPU %d: %m", c->id);
    return 0;
}

/* ---------- flat boot of test guests ---------- */

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
    uint8_t *low = gm_slice(&vm->mem, 0, FLAT_RESERVED_END, true);
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
    int r = gm_done(&vm->mem);
    if (r)
        return r;
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        struct vcpu *c = &vm->vcpus[i];
        r = flat_regs(c->fd, b->entry, b->stack_top - (uint64_t)i * b->stack_size, i);
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
