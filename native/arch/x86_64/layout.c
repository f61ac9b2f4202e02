/* x86_64 VM: memory layout around the 32-bit MMIO hole, irqchip, PIT, device places. */
#include <errno.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include "x86.h"
#include "../boot.h"

#define TSS_ADDR        0xfffbd000ULL
#define IDENTITY_MAP    0xfffbc000ULL
#define SERIAL_PORT     0x3f8
#define SERIAL_GSI      4
#define I8042_PORT      0x60            /* 0x60..0x64; 0x61 is the PIT's, served in KVM */
#define ACPI_PM_PORT    0x600
#define DEBUG_PORT      0x500
#define VMGENID_GSI     23
#define MMIO_SLOT_BASE  0xd0000000ULL   /* one 4 KiB window per configured device */
#define MMIO_SLOT_SIZE  0x1000ULL
#define MMIO_SLOT_GSI   5               /* IOAPIC pins 5..22 */
#define MMIO_SLOTS      18

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
    case DEV_I8042:
        *out = (struct arch_slot){DEV_BUS_PIO, I8042_PORT, 5, 0};
        return 0;
    case DEV_ACPI_PM:
        *out = (struct arch_slot){DEV_BUS_PIO, ACPI_PM_PORT, 2, 0};
        return 0;
    case VMM_DEV_VMGENID:   /* 16 bytes of reserved RAM, on no bus */
        *out = (struct arch_slot){0, X86_VMGENID_GPA, 16, VMGENID_GSI};
        return 0;
    case DEV_PL031:
        return vmm_err(ENOTSUP, "no PL031 on x86_64");
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
    int r = devmgr_add(vm, DEV_SERIAL, 0, NULL);
    if (!r)
        r = devmgr_add(vm, DEV_I8042, 0, NULL);
    return r ? r : devmgr_add(vm, DEV_ACPI_PM, 0, NULL);
}

bool arch_vcpus_first(void) { return false; }
