/*
 * aarch64 VM: RAM from 2 GiB up, devices on MMIO below it, a vGICv3 created before the vCPUs
 * and initialized after them, vCPUs via KVM_ARM_VCPU_INIT (secondaries powered off until PSCI
 * CPU_ON), and the flat boot of test guests at EL1 with the MMU off. Snapshots of arm64 VMs
 * (every register from KVM_GET_REG_LIST, the vGIC state) come with the Linux-guest work; until
 * then the state calls refuse.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "arm.h"

struct arm_vm *arm(struct vmm *vm) { return vm->arch; }

uint32_t arch_id(void) { return ARCH_AARCH64; }

int arch_host_probe(void) { return 0; }

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
    struct arm_vm *a = calloc(1, sizeof(*a));
    if (!a)
        return vmm_err(ENOMEM, "out of memory for aarch64 VM data");
    a->gic_fd = -1;
    vm->arch = a;
    if (ioctl(vm->vm_fd, KVM_ARM_PREFERRED_TARGET, &a->init) < 0)
        return vmm_err(errno, "KVM_ARM_PREFERRED_TARGET: %m");
    a->init.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
    return 0;
}

static int gic_attr(int fd, uint32_t group, uint64_t attr, void *val)
{
    struct kvm_device_attr a = {.group = group, .attr = attr, .addr = (uint64_t)(uintptr_t)val};
    if (ioctl(fd, KVM_SET_DEVICE_ATTR, &a) < 0)
        return vmm_err(errno, "vGIC attribute %u/%llu: %m", group, (unsigned long long)attr);
    return 0;
}

int arch_irqchip_create(struct vmm *vm)
{
    struct kvm_create_device d = {.type = KVM_DEV_TYPE_ARM_VGIC_V3};
    if (ioctl(vm->vm_fd, KVM_CREATE_DEVICE, &d) < 0)
        return vmm_err(errno, "KVM_CREATE_DEVICE vGICv3: %m (the host needs a GICv3)");
    arm(vm)->gic_fd = (int)d.fd;
    uint64_t dist = GIC_DIST, redist = GIC_REDIST;
    int r = gic_attr(d.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, &dist);
    return r ? r : gic_attr(d.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST, &redist);
}

/* The vGIC sizes its redistributors from the vCPUs, so it is initialized after all exist. */
int arch_irqchip_finalize(struct vmm *vm)
{
    int fd = arm(vm)->gic_fd;
    uint32_t nr = GIC_NR_IRQS;
    int r = gic_attr(fd, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, &nr);
    return r ? r : gic_attr(fd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, NULL);
}

void arch_vm_destroy(struct vmm *vm)
{
    struct arm_vm *a = vm->arch;
    if (a->gic_fd >= 0)
        close(a->gic_fd);
    free(a);
    vm->arch = NULL;
}

int arch_vcpu_init(struct vmm *vm, struct vcpu *c)
{
    struct kvm_vcpu_init init = arm(vm)->init;
    if (c->id > 0)
        init.features[0] |= 1u << KVM_ARM_VCPU_POWER_OFF;   /* until PSCI CPU_ON */
    if (ioctl(c->fd, KVM_ARM_VCPU_INIT, &init) < 0)
        return vmm_err(errno, "KVM_ARM_VCPU_INIT on vCPU %d: %m", c->id);
    return 0;
}

int arch_vcpu_defaults(struct vmm *vm, struct vcpu *c)
{
    (void)vm; (void)c;   /* KVM_ARM_VCPU_INIT (arch_vcpu_init) set the reset state */
    return 0;
}

int arch_vcpu_resumed(struct vmm *vm, struct vcpu *c)
{
    (void)vm; (void)c;
    return 0;
}

int arch_device_slot(int type, uint32_t mmio_index, struct arch_slot *out)
{
    switch (type) {
    case DEV_SERIAL:
        *out = (struct arch_slot){DEV_BUS_MMIO, SERIAL_MMIO, 0x1000, SERIAL_GSI};
        return 0;
    case DEV_PL031:
        *out = (struct arch_slot){DEV_BUS_MMIO, RTC_MMIO, 0x1000, RTC_GSI};
        return 0;
    case DEV_I8042:
    case DEV_ACPI_PM:
        return vmm_err(ENOTSUP, "no x86 platform device on aarch64");
    case VMM_DEV_VMGENID:
        return vmm_err(ENOTSUP, "VMGenID needs ACPI, which aarch64 MicroVMs do not have: the "
                       "guest agent reseeds the kernel's RNG after a restore instead");
    case VMM_DEV_DEBUG:
        *out = (struct arch_slot){DEV_BUS_MMIO, DEBUG_MMIO, 0x1000, 0};
        return 0;
    default:
        if (mmio_index >= MMIO_SLOTS)
            return vmm_err(ENOSPC, "no MMIO slot left for another device (%d on aarch64)",
                           MMIO_SLOTS);
        *out = (struct arch_slot){DEV_BUS_MMIO, MMIO_SLOT_BASE + mmio_index * MMIO_SLOT_SIZE,
                                  MMIO_SLOT_SIZE, MMIO_SLOT_GSI + mmio_index, true};
        return 0;
    }
}

int arch_platform_devices(struct vmm *vm)
{
    int r = devmgr_add(vm, DEV_SERIAL, 0, NULL);
    return r ? r : devmgr_add(vm, DEV_PL031, 0, NULL);
}

int arm_set_reg(int fd, uint64_t id, uint64_t value)
{
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)(uintptr_t)&value};
    if (ioctl(fd, KVM_SET_ONE_REG, &reg) < 0)
        return vmm_err(errno, "KVM_SET_ONE_REG 0x%llx: %m", (unsigned long long)id);
    return 0;
}

int arm_get_reg(int fd, uint64_t id, uint64_t *value)
{
    struct kvm_one_reg reg = {.id = id, .addr = (uint64_t)(uintptr_t)value};
    if (ioctl(fd, KVM_GET_ONE_REG, &reg) < 0)
        return vmm_err(errno, "KVM_GET_ONE_REG 0x%llx: %m", (unsigned long long)id);
    return 0;
}

/* Every vCPU starts at `entry` in EL1h, MMU off, interrupts masked; x0 = its index. */
int arch_flat_boot(struct vmm *vm, const struct vmm_flat_boot *b)
{
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        int fd = vm->vcpus[i].fd, r;
        struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};   /* secondaries too */
        if (ioctl(fd, KVM_SET_MP_STATE, &mp) < 0)
            return vmm_err(errno, "KVM_SET_MP_STATE on vCPU %u: %m", i);
        if ((r = arm_set_reg(fd, CORE_REG(regs.pc), b->entry)) ||
            (r = arm_set_reg(fd, CORE_REG(regs.pstate), PSTATE_EL1H_DAIF)) ||
            (r = arm_set_reg(fd, CORE_REG(sp_el1), b->stack_top - (uint64_t)i * b->stack_size)) ||
            (r = arm_set_reg(fd, CORE_REG(regs.regs[0]), i)))
            return vmm_err_ctx(r, "vCPU %u", i);
    }
    return 0;
}

bool arch_vcpus_first(void) { return true; }

static int no_snapshots(void)
{
    return vmm_err(ENOTSUP, "snapshots of aarch64 VMs are not implemented yet (every register "
                   "from KVM_GET_REG_LIST and the vGIC state come with Linux guests)");
}

struct arch_vm_state { int unused; };
struct arch_vcpu_state { int unused; };

int arch_vm_save(struct vmm *vm, struct enc *e) { (void)vm; (void)e; return no_snapshots(); }
int arch_vm_decode(struct vmm *vm, const struct dec_map *m, struct arch_vm_state **out)
{
    (void)vm; (void)m; (void)out;
    return no_snapshots();
}
int arch_vm_apply(struct vmm *vm, const struct arch_vm_state *s)
{
    (void)vm; (void)s;
    return no_snapshots();
}
int arch_vcpu_save(struct vmm *vm, struct vcpu *c, struct enc *e)
{
    (void)vm; (void)c; (void)e;
    return no_snapshots();
}
int arch_vcpu_decode(struct vmm *vm, struct vcpu *c, const struct dec_map *m,
                     struct arch_vcpu_state **out)
{
    (void)vm; (void)c; (void)m; (void)out;
    return no_snapshots();
}
int arch_vcpu_apply(struct vmm *vm, struct vcpu *c, const struct arch_vcpu_state *s)
{
    (void)vm; (void)c; (void)s;
    return no_snapshots();
}
void arch_vm_state_free(struct arch_vm_state *s) { free(s); }
void arch_vcpu_state_free(struct arch_vcpu_state *s) { free(s); }

int arch_flat_vcpu_regs(int vcpu_fd, const void *regs, size_t len)
{
    (void)vcpu_fd; (void)regs; (void)len;
    return vmm_err(ENOTSUP, "the restore-floor bench is x86_64 only so far");
}
