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
int arch_vm_init(struct vmm *vm);          /* before guest memory exists */
/* In-kernel irqchip and timers: after the memory slots, before vCPUs. On our nested hosts a slot
 * added once the irqchip exists costs 30x more (docs/kvm-notes.md). */
int arch_irqchip_init(struct vmm *vm);
void arch_vm_destroy(struct vmm *vm);
int arch_platform_devices(struct vmm *vm); /* serial and friends */
/* A new VM's vCPU (CPUID and friends); a restored one gets all of that from its snapshot. */
int arch_vcpu_defaults(struct vmm *vm, struct vcpu *c);
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

/* benches/ floor: a vCPU in the flat-boot mode with general registers from a snapshot. */
int arch_flat_vcpu_regs(int vcpu_fd, const void *regs, size_t len);
#endif
