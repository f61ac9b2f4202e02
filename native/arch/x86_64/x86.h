/* x86.h - x86_64 arch-private data: per VM, and the host's capabilities (probed once). */
#ifndef VMM_X86_H
#define VMM_X86_H
#include "../../arch.h"

#define MMIO_HOLE_START 0xC0000000ULL   /* 3 GiB: MMIO devices live in [3G, 4G) */
#define MMIO_HOLE_END   0x100000000ULL
#define X86_MAX_CPUID 4096          /* entries a probe may take: far above any real CPU */
#define KVM_MAX_CPUID_ENTRIES 256   /* what KVM_SET_CPUID2 accepts (not in the uapi headers) */
#define X86_MAX_MSRS 4096
#define MSR_IA32_TSC 0x10
#define MSR_IA32_TSC_DEADLINE 0x6e0

struct x86_vm {
    /* CPUID entries set on each vCPU: what a snapshot saves. The count KVM_GET_CPUID2 reports
     * back cannot be relied on (the 6.1 kernel of our emulated hosts left it as given). */
    uint32_t cpuid_nent[VMM_MAX_VCPUS];
};

/* What this host's KVM offers; immutable once probed. */
struct x86_caps {
    struct kvm_cpuid2 *cpuid;       /* KVM_GET_SUPPORTED_CPUID */
    uint32_t *msrs;                 /* readable MSRs, TSC first and TSC_DEADLINE last */
    uint32_t nmsrs;
    uint32_t xsave_size;            /* KVM_CAP_XSAVE2, at least sizeof(struct kvm_xsave) */
    bool tsc_control;               /* KVM_SET_TSC_KHZ works */
};
/* NULL with the message set when probing failed. */
const struct x86_caps *x86_caps(void);

static inline struct x86_vm *x86(struct vmm *vm) { return vm->arch; }
int x86_vm_alloc(struct vmm *vm);
#endif
