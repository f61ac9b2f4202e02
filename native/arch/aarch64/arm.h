/* arm.h - aarch64 arch-private data and the guest-physical places of its devices. */
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

#define CORE_REG(field) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
                         (offsetof(struct kvm_regs, field) / sizeof(uint32_t)))
/* MPIDR_EL1: op0 3, op1 0, CRn 0, CRm 0, op2 5 */
#define REG_MPIDR_EL1 (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG | \
                       (3ULL << KVM_REG_ARM64_SYSREG_OP0_SHIFT) | \
                       (5ULL << KVM_REG_ARM64_SYSREG_OP2_SHIFT))

struct arm_vm {
    struct kvm_vcpu_init init;     /* the preferred target, PSCI 0.2 */
    int gic_fd;
};

struct arm_vm *arm(struct vmm *vm);
int arm_set_reg(int fd, uint64_t id, uint64_t value);
int arm_get_reg(int fd, uint64_t id, uint64_t *value);
#endif
