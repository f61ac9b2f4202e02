/* x86_64 VM: memory layout around the 32-bit MMIO hole, irqchip, PIT, platform devices. */
#include <errno.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include "x86.h"
#include "../../devices/devices.h"

#define MMIO_HOLE_START 0xC0000000ULL   /* 3 GiB: MMIO devices live in [3G, 4G) */
#define MMIO_HOLE_END   0x100000000ULL
#define TSS_ADDR        0xfffbd000ULL
#define IDENTITY_MAP    0xfffbc000ULL
#define SERIAL_PORT     0x3f8
#define SERIAL_IRQ      4
#define TESTDEV_MMIO    0xd0000000ULL
#define DEBUG_PORT      0x500

uint32_t arch_id(void) { return ARCH_X86_64; }

int arch_memory_layout(uint64_t size, uint64_t *gpas, uint64_t *sizes, int max)
{
    if (max < 2)
        return vmm_err(EINVAL, "layout needs two regions");
    gpas[0] = 0;
    sizes[0] = size < MMIO_HOLE_START ? size : MMIO_HOLE_START;
    if (size <= MMIO_HOLE_START)
        return 1;
    gpas[1] = MMIO_HOLE_END;
    sizes[1] = size - MMIO_HOLE_START;
    return 2;
}

int arch_vm_init(struct vmm *vm)
{
    uint64_t ident = IDENTITY_MAP;
    int r = x86_probe(vm);
    if (r)
        return r;
    if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, TSS_ADDR) < 0)
        return vmm_err(errno, "KVM_SET_TSS_ADDR: %m");
    if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0)
        return vmm_err(errno, "KVM_SET_IDENTITY_MAP_ADDR: %m");
    return 0;
}

int arch_irqchip_init(struct vmm *vm)
{
    if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return vmm_err(errno, "KVM_CREATE_IRQCHIP: %m");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return vmm_err(errno, "KVM_CREATE_PIT2: %m");
    return 0;
}

void arch_vm_destroy(struct vmm *vm)
{
    free(vm->arch);
    vm->arch = NULL;
}

int arch_irq_line(struct vmm *vm, int irq, int level)
{
    struct kvm_irq_level l = {.irq = (uint32_t)irq, .level = (uint32_t)level};
    if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0)
        return vmm_err(errno, "KVM_IRQ_LINE %d: %m", irq);
    return 0;
}

int arch_platform_devices(struct vmm *vm)
{
    int r = serial_create(vm, &vm->pio, SERIAL_PORT, SERIAL_IRQ);
    if (r || !vm->cfg.debug_devices)
        return r;
    if ((r = debugport_create(vm, &vm->pio, DEBUG_PORT)))
        return r;
    return testdev_create(vm, &vm->mmio, TESTDEV_MMIO);
}
