/*
 * boot.h - what a guest is told about its machine at boot, as plain data.
 *
 * The device manager fills a struct boot_desc (RAM, vCPUs, every device's window and interrupt,
 * command line, initrd); pure builders turn it into what a stock Debian kernel reads:
 *   x86_64  arch/x86_64/acpi.c  RSDP, XSDT, FADT (hardware-reduced), MADT, DSDT
 *           arch/x86_64/boot.c  ELF vmlinux loader, PVH start_info + memmap, 64-bit zero page,
 *                               the entry registers
 *   aarch64 arch/aarch64/fdt.c  the flattened device tree
 *           arch/aarch64/image.c the arm64 Image loader, where the DTB and initrd go, x0/pc
 * and native/bootdesc.c checks the description they share.
 * Nothing here touches KVM or keeps state: each function writes into buffers the caller owns and
 * returns 0 or -errno with a message through vmm_err(). The kernel image is untrusted input and
 * every offset taken from it is bounds-checked. docs/boot.md has the memory maps and what was
 * checked with iasl and dtc.
 */
#ifndef VMM_ARCH_BOOT_H
#define VMM_ARCH_BOOT_H
#include <stddef.h>
#include <stdint.h>

#define BOOT_MAX_VCPUS 255      /* x86: one xAPIC id each (0..254); aarch64: one cpu node each */
#define BOOT_MAX_MEM 4
#define BOOT_MAX_DEVS 32
#define BOOT_CMDLINE_MAX 2048   /* with its NUL: COMMAND_LINE_SIZE of x86_64 and arm64 Linux */
#define BOOT_RNG_SEED_MAX 64

enum boot_dev_kind {
    BOOT_DEV_VIRTIO_MMIO = 1,   /* virtio-mmio v2 window; x86: DSDT "LNRO0005", arm: "virtio,mmio" */
    BOOT_DEV_UART_16550,        /* x86: base is the I/O port (0x3f8), DSDT PNP0501; arm: MMIO
                                 * "ns16550a", also /chosen/stdout-path */
    BOOT_DEV_PL031,             /* aarch64 RTC (primecell: the device answers the ID registers) */
    BOOT_DEV_VMGENID,           /* base: GPA of the 16-byte generation id (8-byte aligned, not
                                 * crossing a page), size 16; irq: the GSI/SPI raised after
                                 * restore (x86: through an ACPI GED that notifies the device) */
    BOOT_DEV_ACPI_SLEEP,        /* x86 only: I/O ports base (sleep control) and base+1 (sleep
                                 * status), size 2; with \_S5 in the DSDT `poweroff` in the guest
                                 * writes 0x34 (SLP_TYP 5 | SLP_EN) to base. No interrupt. */
};

/* boot_dev.flags */
#define BOOT_IRQ_NONE  (1u << 0)   /* the device has no interrupt line */
#define BOOT_IRQ_LEVEL (1u << 1)   /* level, active high; default is edge rising (irqfd pulses) */

struct boot_dev {
    uint32_t kind;              /* enum boot_dev_kind */
    uint32_t flags;             /* BOOT_IRQ_* */
    uint64_t base, size;        /* MMIO window (I/O ports for the x86 UART and ACPI_SLEEP) */
    uint32_t irq;               /* x86: GSI = IO-APIC pin, 0..23; aarch64: SPI number (GIC
                                 * INTID - 32), 0..987: what KVM's irq routing calls the GSI */
};

struct boot_gic {               /* aarch64 GICv3, as given to KVM_DEV_ARM_VGIC_GRP_ADDR */
    uint64_t dist_base, dist_size;      /* 64 KiB */
    uint64_t redist_base, redist_size;  /* 128 KiB per vCPU */
};

struct boot_desc {
    uint32_t vcpus;                      /* 1..BOOT_MAX_VCPUS */
    int nmem;                            /* guest RAM regions, ascending, not overlapping */
    uint64_t mem_gpa[BOOT_MAX_MEM], mem_size[BOOT_MAX_MEM];
    int ndevs;
    struct boot_dev devs[BOOT_MAX_DEVS];
    const char *cmdline;                 /* NULL = empty */
    uint64_t initrd_gpa, initrd_size;    /* size 0: no initrd */
    /* x86_64 */
    uint64_t mmio_gpa, mmio_size;        /* the 32-bit MMIO hole, reserved in the memory map */
    /* aarch64 */
    struct boot_gic gic;
    uint64_t mpidr[BOOT_MAX_VCPUS];      /* MPIDR_EL1 of each vCPU (KVM_GET_ONE_REG after
                                          * KVM_ARM_VCPU_INIT); boot_arm64_default_mpidr() is
                                          * KVM's reset value */
    uint8_t rng_seed[BOOT_RNG_SEED_MAX]; /* /chosen/rng-seed: early entropy for the kernel */
    uint32_t rng_seed_len;               /* 0: none */
};

/* A contiguous stretch of guest RAM as the VMM sees it: host bytes for [gpa, gpa + size). */
struct boot_mem {
    uint8_t *host;
    uint64_t gpa, size;
};

/* Checks what every builder relies on: counts within bounds, RAM regions ascending and
 * disjoint, device windows non-empty, disjoint and not over RAM (VMGenID's inside RAM), the
 * command line's length, the initrd inside one RAM region. `arch` says whether UART and
 * ACPI_SLEEP bases are I/O ports (x86_64). Builders call it first; the device manager may too. */
#define BOOT_ARCH_X86_64 1      /* the values of arch.h's ARCH_X86_64 / ARCH_AARCH64 */
#define BOOT_ARCH_AARCH64 2
int boot_desc_check(const struct boot_desc *d, int arch);

/* [gpa, gpa + len) of `m` as a host pointer, or NULL when any of it lies outside. */
uint8_t *boot_mem_at(const struct boot_mem *m, uint64_t gpa, uint64_t len);

/* ======================================================================================== *
 * x86_64. Guest-physical map (constants below; RAM [0, 3 GiB) is region 0, the rest from 4 GiB):
 *
 *   0x0000_0000  real-mode IVT and BIOS data area: RAM, left alone
 *   0x0000_0500  boot GDT (5 entries), 0x0000_0528 an empty IDT
 *   0x0000_6000  hvm_start_info (PVH), 0x0000_6040 its module list (the initrd)
 *   0x0000_7000  PVH memmap (up to 128 entries) -- or the zero page of the 64-bit protocol
 *   0x0000_8ff0  boot stack (64-bit protocol only)
 *   0x0000_9000  page tables identity-mapping 1 GiB (64-bit protocol only): PML4, PDPT, PD
 *   0x0002_0000  command line (2 KiB)
 *   0x0009_fc00  ---- reserved in the memory map up to 1 MiB ----
 *   0x0009_fc00  VMGenID's 16-byte generation id (suggested; it is the device's base)
 *   0x000e_0000  ACPI tables, RSDP first (the legacy scan range), 128 KiB
 *   0x0010_0000  free RAM
 *   0x0100_0000  the kernel, where its ELF program headers put it (16 MiB for Debian; the
 *                loader refuses anything below 1 MiB)
 *   top of RAM below the MMIO hole: the initrd, page aligned (x86_initrd_gpa())
 *   0xc000_0000  MMIO hole to 4 GiB: virtio-mmio windows, IO-APIC 0xfec0_0000, LAPIC 0xfee0_0000
 * ======================================================================================== */
#define X86_GDT_GPA        0x500ULL
#define X86_IDT_GPA        0x528ULL
#define X86_PVH_INFO_GPA   0x6000ULL
#define X86_PVH_MODLIST_GPA 0x6040ULL
#define X86_MEMMAP_GPA     0x7000ULL
#define X86_ZERO_PAGE_GPA  0x7000ULL
#define X86_BOOT_STACK_GPA 0x8ff0ULL
#define X86_PML4_GPA       0x9000ULL
#define X86_CMDLINE_GPA    0x20000ULL
#define X86_RESERVED_GPA   0x9fc00ULL   /* reserved from here to X86_HIMEM_GPA */
#define X86_VMGENID_GPA    0x9fc00ULL
#define X86_ACPI_GPA       0xe0000ULL
#define X86_ACPI_SIZE      0x20000ULL
#define X86_HIMEM_GPA      0x100000ULL
#define X86_IOAPIC_GPA     0xfec00000ULL
#define X86_LAPIC_GPA      0xfee00000ULL
#define X86_MEMMAP_MAX     128          /* E820_MAX_ENTRIES_ZEROPAGE */
#define X86_LOW_MEM_MIN    (X86_HIMEM_GPA)  /* region 0 must start at 0 and cover 1 MiB */

/* Writes RSDP, XSDT, FADT, MADT and DSDT into buf, which the guest sees at gpa (16-byte
 * aligned; X86_ACPI_GPA keeps the RSDP where the legacy scan finds it). *rsdp_gpa = gpa.
 * *used (may be NULL) = bytes written. -ENOSPC when len is too small. */
int x86_acpi_build(const struct boot_desc *d, uint8_t *buf, size_t len, uint64_t gpa,
                   uint64_t *rsdp_gpa, size_t *used);

struct x86_kernel {
    uint64_t pvh_entry;     /* XEN_ELFNOTE_PHYS32_ENTRY, 0 when the kernel has none */
    uint64_t entry64;       /* e_entry: the 64-bit boot protocol's entry (physical) */
    uint64_t lo, hi;        /* guest-physical extent of the loaded segments [lo, hi) */
};
/* Copies the PT_LOAD segments of an ELF64 x86_64 vmlinux to their physical addresses (p_paddr)
 * inside `m`, zero-filling p_memsz beyond p_filesz, and finds the PVH entry note. */
int x86_load_elf(const void *img, size_t len, const struct boot_mem *m, struct x86_kernel *k);

/* Where the initrd goes: the highest page-aligned GPA in region 0 below the MMIO hole and 4 GiB,
 * above the kernel (k->hi). */
int x86_initrd_gpa(const struct boot_desc *d, const struct x86_kernel *k, uint64_t size,
                   uint64_t *gpa);

/* The registers a boot protocol wants on the boot vCPU (the others wait for INIT/SIPI). */
struct x86_boot_regs {
    uint64_t rip, rsi, rbx, rsp, rbp, rflags;
    uint64_t cr0, cr3, cr4, efer;
    struct x86_seg { uint64_t base; uint32_t limit; uint16_t selector;
                     uint8_t type, present, dpl, db, s, l, g; } cs, ds, tr;  /* ds also es/fs/gs/ss */
    uint64_t gdt_base, idt_base;
    uint16_t gdt_limit, idt_limit;
};
/* PVH: writes the GDT, hvm_start_info (version 1: memmap, cmdline, rsdp, initrd module) and the
 * command line into `low` (region 0, gpa 0); *regs = 32-bit protected mode, paging off, flat
 * segments, ebx = start_info, eip = k->pvh_entry. */
int x86_boot_pvh(const struct boot_desc *d, const struct x86_kernel *k, uint64_t rsdp_gpa,
                 const struct boot_mem *low, struct x86_boot_regs *regs);
/* The 64-bit Linux boot protocol, for a vmlinux without the PVH note: zero page with e820,
 * command line, initrd, rsdp; identity page tables for the first 1 GiB; long mode at e_entry. */
int x86_boot_linux64(const struct boot_desc *d, const struct x86_kernel *k, uint64_t rsdp_gpa,
                     const struct boot_mem *low, struct x86_boot_regs *regs);
/* The memory map both protocols give (e820 types: 1 RAM, 2 reserved). Returns the count. */
struct x86_memmap_entry { uint64_t addr, size; uint32_t type; };
int x86_memmap(const struct boot_desc *d, struct x86_memmap_entry *out, int max);

#if defined(__x86_64__)
#include <linux/kvm.h>
/* Applies regs onto what KVM_GET_REGS/KVM_GET_SREGS returned (keeps apic_base and the rest).
 * x86_64 builds only: linux/kvm.h has these structs only there. */
void x86_boot_regs_apply(const struct x86_boot_regs *b, struct kvm_regs *r, struct kvm_sregs *s);
#endif

/* ======================================================================================== *
 * aarch64. Guest-physical map (constants below are suggestions the tests use; the device
 * manager owns the real ones and passes them in the desc):
 *
 *   0x0800_0000  GICv3 distributor (64 KiB), 0x080a_0000 redistributors (128 KiB per vCPU)
 *   0x4000_0000  platform MMIO: UART 0x4000_1000, RTC 0x4000_2000 ...; virtio-mmio windows
 *   0x8000_0000  RAM: the kernel Image at RAM base + text_offset (2 MiB aligned base)
 *   top of RAM   the DTB in the last 2 MiB-aligned block (at most 2 MiB), the initrd right
 *                below it, page aligned
 * ======================================================================================== */
#define ARM64_GICD_GPA      0x08000000ULL
#define ARM64_GICD_SIZE     0x10000ULL
#define ARM64_GICR_GPA      0x080a0000ULL
#define ARM64_GICR_PER_CPU  0x20000ULL
#define ARM64_DTB_MAX       0x200000ULL    /* Documentation/arm64/booting.rst: at most 2 MiB */

/* Flattened device tree of the desc into buf. *used = its size (totalsize). */
int arm64_fdt_build(const struct boot_desc *d, uint8_t *buf, size_t len, size_t *used);

struct arm64_image {
    uint64_t text_offset, image_size, flags;
};
/* Reads and checks the 64-byte arm64 Image header ("ARM\x64" at 56, little endian, 4K pages). */
int arm64_image_parse(const void *img, size_t len, struct arm64_image *out);

struct arm64_boot {
    uint64_t kernel_gpa, kernel_end;   /* Image loaded here; [kernel_gpa, kernel_end) is
                                        * image_size bytes the kernel may use */
    uint64_t dtb_gpa;                  /* where the DTB goes: x0 */
    uint64_t initrd_gpa;               /* where an initrd of the given size goes (0: none) */
    uint64_t pc, x0;                   /* entry registers of the boot vCPU (x1..x3 = 0,
                                        * PSTATE = EL1h with DAIF masked, MMU off) */
};
/* Copies the Image to the lowest 2 MiB-aligned base in `ram` + text_offset and places the DTB
 * (top 2 MiB-aligned block of `ram`, at most ARM64_DTB_MAX) and an initrd of initrd_size bytes
 * (right below the DTB) inside the booting.rst windows. */
int arm64_load_image(const void *img, size_t len, const struct boot_mem *ram,
                     uint64_t initrd_size, struct arm64_boot *out);

/* KVM's reset MPIDR_EL1 of vCPU i: Aff0 = i & 15, Aff1 = (i >> 4) & 255, Aff2 = (i >> 12). */
static inline uint64_t boot_arm64_default_mpidr(uint32_t i)
{
    return (1ULL << 31) | ((uint64_t)((i >> 12) & 0xff) << 16) |
           ((uint64_t)((i >> 4) & 0xff) << 8) | (i & 0xf);
}
#endif
