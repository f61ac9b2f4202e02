/*
 * aarch64 VM: RAM from 2 GiB up, devices on MMIO below it, vCPUs via KVM_ARM_VCPU_INIT, and the
 * flat boot of test guests at EL1 with the MMU off. The vGICv3, PSCI-based SMP bring-up, FDT
 * and snapshots come with the Linux-guest and snapshot work; until then state calls refuse.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include "../../arch.h"
#include "../../devices/devices.h"

#define DRAM_START    0x80000000ULL
#define SERIAL_MMIO   0x40001000ULL
#define DEBUG_MMIO    0x40002000ULL
#define TESTDEV_MMIO  0x40003000ULL
#define PSTATE_EL1H_DAIF 0x3c5ULL      /* EL1 with SP_EL1, D/A/I/F masked */

#define CORE_REG(field) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
                         (offsetof(struct kvm_regs, field) / sizeof(uint32_t)))

uint32_t arch_id(void) { return ARCH_AARCH64; }

int arch_memory_layout(uint64_t size, uint64_t *gpas, uint64_t *sizes, int max)
{
    if (max < 1)
        return vmm_err(EINVAL, "layout needs a region");
    gpas[0] = DRAM_START;
    sizes[0] = size;
    return 1;
}

int arch_vm_init(struct vmm *vm)
{
    struct kvm_vcpu_init *init = calloc(1, sizeof(*init));
    if (!init)
        return vmm_err(ENOMEM, "out of memory for aarch64 VM data");
    vm->arch = init;
    if (ioctl(vm->vm_fd, KVM_ARM_PREFERRED_TARGET, init) < 0)
        return vmm_err(errno, "KVM_ARM_PREFERRED_TARGET: %m");
    init->features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
    return 0;
}

int arch_irqchip_init(struct vmm *vm)
{
    (void)vm;   /* vGICv3 arrives with the Linux-guest work; test guests take no interrupts */
    return 0;
}

void arch_vm_destroy(struct vmm *vm)
{
    free(vm->arch);
    vm->arch = NULL;
}

int arch_irq_line(struct vmm *vm, int irq, int level)
{
    (void)vm; (void)irq; (void)level;
    return vmm_err(ENOSYS, "no interrupt controller on aarch64 yet");
}

int arch_platform_devices(struct vmm *vm)
{
    int r = serial_create(vm, &vm->mmio, SERIAL_MMIO, 0);
    if (r || !vm->cfg.debug_devices)
        return r;
    if ((r = debugport_create(vm, &vm->mmio, DEBUG_MMIO)))
        return r;
    return testdev_create(vm, &vm->mmio, TESTDEV_MMIO);
}

static int vcpu_init(struct vmm *vm, struct vcpu *c)
{
    struct kvm_vcpu_init init = *(struct kvm_vcpu_init *)vm->arch;
    if (ioctl(c->fd, KVM_ARM_VCPU_INIT, &init) < 0)
        return vmm_err(errno, "KVM_ARM_VCPU_INIT on vCPU %d: %m", c->id);
    return 0;
}

int arch_vcpu_defaults(struct vmm *vm, struct vcpu *c)
{
    return vcpu_init(vm, c);
}

int arch_vcpu_resumed(struct vmm *vm, struct vcpu *c)
{
    (void)vm; (void)c;
    return 0;
}

static int set_reg(int fd, uint64_t id, uint64_t value)
{
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)(uintptr_t)&value};
    if (ioctl(fd, KVM_SET_ONE_REG, &reg) < 0)
        return vmm_err(errno, "KVM_SET_ONE_REG 0x%llx: %m", (unsigned long long)id);
    return 0;
}

/* Every vCPU starts at `entry` in EL1h, MMU off, interrupts masked; x0 = its index. */
int arch_flat_boot(struct vmm *vm, const struct vmm_flat_boot *b)
{
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        int fd = vm->vcpus[i].fd, r;
        if ((r = set_reg(fd, CORE_REG(regs.pc), b->entry)) ||
            (r = set_reg(fd, CORE_REG(regs.pstate), PSTATE_EL1H_DAIF)) ||
            (r = set_reg(fd, CORE_REG(sp_el1), b->stack_top - (uint64_t)i * b->stack_size)) ||
            (r = set_reg(fd, CORE_REG(regs.regs[0]), i)))
            return vmm_err_ctx(r, "vCPU %u", i);
    }
    return 0;
}

static int no_snapshots(void)
{
    return vmm_err(ENOTSUP, "snapshots of aarch64 VMs are not implemented yet (vGIC and system "
                   "registers come first)");
}

int arch_vm_save(struct vmm *vm, struct enc *e) { (void)vm; (void)e; return no_snapshots(); }
int arch_vm_load(struct vmm *vm, const struct dec_map *m) { (void)vm; (void)m; return no_snapshots(); }
int arch_vcpu_save(struct vmm *vm, struct vcpu *c, struct enc *e)
{
    (void)vm; (void)c; (void)e;
    return no_snapshots();
}
int arch_vcpu_load(struct vmm *vm, struct vcpu *c, const struct dec_map *m)
{
    (void)vm; (void)c; (void)m;
    return no_snapshots();
}

int arch_flat_vcpu_regs(int vcpu_fd, const void *regs, size_t len)
{
    (void)vcpu_fd; (void)regs; (void)len;
    return vmm_err(ENOTSUP, "the restore-floor bench is x86_64 only so far");
}
