/* arm.h - aarch64 arch-private data, the guest-physical places of its devices, and the host's
 * register list (probed once). */
#ifndef VMM_ARM_H
#define VMM_ARM_H
#include <stddef.h>
#include "../../arch.h"

#define DRAM_START    0x80000000ULL
#define GIC_DIST      0x08000000ULL
#define GIC_DIST_SIZE 0x10000ULL
#define GIC_REDIST    0x080a0000ULL     /* two 64 KiB frames per vCPU */
#define GIC_REDIST_SIZE_PER_CPU 0x20000ULL
#define GIC_NR_IRQS   128               /* 32 private + 96 SPIs */
#define RTC_MMIO      0x40000000ULL
#define RTC_GSI       2                 /* SPI 2 */
#define SERIAL_MMIO   0x40001000ULL
#define SERIAL_GSI    1                 /* SPI 1 */
#define DEBUG_MMIO    0x40002000ULL
#define MMIO_SLOT_BASE 0x40003000ULL    /* one 4 KiB window per configured device */
#define MMIO_SLOT_SIZE 0x1000ULL
#define MMIO_SLOT_GSI 16
#define MMIO_SLOTS    32
#define PSTATE_EL1H_DAIF 0x3c5ULL      /* EL1 with SP_EL1, D/A/I/F masked */
#define ARM_MAX_COUNTERS 2              /* the virtual counter, and the physical one where KVM
                                         * lets it be offset (6.4 and later) */

#define CORE_REG(field) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
                         (offsetof(struct kvm_regs, field) / sizeof(uint32_t)))
/* MPIDR_EL1: op0 3, op1 0, CRn 0, CRm 0, op2 5 */
#define REG_MPIDR_EL1 (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | \
                       (3ULL << KVM_REG_ARM64_SYSREG_OP0_SHIFT) | \
                       (5ULL << KVM_REG_ARM64_SYSREG_OP2_SHIFT))

struct arm_vm {
    struct kvm_vcpu_init init;     /* the preferred target, PSCI 0.2 */
    int gic_fd;
    /* The guest's counters stand still while the VM does not run (paused, restored and not yet
     * started): the values to resume from. Only touched with every vCPU out of KVM_RUN, under
     * the VM's operation lock (state.c). */
    bool frozen;
    uint64_t counter[ARM_MAX_COUNTERS];
};

/* What this host's KVM offers a vCPU of ours; immutable once probed. */
struct arm_caps {
    uint64_t *regs;                     /* KVM_GET_REG_LIST, in KVM's order */
    uint64_t *sorted;                   /* the same, sorted, for lookups */
    uint32_t nregs;
    uint64_t counters[ARM_MAX_COUNTERS];   /* the counter registers it lists */
    int ncounters;
};
/* NULL with the message set when probing failed. */
const struct arm_caps *arm_caps(void);
/* The vCPU features every vCPU of ours is initialized with (and the probe's). */
int arm_vcpu_target(int vm_fd, struct kvm_vcpu_init *init);

struct arm_vm *arm(struct vmm *vm);
int arm_set_reg(int fd, uint64_t id, uint64_t value);
int arm_get_reg(int fd, uint64_t id, uint64_t *value);
#endif
