/*
 * image.c - loading an arm64 Linux `Image` and placing the DTB and initrd as
 * Documentation/arm64/booting.rst asks:
 *   - the Image at text_offset from a 2 MiB-aligned base in RAM, with image_size bytes free;
 *   - the DTB 8-byte aligned, at most 2 MiB, in a 2 MiB block of its own (the kernel maps it
 *     cacheable in 2 MiB blocks); we use the top 2 MiB-aligned block of RAM;
 *   - the initrd inside a 1 GiB-aligned window of at most 32 GiB that also covers the Image; we
 *     put it right below the DTB, page aligned.
 * Entry: pc = the Image's first byte, x0 = the DTB, x1..x3 = 0, EL1h with DAIF masked, MMU and
 * D-cache off. The Image comes from a file we do not fully trust: the header is checked and every
 * size bounded by the RAM it must fit in.
 */
#include <errno.h>
#include <string.h>
#include "../boot.h"
#include "../../internal.h"

#define ARM64_MAGIC 0x644d5241u    /* "ARM\x64" */
#define HDR_LEN 64
#define SZ_2M 0x200000ULL
#define SZ_1G 0x40000000ULL
#define PAGE 4096ULL
#define FLAG_BE (1ULL << 0)
#define FLAG_PAGE_SHIFT 1          /* bits 1-2: 0 unspecified, 1 4K, 2 16K, 3 64K */

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

int arm64_image_parse(const void *img, size_t len, struct arm64_image *out)
{
    const uint8_t *h = img;
    if (len < HDR_LEN)
        return vmm_err(ENOEXEC, "kernel: %zu bytes, shorter than an arm64 Image header", len);
    if (rd32(h + 56) != ARM64_MAGIC)
        return vmm_err(ENOEXEC, "kernel: no arm64 Image magic at offset 56 (a compressed "
                       "vmlinuz must be unpacked first)");
    out->text_offset = rd64(h + 8);
    out->image_size = rd64(h + 16);
    out->flags = rd64(h + 24);
    if (out->image_size == 0) {    /* kernels before 3.17: text_offset 0x80000 by convention */
        out->text_offset = 0x80000;
        out->image_size = len;
    }
    if (out->flags & FLAG_BE)
        return vmm_err(ENOEXEC, "kernel: big-endian arm64 Image");
    uint64_t pages = (out->flags >> FLAG_PAGE_SHIFT) & 3;
    if (pages > 1)
        return vmm_err(ENOEXEC, "kernel: built for %s pages; KVM guests here use 4K",
                       pages == 2 ? "16K" : "64K");
    if (out->text_offset >= SZ_2M || (out->text_offset & (PAGE - 1)))
        return vmm_err(ENOEXEC, "kernel: text_offset 0x%llx is not a page offset within 2 MiB",
                       (unsigned long long)out->text_offset);
    if (out->image_size < len)
        return vmm_err(ENOEXEC, "kernel: image_size %llu is smaller than the %zu-byte file",
                       (unsigned long long)out->image_size, len);
    return 0;
}

int arm64_load_image(const void *img, size_t len, const struct boot_mem *ram,
                     uint64_t initrd_size, struct arm64_boot *out)
{
    struct arm64_image h;
    int r = arm64_image_parse(img, len, &h);
    if (r)
        return r;
    memset(out, 0, sizeof(*out));
    if (ram->gpa + ram->size < ram->gpa)
        return vmm_err(EINVAL, "boot: RAM region wraps");
    uint64_t base = (ram->gpa + SZ_2M - 1) & ~(SZ_2M - 1);
    uint64_t ram_end = ram->gpa + ram->size;
    /* the DTB's 2 MiB block: the last aligned one that lies wholly in RAM */
    uint64_t dtb = (ram_end & ~(SZ_2M - 1)) - SZ_2M;
    if (ram_end < 2 * SZ_2M || dtb < base || h.image_size > dtb - base ||
        h.text_offset > dtb - base - h.image_size)
        return vmm_err(ENOSPC, "boot: an Image of %llu bytes and the 2 MiB DTB block do not fit "
                       "in RAM 0x%llx+0x%llx", (unsigned long long)h.image_size,
                       (unsigned long long)ram->gpa, (unsigned long long)ram->size);
    out->kernel_gpa = base + h.text_offset;
    out->kernel_end = out->kernel_gpa + h.image_size;
    out->dtb_gpa = dtb;
    if (initrd_size) {
        uint64_t aligned = (initrd_size + PAGE - 1) & ~(PAGE - 1);
        uint64_t window = base & ~(SZ_1G - 1);
        if (aligned < initrd_size || aligned > dtb - out->kernel_end)
            return vmm_err(ENOSPC, "boot: an initrd of %llu bytes does not fit between the "
                           "kernel (ends 0x%llx) and the DTB (0x%llx)",
                           (unsigned long long)initrd_size, (unsigned long long)out->kernel_end,
                           (unsigned long long)dtb);
        out->initrd_gpa = dtb - aligned;
        if (out->initrd_gpa + initrd_size - window > 32 * SZ_1G)
            return vmm_err(ENOSPC, "boot: the initrd would end more than 32 GiB past the 1 GiB "
                           "window holding the kernel");
    }
    uint8_t *dst = boot_mem_at(ram, out->kernel_gpa, h.image_size);
    if (!dst)
        return vmm_err(ENOSPC, "boot: the Image does not fit in RAM");
    memcpy(dst, img, len);
    memset(dst + len, 0, h.image_size - len);  /* bss: the kernel expects nothing, zero it */
    out->pc = out->kernel_gpa;
    out->x0 = out->dtb_gpa;
    return 0;
}
