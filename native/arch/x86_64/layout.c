/* x86_64 VM: memory layout around the 32-bit MMIO hole, irqchip, PIT, device places. */
#include <errno.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include "x86.h"

#define MMIO_HOLE_START 0xC0000000ULL   /* 3 GiB: MMIO devices live in [3G, 4G) */
#define MMIO_HOLE_END   0x100000000ULL
#define TSS_ADDR        0xfffbd000ULL
#define IDENTITY_MAP    0xfffbc000ULL
#define SERIAL_PORT     0x3f8
#define SERIAL_GSI      4
#define DEBUG_PORT      0x500
#define MMIO_SLOT_BASE  0xd0000000ULL   /* one 4 KiB window per configured device */
#define MMIO_SLOT_SIZE  0x1000ULL
#define MMIO_SLOT_GSI   5               /* IOAPIC pins 5..23 */
#define MMIO_SLOTS      19

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
    int r = x86_vm_alloc(vm);
    if (r)
        return r;
    if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, TSS_ADDR) < 0)
        return vmm_err(errno, "KVM_SET_TSS_ADDR: %m");
    if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0)
        return vmm_err(errno, "KVM_SET_IDENTITY_MAP_ADDR: %m");
    return 0;
}

int arch_irqchip_create(struct vmm *vm)
{
    if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        return vmm_err(errno, "KVM_CREATE_IRQCHIP: %m");
    struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return vmm_err(errno, "KVM_CREATE_PIT2: %m");
    return 0;
}

int arch_irqchip_finalize(struct vmm *vm)
{
    (void)vm;   /* the PIC/IOAPIC/LAPIC are complete once created */
    return 0;
}

void arch_vm_destroy(struct vmm *vm)
{
    free(vm->arch);
    vm->arch = NULL;
}

int arch_device_slot(int type, uint32_t mmio_index, struct arch_slot *out)
{
    switch (type) {
    case DEV_SERIAL:
        *out = (struct arch_slot){DEV_BUS_PIO, SERIAL_PORT, 8, SERIAL_GSI};
        return 0;
    case VMM_DEV_DEBUG:
        *out = (struct arch_slot){DEV_BUS_PIO, DEBUG_PORT, 16, 0};
        return 0;
    default:
        if (mmio_index >= MMIO_SLOTS)
            return vmm_err(ENOSPC, "no MMIO slot left for another device (%d on x86_64)",
                           MMIO_SLOTS);
        *out = (struct arch_slot){DEV_BUS_MMIO, MMIO_SLOT_BASE + mmio_index * MMIO_SLOT_SIZE,
                                  MMIO_SLOT_SIZE, MMIO_SLOT_GSI + mmio_index, true};
        return 0;
    }
}

int arch_platform_devices(struct vmm *vm)
{
    return devmgr_add(vm, DEV_SERIAL, 0, NULL);
}

bool arch_vcpus_first(void) { return false; }
