/*
 * x86_64 Linux boot: the stock Debian kernel is an ELF vmlinux entered through its PVH note
 * (the 64-bit boot protocol when it has none), with ACPI tables describing every vCPU and
 * device (Debian's amd64 kernels find virtio-mmio devices nowhere else), the initrd and the
 * command line. Only the boot vCPU gets registers: the others wait in the in-kernel LAPIC for
 * the INIT/SIPI the kernel sends them. The builders are pure (boot.c, acpi.c); this file
 * feeds them the VM and writes their result into KVM.
 */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include "x86.h"
#include "../boot.h"

static int describe(struct vmm *vm, const char *cmdline, struct boot_desc *d)
{
    memset(d, 0, sizeof(*d));
    d->vcpus = vm->cfg.vcpus;
    d->nmem = vm->mem.nr;
    for (int i = 0; i < vm->mem.nr; i++) {
        d->mem_gpa[i] = vm->mem.r[i].gpa;
        d->mem_size[i] = vm->mem.r[i].size;
    }
    d->mmio_gpa = MMIO_HOLE_START;
    d->mmio_size = MMIO_HOLE_END - MMIO_HOLE_START;
    d->cmdline = cmdline;
    return devmgr_describe(&vm->dm, d);
}

int arch_load_linux(struct vmm *vm, const void *kernel, size_t klen, const void *initrd,
                    size_t ilen, const char *cmdline)
{
    struct boot_desc d;
    struct x86_kernel k;
    struct x86_boot_regs b;
    uint64_t rsdp;
    int r = describe(vm, cmdline, &d);
    if (r)
        return r;
    const struct mem_region *low = &vm->mem.r[0];
    if (low->gpa != 0 || low->size < X86_LOW_MEM_MIN)
        return vmm_err(EINVAL, "a Linux guest needs RAM from address 0 up to at least 1 MiB");
    struct boot_mem m = {low->host, 0, low->size};
    if ((r = x86_load_elf(kernel, klen, &m, &k)))
        return vmm_err_ctx(r, "loading the kernel");
    if (ilen) {
        if ((r = x86_initrd_gpa(&d, &k, ilen, &d.initrd_gpa)) ||
            (r = gm_write(&vm->mem, d.initrd_gpa, initrd, ilen)))
            return vmm_err_ctx(r, "placing the initrd (%zu bytes)", ilen);
        d.initrd_size = ilen;
    }
    uint8_t *acpi = boot_mem_at(&m, X86_ACPI_GPA, X86_ACPI_SIZE);
    if (!acpi)
        return vmm_err(EINVAL, "no RAM for the ACPI tables at 0x%llx", X86_ACPI_GPA);
    if ((r = x86_acpi_build(&d, acpi, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL)))
        return vmm_err_ctx(r, "building the ACPI tables");
    r = k.pvh_entry ? x86_boot_pvh(&d, &k, rsdp, &m, &b) : x86_boot_linux64(&d, &k, rsdp, &m, &b);
    if (r)
        return vmm_err_ctx(r, "writing the boot structures");
    gm_mark_dirty(&vm->mem, 0, low->size);   /* the builders wrote through the host view */
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    int fd = vm->vcpus[0].fd;
    if (ioctl(fd, KVM_GET_REGS, &regs) < 0 || ioctl(fd, KVM_GET_SREGS, &sregs) < 0)
        return vmm_err(errno, "reading vCPU 0's registers: %m");
    x86_boot_regs_apply(&b, &regs, &sregs);
    if (ioctl(fd, KVM_SET_SREGS, &sregs) < 0 || ioctl(fd, KVM_SET_REGS, &regs) < 0)
        return vmm_err(errno, "setting vCPU 0's boot registers: %m");
    return 0;
}
