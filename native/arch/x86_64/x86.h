/* x86.h - x86_64 arch-private data: per VM, and the host's capabilities (probed once). */
#ifndef VMM_X86_H
#define VMM_X86_H
#include "../../arch.h"

#define X86_MAX_CPUID 4096          /* entries a snapshot may hold: far above any real CPU */
#define X86_MAX_MSRS 4096
#define MSR_IA32_TSC 0x10
#define MSR_IA32_TSC_DEADLINE 0x6e0

struct x86_vm {
    int unused;                     /* per-VM arch data: boot structures arrive with Linux boot */
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
