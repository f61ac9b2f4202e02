/*
 * aarch64 Linux boot: the Debian arm64 Image at RAM base + text_offset, a device tree describing
 * every vCPU (by its MPIDR), the RAM, the vGICv3, the timer, PSCI and each device, the initrd
 * and the command line (Documentation/arm64/booting.rst). vCPU 0 enters at the Image with x0 =
 * the DTB; the others stay powered off until the kernel starts them with PSCI CPU_ON, which KVM
 * serves. The builders are pure (image.c, fdt.c); this file feeds them the VM.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include "arm.h"
#include "../boot.h"

static int describe(struct vmm *vm, const char *cmdline, struct boot_desc *d)
{
    memset(d, 0, sizeof(*d));
    d->vcpus = vm->cfg.vcpus;
    d->nmem = 1;
    d->mem_gpa[0] = vm->mem.r[0].gpa;
    d->mem_size[0] = vm->mem.r[0].size;
    d->cmdline = cmdline;
    d->gic = (struct boot_gic){GIC_DIST, GIC_DIST_SIZE, GIC_REDIST,
                               GIC_REDIST_SIZE_PER_CPU * vm->cfg.vcpus};
    for (unsigned i = 0; i < vm->cfg.vcpus; i++) {
        int r = arm_get_reg(vm->vcpus[i].fd, REG_MPIDR_EL1, &d->mpidr[i]);
        if (r)
            return vmm_err_ctx(r, "vCPU %u's MPIDR", i);
    }
    if (getrandom(d->rng_seed, BOOT_RNG_SEED_MAX, 0) == BOOT_RNG_SEED_MAX)
        d->rng_seed_len = BOOT_RNG_SEED_MAX;
    return devmgr_describe(&vm->dm, d);
}

int arch_load_linux(struct vmm *vm, const void *kernel, size_t klen, const void *initrd,
                    size_t ilen, const char *cmdline)
{
    struct boot_desc d;
    struct arm64_boot b;
    int r = describe(vm, cmdline, &d);
    if (r)
        return r;
    const struct mem_region *ram = &vm->mem.r[0];
    struct boot_mem m = {ram->host, ram->gpa, ram->size};
    if ((r = arm64_load_image(kernel, klen, &m, ilen, &b)))
        return vmm_err_ctx(r, "loading the kernel");
    if (ilen) {
        if ((r = gm_write(&vm->mem, b.initrd_gpa, initrd, ilen)))
            return vmm_err_ctx(r, "placing the initrd (%zu bytes)", ilen);
        d.initrd_gpa = b.initrd_gpa;
        d.initrd_size = ilen;
    }
    uint64_t room = ram->gpa + ram->size - b.dtb_gpa;
    if (room > ARM64_DTB_MAX)
        room = ARM64_DTB_MAX;
    uint8_t *dtb = boot_mem_at(&m, b.dtb_gpa, room);
    size_t used;
    if (!dtb)
        return vmm_err(EINVAL, "no RAM for the device tree at 0x%llx",
                       (unsigned long long)b.dtb_gpa);
    if ((r = arm64_fdt_build(&d, dtb, room, &used)))
        return vmm_err_ctx(r, "building the device tree");
    gm_mark_dirty(&vm->mem, ram->gpa, ram->size);   /* the builders wrote through the host view */
    int fd = vm->vcpus[0].fd;
    if ((r = arm_set_reg(fd, CORE_REG(regs.pc), b.pc)) ||
        (r = arm_set_reg(fd, CORE_REG(regs.pstate), PSTATE_EL1H_DAIF)) ||
        (r = arm_set_reg(fd, CORE_REG(regs.regs[0]), b.x0)))
        return vmm_err_ctx(r, "vCPU 0's boot registers");
    for (int i = 1; i <= 3; i++)
        if ((r = arm_set_reg(fd, CORE_REG(regs.regs[i]), 0)))
            return r;
    return 0;
}
