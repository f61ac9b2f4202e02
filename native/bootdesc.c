/* bootdesc.c - checks on a boot description (arch/boot.h) shared by the ACPI, PVH, FDT and
 * Image builders of both arches; here rather than in arch/ so every build compiles it. */
#include <errno.h>
#include <string.h>
#include "arch/boot.h"
#include "internal.h"

/* end = base + size without wrapping past 2^64 */
static int end_of(uint64_t base, uint64_t size, uint64_t *end)
{
    if (size == 0 || base + size < base)
        return -1;
    *end = base + size;
    return 0;
}

static int overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

static int is_ioport(const struct boot_dev *v, int arch)
{
    return arch == BOOT_ARCH_X86_64 &&
           (v->kind == BOOT_DEV_UART_16550 || v->kind == BOOT_DEV_ACPI_SLEEP);
}

static int in_ram(const struct boot_desc *d, uint64_t gpa, uint64_t len)
{
    for (int i = 0; i < d->nmem; i++)
        if (gpa >= d->mem_gpa[i] && len <= d->mem_size[i] && gpa - d->mem_gpa[i] <= d->mem_size[i] - len)
            return 1;
    return 0;
}

static int check_dev(const struct boot_desc *d, int i, int arch)
{
    const struct boot_dev *v = &d->devs[i];
    uint64_t end;
    if (v->kind < BOOT_DEV_VIRTIO_MMIO || v->kind > BOOT_DEV_ACPI_SLEEP)
        return vmm_err(EINVAL, "boot device %d: unknown kind %u", i, v->kind);
    if (v->flags & ~(BOOT_IRQ_NONE | BOOT_IRQ_LEVEL))
        return vmm_err(EINVAL, "boot device %d: unknown flags 0x%x", i, v->flags);
    if (end_of(v->base, v->size, &end))
        return vmm_err(EINVAL, "boot device %d: window 0x%llx+0x%llx is empty or wraps", i,
                       (unsigned long long)v->base, (unsigned long long)v->size);
    if (is_ioport(v, arch) && end > 0x10000)
        return vmm_err(EINVAL, "boot device %d: I/O ports 0x%llx+0x%llx past 0xffff", i,
                       (unsigned long long)v->base, (unsigned long long)v->size);
    if (v->kind == BOOT_DEV_ACPI_SLEEP && (arch != BOOT_ARCH_X86_64 || v->size < 2))
        return vmm_err(EINVAL, "boot device %d: the ACPI sleep device is x86_64 only and needs "
                       "2 ports", i);
    if (v->kind == BOOT_DEV_VMGENID) {
        if (v->size != 16 || (v->base & 7) || (v->base & 4095) > 4096 - 16)
            return vmm_err(EINVAL, "boot device %d: VMGenID needs 16 bytes, 8-byte aligned, in "
                           "one page (0x%llx+%llu)", i, (unsigned long long)v->base,
                           (unsigned long long)v->size);
        if (!in_ram(d, v->base, v->size))
            return vmm_err(EINVAL, "boot device %d: VMGenID id at 0x%llx is not in RAM", i,
                           (unsigned long long)v->base);
    } else if (!is_ioport(v, arch)) {
        for (int m = 0; m < d->nmem; m++)
            if (overlaps(v->base, v->size, d->mem_gpa[m], d->mem_size[m]))
                return vmm_err(EINVAL, "boot device %d: window 0x%llx+0x%llx overlaps RAM", i,
                               (unsigned long long)v->base, (unsigned long long)v->size);
    }
    /* interrupts: SPIs stop at 987 (INTID 1019); KVM's one IO-APIC has pins 0..23 */
    if (!(v->flags & BOOT_IRQ_NONE) && v->irq > (arch == BOOT_ARCH_X86_64 ? 23u : 987u))
        return vmm_err(EINVAL, "boot device %d: interrupt %u out of range", i, v->irq);
    for (int j = 0; j < i; j++) {
        const struct boot_dev *w = &d->devs[j];
        if (is_ioport(v, arch) == is_ioport(w, arch) && overlaps(v->base, v->size, w->base, w->size))
            return vmm_err(EINVAL, "boot devices %d and %d overlap at 0x%llx", j, i,
                           (unsigned long long)v->base);
    }
    return 0;
}

int boot_desc_check(const struct boot_desc *d, int arch)
{
    uint64_t end, prev_end = 0;
    if (arch != BOOT_ARCH_X86_64 && arch != BOOT_ARCH_AARCH64)
        return vmm_err(EINVAL, "boot: unknown arch %d", arch);
    if (d->vcpus < 1 || d->vcpus > BOOT_MAX_VCPUS)
        return vmm_err(EINVAL, "boot: %u vCPUs, 1..%d supported", d->vcpus, BOOT_MAX_VCPUS);
    if (d->nmem < 1 || d->nmem > BOOT_MAX_MEM)
        return vmm_err(EINVAL, "boot: %d RAM regions, 1..%d supported", d->nmem, BOOT_MAX_MEM);
    for (int i = 0; i < d->nmem; i++) {
        if (end_of(d->mem_gpa[i], d->mem_size[i], &end))
            return vmm_err(EINVAL, "boot: RAM region %d is empty or wraps", i);
        if ((d->mem_gpa[i] | d->mem_size[i]) & 4095)
            return vmm_err(EINVAL, "boot: RAM region %d is not page aligned", i);
        if (i > 0 && d->mem_gpa[i] < prev_end)
            return vmm_err(EINVAL, "boot: RAM region %d overlaps or precedes region %d", i, i - 1);
        prev_end = end;
    }
    if (d->ndevs < 0 || d->ndevs > BOOT_MAX_DEVS)
        return vmm_err(EINVAL, "boot: %d devices, at most %d", d->ndevs, BOOT_MAX_DEVS);
    for (int i = 0; i < d->ndevs; i++) {
        int r = check_dev(d, i, arch);
        if (r)
            return r;
    }
    if (d->cmdline && strnlen(d->cmdline, BOOT_CMDLINE_MAX) >= BOOT_CMDLINE_MAX)
        return vmm_err(E2BIG, "boot: command line longer than %d bytes", BOOT_CMDLINE_MAX - 1);
    if (d->initrd_size && !in_ram(d, d->initrd_gpa, d->initrd_size))
        return vmm_err(EINVAL, "boot: initrd 0x%llx+0x%llx is not inside one RAM region",
                       (unsigned long long)d->initrd_gpa, (unsigned long long)d->initrd_size);
    if (d->rng_seed_len > BOOT_RNG_SEED_MAX)
        return vmm_err(EINVAL, "boot: rng seed of %u bytes, at most %d", d->rng_seed_len,
                       BOOT_RNG_SEED_MAX);
    if (d->mmio_size && end_of(d->mmio_gpa, d->mmio_size, &end))
        return vmm_err(EINVAL, "boot: MMIO hole wraps");
    return 0;
}

uint8_t *boot_mem_at(const struct boot_mem *m, uint64_t gpa, uint64_t len)
{
    if (gpa < m->gpa || len > m->size || gpa - m->gpa > m->size - len)
        return NULL;
    return m->host + (gpa - m->gpa);
}
