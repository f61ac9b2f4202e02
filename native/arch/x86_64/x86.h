/* x86.h - x86_64 arch-private VM data. */
#ifndef VMM_X86_H
#define VMM_X86_H
#include "../../arch.h"

#define X86_MAX_MSRS 256
#define X86_MAX_CPUID 256
#define MSR_IA32_TSC 0x10
#define MSR_IA32_TSC_DEADLINE 0x6e0

struct x86_vm {
    struct {
        struct kvm_cpuid2 h;
        struct kvm_cpuid_entry2 e[X86_MAX_CPUID];
    } cpuid;                       /* host-supported CPUID, fetched for new VMs only */
    bool cpuid_fetched;
    uint32_t msrs[X86_MAX_MSRS];   /* readable MSRs, TSC before TSC_DEADLINE */
    uint32_t nmsrs;
    bool msrs_probed;              /* probed at the first save: creation and restore skip it */
    uint32_t xsave_size;           /* KVM_CAP_XSAVE2 size, at least sizeof(struct kvm_xsave) */
};

static inline struct x86_vm *x86(struct vmm *vm) { return vm->arch; }
int x86_probe(struct vmm *vm);
int x86_probe_msrs(struct vmm *vm, int vcpu_fd);
#endif
