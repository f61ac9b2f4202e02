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
int arch_irqchip_create(struct vmm *vm);
/* After every vCPU exists (the vGICv3 is initialized last). */
int arch_irqchip_finalize(struct vmm *vm);
void arch_vm_destroy(struct vmm *vm);
/* Every vCPU, on create and on restore (arm64: KVM_ARM_VCPU_INIT, secondaries powered off). */
int arch_vcpu_init(struct vmm *vm, struct vcpu *c);
/* A new VM's vCPU (CPUID and friends); a restored one gets all of that from its snapshot. */
int arch_vcpu_defaults(struct vmm *vm, struct vcpu *c);
int arch_flat_boot(struct vmm *vm, const struct vmm_flat_boot *b);
/* A Linux kernel (mapped file) and initrd into guest memory, the machine's description, the
 * boot vCPU's registers. */
int arch_load_linux(struct vmm *vm, const void *kernel, size_t klen, const void *initrd,
                    size_t ilen, const char *cmdline);
int arch_vcpu_resumed(struct vmm *vm, struct vcpu *c);  /* after a pause or restore */

/* Where devices go. Platform and test devices have fixed places (the arch's own devices and the
 * test guests know them); configured devices take MMIO slots in order. */
struct arch_slot {
    int bus;                 /* enum dev_bus */
    uint64_t base, size;
    uint32_t gsi;            /* 0: no interrupt */
    bool indexed;            /* it took MMIO slot `mmio_index` */
};
int arch_device_slot(int type, uint32_t mmio_index, struct arch_slot *out);
int arch_platform_devices(struct vmm *vm);   /* serial and friends, through devmgr_add */

/* State: one vmstate section per call, each decoded and checked (no KVM call) before any is
 * applied. arch_vcpus_first says whether vCPU sections are applied before the VM's (arm64: the
 * vGIC's redistributors need the vCPUs restored first). */
struct arch_vm_state;
struct arch_vcpu_state;
int arch_vm_save(struct vmm *vm, struct enc *e);
int arch_vm_decode(struct vmm *vm, const struct dec_map *m, struct arch_vm_state **out);
int arch_vm_apply(struct vmm *vm, const struct arch_vm_state *s);
int arch_vcpu_save(struct vmm *vm, struct vcpu *c, struct enc *e);
int arch_vcpu_decode(struct vmm *vm, struct vcpu *c, const struct dec_map *m,
                     struct arch_vcpu_state **out);
int arch_vcpu_apply(struct vmm *vm, struct vcpu *c, const struct arch_vcpu_state *s);
void arch_vm_state_free(struct arch_vm_state *s);
void arch_vcpu_state_free(struct arch_vcpu_state *s);
bool arch_vcpus_first(void);
#define ARCH_VM_STATE_VERSION 1
#define ARCH_VCPU_STATE_VERSION 1

/* Host capabilities, probed once per process: they are facts about the machine, not state. */
int arch_host_probe(void);

/* benches/ floor: a vCPU in the flat-boot mode with general registers from a snapshot. */
int arch_flat_vcpu_regs(int vcpu_fd, const void *regs, size_t len);
#endif
