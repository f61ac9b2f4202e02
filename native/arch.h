/* arch.h - the few hooks generic code calls; only arch/ knows the architecture. */
#ifndef VMM_ARCH_H
#define VMM_ARCH_H
#include "internal.h"

#define ARCH_X86_64 1
#define ARCH_AARCH64 2
uint32_t arch_id(void);
const char *arch_name(uint32_t id);

/* Guest-physical layout of `size` bytes of RAM: fills gpas/sizes, returns the count. */
int arch_memory_layout(uint64_t size, uint64_t *gpas, uint64_t *sizes, int max);
int arch_vm_init(struct vmm *vm);          /* irqchip, timers: before vCPUs */
void arch_vm_destroy(struct vmm *vm);
int arch_platform_devices(struct vmm *vm); /* serial and friends */
int arch_vcpu_init(struct vmm *vm, struct vcpu *c);
int arch_flat_boot(struct vmm *vm, const struct vmm_flat_boot *b);
int arch_irq_line(struct vmm *vm, int irq, int level);
int arch_vcpu_resumed(struct vmm *vm, struct vcpu *c);  /* after a pause or restore */

/* State: one vmstate section per call. The load side validates before touching KVM. */
int arch_vm_save(struct vmm *vm, struct enc *e);
int arch_vm_load(struct vmm *vm, const struct dec_map *m);
int arch_vcpu_save(struct vmm *vm, struct vcpu *c, struct enc *e);
int arch_vcpu_load(struct vmm *vm, struct vcpu *c, const struct dec_map *m);
#define ARCH_VM_STATE_VERSION 1
#define ARCH_VCPU_STATE_VERSION 1

/* Flat-guest registers for benches/floor: a vCPU set up as arch_flat_boot would. */
int arch_flat_vcpu_regs(int kvm_fd, int vm_fd, int vcpu_fd, uint64_t rip, uint64_t rsp);
#endif
