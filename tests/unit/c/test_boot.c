/*
 * Unit tests of the boot-time builders (native/arch/boot.h), no KVM needed: ACPI tables, PVH
 * start info and memory map, the 64-bit zero page, the FDT, the ELF and arm64 Image loaders, and
 * every one of them fed hostile input. tests/unit/test_boot.py runs this and then checks the
 * tables it dumped with the real tools (iasl, dtc).
 *
 *   test_boot run OUTDIR         all tests; dumps acpi-N/TABLE.dat and fdt-N.dtb for N = 1, 2, 16
 *   test_boot vmlinux FILE       loads an x86_64 vmlinux, builds PVH boot; prints what it found
 *   test_boot image FILE         loads an arm64 Image and builds its FDT; prints the placement
 * Prints "N passed, N failed" last.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <elf.h>
#include "internal.h"
#include "arch/boot.h"

static int passed, failed;

/* The builders' only dependency: an error sink like the native core's (which lives with the VM
 * code), so this test links nothing but the builders. */
static _Thread_local char last_error[512];
const char *vmm_last_error(void) { return last_error; }
int vmm_err(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return -err;
}
#define CHECK(cond) do { if (cond) passed++; else { failed++; \
    printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } } while (0)
/* a refusal must come with a message naming the problem */
#define REFUSED(expr, err, word) do { int r_ = (expr); \
    if (r_ == -(err) && strstr(vmm_last_error(), word)) passed++; else { failed++; \
    printf("FAIL %s:%d: %s gave %d \"%s\", wanted -%s mentioning \"%s\"\n", __FILE__, __LINE__, \
           #expr, r_, vmm_last_error(), #err, word); } } while (0)

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static uint8_t sum(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    while (n--)
        s += *p++;
    return s;
}

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static void *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc((size_t)n);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return p;
}

static size_t count(const uint8_t *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle), c = 0;
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(hay + i, needle, k))
            c++;
    return c;
}

/* ---- descriptions ---- */

static void add_dev(struct boot_desc *d, uint32_t kind, uint64_t base, uint64_t size, uint32_t irq)
{
    d->devs[d->ndevs++] = (struct boot_dev){.kind = kind, .base = base, .size = size, .irq = irq};
}

/* x86_64: 512 MiB RAM, COM1, three virtio-mmio windows in the hole, VMGenID, ACPI sleep */
static void x86_desc(struct boot_desc *d, uint32_t vcpus)
{
    memset(d, 0, sizeof(*d));
    d->vcpus = vcpus;
    d->nmem = 1;
    d->mem_size[0] = 512ULL << 20;
    d->mmio_gpa = 0xc0000000ULL;
    d->mmio_size = 0x40000000ULL;
    d->cmdline = "console=ttyS0 reboot=k panic=1";
    add_dev(d, BOOT_DEV_UART_16550, 0x3f8, 8, 4);
    for (int i = 0; i < 3; i++)
        add_dev(d, BOOT_DEV_VIRTIO_MMIO, 0xd0000000ULL + 0x1000ULL * i, 0x200, 5 + i);
    add_dev(d, BOOT_DEV_VMGENID, X86_VMGENID_GPA, 16, 9);
    add_dev(d, BOOT_DEV_ACPI_SLEEP, 0x600, 2, 0);
    d->devs[d->ndevs - 1].flags = BOOT_IRQ_NONE;
}

/* aarch64: 512 MiB RAM at 2 GiB, GICv3, UART, RTC, three virtio-mmio windows */
static void arm_desc(struct boot_desc *d, uint32_t vcpus)
{
    memset(d, 0, sizeof(*d));
    d->vcpus = vcpus;
    d->nmem = 1;
    d->mem_gpa[0] = 0x80000000ULL;
    d->mem_size[0] = 512ULL << 20;
    d->cmdline = "console=ttyS0 panic=1";
    d->initrd_gpa = 0x9f000000ULL;
    d->initrd_size = 0x123456;
    d->gic = (struct boot_gic){ARM64_GICD_GPA, ARM64_GICD_SIZE, ARM64_GICR_GPA,
                               ARM64_GICR_PER_CPU * vcpus};
    for (uint32_t i = 0; i < vcpus; i++)
        d->mpidr[i] = boot_arm64_default_mpidr(i);
    memcpy(d->rng_seed, "0123456789abcdef", 16);
    d->rng_seed_len = 16;
    add_dev(d, BOOT_DEV_UART_16550, 0x40001000ULL, 0x1000, 1);
    d->devs[0].flags = BOOT_IRQ_LEVEL;
    add_dev(d, BOOT_DEV_PL031, 0x40002000ULL, 0x1000, 2);
    for (int i = 0; i < 3; i++)
        add_dev(d, BOOT_DEV_VIRTIO_MMIO, 0x40010000ULL + 0x1000ULL * i, 0x200, 16 + i);
}

/* ---- ACPI ---- */

/* Walks RSDP -> XSDT -> tables inside buf (seen at gpa); returns the table at `sig` or NULL. */
static const uint8_t *acpi_table(const uint8_t *buf, size_t len, uint64_t gpa, const char *sig)
{
    uint64_t xsdt = rd64(buf + 24) - gpa;
    if (xsdt + 36 > len)
        return NULL;
    const uint8_t *x = buf + xsdt;
    if (!strncmp(sig, "XSDT", 4))
        return x;
    for (uint32_t i = 36; i + 8 <= rd32(x + 4); i += 8) {
        uint64_t t = rd64(x + i) - gpa;
        if (t + 36 > len)
            return NULL;
        if (!memcmp(buf + t, sig, 4))
            return buf + t;
        if (!memcmp(buf + t, "FACP", 4) && !strncmp(sig, "DSDT", 4)) {
            uint64_t ds = rd64(buf + t + 140) - gpa;
            return ds + 36 <= len ? buf + ds : NULL;
        }
    }
    return NULL;
}

static void test_acpi_tables_checksum_and_list_every_device(const char *outdir, uint32_t vcpus)
{
    struct boot_desc d;
    uint8_t *buf = calloc(1, X86_ACPI_SIZE);
    uint64_t rsdp = 0;
    size_t used = 0;
    char path[512];
    x86_desc(&d, vcpus);
    CHECK(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, &used) == 0);
    CHECK(rsdp == X86_ACPI_GPA && used > 36 && used < X86_ACPI_SIZE);
    CHECK(!memcmp(buf, "RSD PTR ", 8) && buf[15] == 2 && rd32(buf + 20) == 36);
    CHECK(sum(buf, 20) == 0 && sum(buf, 36) == 0);
    static const char *sigs[] = {"XSDT", "FACP", "APIC", "DSDT"};
    snprintf(path, sizeof(path), "%s/acpi-%u", outdir, vcpus);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/acpi-%u/rsdp.dat", outdir, vcpus);
    CHECK(write_file(path, buf, 36) == 0);
    for (int i = 0; i < 4; i++) {
        const uint8_t *t = acpi_table(buf, used, X86_ACPI_GPA, sigs[i]);
        CHECK(t != NULL);
        if (!t)
            continue;
        uint32_t n = rd32(t + 4);
        CHECK(n >= 36 && (size_t)(t - buf) + n <= used && sum(t, n) == 0);
        CHECK(((t - buf) & 15) == 0);
        snprintf(path, sizeof(path), "%s/acpi-%u/%.4s.dat", outdir, vcpus, sigs[i]);
        for (char *p = path + strlen(path) - 8; *p != '.'; p++)
            *p = (char)(*p | 0x20);        /* lower-case file names: xsdt.dat, facp.dat ... */
        CHECK(write_file(path, t, n) == 0);
    }
    const uint8_t *madt = acpi_table(buf, used, X86_ACPI_GPA, "APIC");
    const uint8_t *dsdt = acpi_table(buf, used, X86_ACPI_GPA, "DSDT");
    const uint8_t *fadt = acpi_table(buf, used, X86_ACPI_GPA, "FACP");
    if (madt && dsdt && fadt) {
        CHECK(rd32(madt + 4) == 44 + 8 * vcpus + 12);
        CHECK(madt[44 + 8 * (vcpus - 1) + 3] == vcpus - 1);    /* last LAPIC's id */
        CHECK(rd32(fadt + 4) == 276 && (rd32(fadt + 112) & (1u << 20)));
        CHECK(count(dsdt, rd32(dsdt + 4), "LNRO0005") == 3);
        CHECK(count(dsdt, rd32(dsdt + 4), "VMGENCTR") == 1);
        CHECK(count(dsdt, rd32(dsdt + 4), "ACPI0013") == 1);
        CHECK(count(dsdt, rd32(dsdt + 4), "_S5_") == 1);
    }
    free(buf);
}

static void test_acpi_refuses_bad_descriptions(void)
{
    struct boot_desc d;
    uint8_t *buf = calloc(1, X86_ACPI_SIZE);
    uint64_t rsdp;
    x86_desc(&d, 2);
    REFUSED(x86_acpi_build(&d, buf, 100, X86_ACPI_GPA, &rsdp, NULL), ENOSPC, "do not fit");
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA + 4, &rsdp, NULL), EINVAL, "16-byte");
    d.ndevs = BOOT_MAX_DEVS + 1;
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "devices");
    x86_desc(&d, 2);
    d.devs[1].base = 0x100000000ULL;       /* virtio window above 4 GiB */
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "below 4 GiB");
    x86_desc(&d, 2);
    d.devs[2].base = d.devs[1].base + 0x100;   /* two windows overlap */
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "overlap");
    x86_desc(&d, 2);
    d.devs[1].base = 0x1000;                   /* window over RAM */
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "RAM");
    x86_desc(&d, 2);
    d.devs[1].size = UINT64_MAX;               /* window that wraps */
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "wraps");
    x86_desc(&d, 2);
    d.devs[0].kind = 99;
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "kind");
    x86_desc(&d, 2);
    d.devs[0].kind = BOOT_DEV_PL031;           /* no x86 description */
    d.devs[0].base = 0xd0100000ULL;
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "x86_64");
    x86_desc(&d, 2);
    for (int i = 0; i < 4; i++)                /* COM1..COM5 */
        add_dev(&d, BOOT_DEV_UART_16550, 0x2f8 - 0x10 * i, 8, 3);
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "4 UARTs");
    x86_desc(&d, 2);
    d.devs[3].irq = 24;                        /* past the IO-APIC's 24 pins */
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "interrupt 24");
    x86_desc(&d, 0);
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "vCPUs");
    x86_desc(&d, BOOT_MAX_VCPUS + 1);
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "vCPUs");
    x86_desc(&d, 2);
    d.devs[4].base = 0x9fc04;                  /* VMGenID id misaligned */
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "VMGenID");
    x86_desc(&d, 2);
    d.devs[4].base = 0xf0000000ULL;            /* VMGenID id outside RAM */
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "not in RAM");
    x86_desc(&d, 2);
    char *longline = malloc(BOOT_CMDLINE_MAX + 1);
    memset(longline, 'a', BOOT_CMDLINE_MAX);
    longline[BOOT_CMDLINE_MAX] = 0;
    d.cmdline = longline;
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), E2BIG, "command line");
    free(longline);
    x86_desc(&d, 2);
    d.nmem = 2;                                /* regions out of order */
    d.mem_gpa[1] = 0x1000000;
    d.mem_size[1] = 0x1000000;
    REFUSED(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL), EINVAL, "overlaps");
    free(buf);
}

/* The largest description fits: 255 vCPUs, 32 devices. */
static void test_acpi_fits_the_largest_machine(void)
{
    struct boot_desc d;
    uint8_t *buf = calloc(1, X86_ACPI_SIZE);
    uint64_t rsdp;
    size_t used;
    x86_desc(&d, BOOT_MAX_VCPUS);
    while (d.ndevs < BOOT_MAX_DEVS)            /* GSIs may be shared: 5..23 round robin */
        add_dev(&d, BOOT_DEV_VIRTIO_MMIO, 0xd0000000ULL + 0x1000ULL * d.ndevs, 0x1000,
                5 + (uint32_t)d.ndevs % 19);
    CHECK(x86_acpi_build(&d, buf, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, &used) == 0);
    CHECK(used < 16384);
    const uint8_t *dsdt = acpi_table(buf, used, X86_ACPI_GPA, "DSDT");
    CHECK(dsdt && sum(dsdt, rd32(dsdt + 4)) == 0 && count(dsdt, rd32(dsdt + 4), "LNRO0005") == 29);
    free(buf);
}

/* ---- synthetic ELF kernels ---- */

struct elf_img { uint8_t b[8192]; size_t len; };

/* An ELF64 x86_64 vmlinux: two PT_LOADs at 16 MiB and 17 MiB and a note segment with a
 * GNU note then Xen's PHYS32_ENTRY. */
static void make_elf(struct elf_img *e, int with_note)
{
    memset(e, 0, sizeof(*e));
    Elf64_Ehdr *h = (Elf64_Ehdr *)e->b;
    memcpy(h->e_ident, ELFMAG, SELFMAG);
    h->e_ident[EI_CLASS] = ELFCLASS64;
    h->e_ident[EI_DATA] = ELFDATA2LSB;
    h->e_ident[EI_VERSION] = EV_CURRENT;
    h->e_type = ET_EXEC;
    h->e_machine = EM_X86_64;
    h->e_version = EV_CURRENT;
    h->e_entry = 0x1000000;
    h->e_phoff = sizeof(Elf64_Ehdr);
    h->e_ehsize = sizeof(Elf64_Ehdr);
    h->e_phentsize = sizeof(Elf64_Phdr);
    h->e_phnum = 3;
    Elf64_Phdr *p = (Elf64_Phdr *)(e->b + h->e_phoff);
    p[0] = (Elf64_Phdr){.p_type = PT_LOAD, .p_offset = 0x1000, .p_paddr = 0x1000000,
                        .p_vaddr = 0xffffffff81000000ULL, .p_filesz = 0x800, .p_memsz = 0x2000};
    p[1] = (Elf64_Phdr){.p_type = PT_LOAD, .p_offset = 0x1800, .p_paddr = 0x1100000,
                        .p_filesz = 0x400, .p_memsz = 0x400};
    memset(e->b + 0x1000, 0xaa, 0x800);
    memset(e->b + 0x1800, 0xbb, 0x400);
    uint8_t *n = e->b + 0x400;
    size_t o = 0;
    /* GNU build-id note: namesz 4, descsz 5 (padded to 8) */
    uint32_t gnu[3] = {4, 5, 3};
    memcpy(n + o, gnu, 12); memcpy(n + o + 12, "GNU", 4); o += 16 + 8;
    uint32_t xen[3] = {4, 8, with_note ? 18 : 17};
    memcpy(n + o, xen, 12); memcpy(n + o + 12, "Xen", 4);
    uint64_t entry = 0x1000850;
    memcpy(n + o + 16, &entry, 8);
    o += 24;
    p[2] = (Elf64_Phdr){.p_type = PT_NOTE, .p_offset = 0x400, .p_filesz = o, .p_memsz = o};
    e->len = 0x1c00;
}

static Elf64_Phdr *phdr(struct elf_img *e, int i) { return (Elf64_Phdr *)(e->b + sizeof(Elf64_Ehdr)) + i; }

static void test_elf_loader_copies_segments_and_finds_pvh_entry(void)
{
    struct elf_img e;
    struct x86_kernel k;
    uint8_t *ram = calloc(1, 32 << 20);
    memset(ram + 0x1000000, 0x55, 0x3000);     /* stale bytes where bss goes */
    struct boot_mem m = {ram, 0, 32 << 20};
    make_elf(&e, 1);
    CHECK(x86_load_elf(e.b, e.len, &m, &k) == 0);
    CHECK(k.pvh_entry == 0x1000850 && k.entry64 == 0x1000000);
    CHECK(k.lo == 0x1000000 && k.hi == 0x1100400);
    CHECK(ram[0x1000000] == 0xaa && ram[0x10007ff] == 0xaa && ram[0x1000800] == 0 &&
          ram[0x1001fff] == 0 && ram[0x1100000] == 0xbb && ram[0x11003ff] == 0xbb);
    make_elf(&e, 0);                           /* no PVH note: 64-bit entry only */
    CHECK(x86_load_elf(e.b, e.len, &m, &k) == 0 && k.pvh_entry == 0 && k.entry64 == 0x1000000);
    free(ram);
}

static void test_elf_loader_refuses_hostile_kernels(void)
{
    struct elf_img e;
    struct x86_kernel k;
    uint8_t *ram = calloc(1, 32 << 20);
    struct boot_mem m = {ram, 0, 32 << 20};

    make_elf(&e, 1);
    REFUSED(x86_load_elf(e.b, 40, &m, &k), ENOEXEC, "shorter than an ELF header");
    REFUSED(x86_load_elf(e.b, 0x1400, &m, &k), ENOEXEC, "past the end");   /* truncated file */
    e.b[0] = 'M';
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "not an ELF");
    make_elf(&e, 1);
    e.b[EI_CLASS] = ELFCLASS32;
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "ELF64 x86_64");
    make_elf(&e, 1);
    ((Elf64_Ehdr *)e.b)->e_phoff = e.len - 16;
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "program headers past");
    make_elf(&e, 1);
    ((Elf64_Ehdr *)e.b)->e_phoff = UINT64_MAX - 8;  /* offset that wraps */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "program headers past");
    make_elf(&e, 1);
    ((Elf64_Ehdr *)e.b)->e_phnum = 60000;
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "program headers");
    make_elf(&e, 1);
    phdr(&e, 0)->p_offset = UINT64_MAX - 0x100;      /* file offset + size wraps */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "past the end");
    make_elf(&e, 1);
    phdr(&e, 0)->p_filesz = 0x100000;                /* more bytes than the file has */
    phdr(&e, 0)->p_memsz = 0x100000;
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "past the end");
    make_elf(&e, 1);
    phdr(&e, 0)->p_filesz = 0x3000;                  /* filesz > memsz */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "past the end");
    make_elf(&e, 1);
    phdr(&e, 1)->p_paddr = 0x2000000;                /* just past guest RAM */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "outside guest RAM");
    make_elf(&e, 1);
    phdr(&e, 1)->p_paddr = UINT64_MAX - 0x100;       /* address + size wraps */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "outside guest RAM");
    make_elf(&e, 1);
    phdr(&e, 1)->p_memsz = UINT64_MAX;
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "outside guest RAM");
    make_elf(&e, 1);
    phdr(&e, 1)->p_paddr = 0x1001000;                /* over segment 0 */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "overlap");
    make_elf(&e, 1);
    phdr(&e, 0)->p_paddr = 0x6000;                   /* over the boot tables */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "below 1 MiB");
    make_elf(&e, 1);
    memset(e.b + 0x400, 0xff, 4);                    /* the GNU note's namesz: 4 GiB */
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "note");
    make_elf(&e, 1);
    uint64_t far = 0x5000000;                        /* PVH entry outside the kernel */
    memcpy(e.b + 0x400 + 24 + 16, &far, 8);
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "PVH entry");
    make_elf(&e, 1);
    phdr(&e, 0)->p_type = PT_NULL;
    phdr(&e, 1)->p_type = PT_NULL;
    REFUSED(x86_load_elf(e.b, e.len, &m, &k), ENOEXEC, "no loadable");
    /* nothing was copied by the refused loads */
    size_t dirty = 0;
    for (size_t i = 0; i < (32u << 20); i++)
        dirty += ram[i] != 0;
    CHECK(dirty == 0);
    free(ram);
}

/* ---- PVH and the 64-bit protocol ---- */

static void test_pvh_start_info_memmap_cmdline_and_initrd(void)
{
    struct boot_desc d;
    struct elf_img e;
    struct x86_kernel k;
    struct x86_boot_regs regs;
    uint8_t *ram = calloc(1, 512 << 20);
    struct boot_mem m = {ram, 0, 512 << 20};
    uint64_t initrd;
    x86_desc(&d, 2);
    make_elf(&e, 1);
    CHECK(x86_load_elf(e.b, e.len, &m, &k) == 0);
    CHECK(x86_initrd_gpa(&d, &k, 0x123456, &initrd) == 0);
    CHECK(initrd == ((512ULL << 20) - 0x123456) / 4096 * 4096);
    d.initrd_gpa = initrd;
    d.initrd_size = 0x123456;
    CHECK(x86_boot_pvh(&d, &k, X86_ACPI_GPA, &m, &regs) == 0);
    const uint8_t *si = ram + X86_PVH_INFO_GPA;
    CHECK(rd32(si) == 0x336ec578 && rd32(si + 4) == 1 && rd32(si + 12) == 1);
    CHECK(rd64(si + 16) == X86_PVH_MODLIST_GPA && rd64(si + 24) == X86_CMDLINE_GPA);
    CHECK(rd64(si + 32) == X86_ACPI_GPA && rd64(si + 40) == X86_MEMMAP_GPA);
    CHECK(rd64(ram + X86_PVH_MODLIST_GPA) == initrd && rd64(ram + X86_PVH_MODLIST_GPA + 8) == 0x123456);
    CHECK(!strcmp((char *)ram + X86_CMDLINE_GPA, d.cmdline));
    /* RAM to the EBDA, reserved to 1 MiB, RAM to 512 MiB, the hole reserved */
    uint32_t n = rd32(si + 48);
    const uint8_t *mm = ram + X86_MEMMAP_GPA;
    CHECK(n == 4);
    CHECK(rd64(mm) == 0 && rd64(mm + 8) == 0x9fc00 && rd32(mm + 16) == 1);
    CHECK(rd64(mm + 24) == 0x9fc00 && rd64(mm + 32) == 0x100000 - 0x9fc00 && rd32(mm + 40) == 2);
    CHECK(rd64(mm + 48) == 0x100000 && rd64(mm + 56) == (512ULL << 20) - 0x100000 && rd32(mm + 64) == 1);
    CHECK(rd64(mm + 72) == 0xc0000000ULL && rd64(mm + 80) == 0x40000000ULL && rd32(mm + 88) == 2);
    /* 32-bit protected mode, paging off, flat segments, ebx = start_info */
    CHECK(regs.rip == 0x1000850 && regs.rbx == X86_PVH_INFO_GPA && regs.cr0 == 0x11 &&
          regs.cr4 == 0 && regs.efer == 0 && regs.rflags == 2);
    CHECK(regs.cs.base == 0 && regs.cs.limit == 0xffffffff && regs.cs.db == 1 && regs.cs.l == 0 &&
          regs.cs.type == 0xb && regs.cs.present && regs.cs.s && regs.cs.selector == 0x10);
    CHECK(regs.ds.limit == 0xffffffff && regs.ds.type == 3 && regs.ds.db && regs.ds.selector == 0x18);
    CHECK(regs.tr.type == 0xb && regs.tr.limit == 0x67 && regs.tr.present && !regs.tr.s);
    CHECK(rd64(ram + X86_GDT_GPA + 0x10) == 0x00cf9b000000ffffULL &&
          rd64(ram + X86_GDT_GPA + 0x18) == 0x00cf93000000ffffULL && regs.gdt_limit == 39);
    struct kvm_regs kr;
    struct kvm_sregs ks;
    memset(&ks, 0, sizeof(ks));
    ks.apic_base = 0xfee00900;
    x86_boot_regs_apply(&regs, &kr, &ks);
    CHECK(kr.rip == 0x1000850 && kr.rbx == X86_PVH_INFO_GPA && ks.cs.selector == 0x10 &&
          ks.ss.selector == 0x18 && ks.es.limit == 0xffffffff && ks.apic_base == 0xfee00900 &&
          ks.cr0 == 0x11 && !ks.cs.unusable);
    free(ram);
}

static void test_pvh_memmap_covers_ram_above_4g(void)
{
    struct boot_desc d;
    struct x86_memmap_entry mm[X86_MEMMAP_MAX];
    x86_desc(&d, 1);
    d.nmem = 2;
    d.mem_size[0] = 0xc0000000ULL;
    d.mem_gpa[1] = 0x100000000ULL;
    d.mem_size[1] = 0x40000000ULL;
    int n = x86_memmap(&d, mm, X86_MEMMAP_MAX);
    CHECK(n == 5);
    if (n == 5)
        CHECK(mm[3].addr == 0xc0000000ULL && mm[3].type == 2 && mm[4].addr == 0x100000000ULL &&
              mm[4].size == 0x40000000ULL && mm[4].type == 1);
    d.mmio_gpa = 0xb0000000ULL;                        /* hole over RAM */
    REFUSED(x86_memmap(&d, mm, X86_MEMMAP_MAX), EINVAL, "overlaps RAM");
    x86_desc(&d, 1);
    REFUSED(x86_memmap(&d, mm, 2), ENOSPC, "entries");
    x86_desc(&d, 1);
    d.ndevs = 4;                                       /* no VMGenID, which needs low RAM */
    d.mem_gpa[0] = 0x100000;                           /* no low memory */
    REFUSED(x86_memmap(&d, mm, X86_MEMMAP_MAX), EINVAL, "start at 0");
}

static void test_pvh_refuses_what_cannot_boot(void)
{
    struct boot_desc d;
    struct elf_img e;
    struct x86_kernel k;
    struct x86_boot_regs regs;
    uint8_t *ram = calloc(1, 32 << 20);
    struct boot_mem m = {ram, 0, 32 << 20};
    uint64_t gpa;
    x86_desc(&d, 1);
    d.mem_size[0] = 32 << 20;
    make_elf(&e, 0);
    CHECK(x86_load_elf(e.b, e.len, &m, &k) == 0);
    REFUSED(x86_boot_pvh(&d, &k, X86_ACPI_GPA, &m, &regs), ENOEXEC, "PVH");
    make_elf(&e, 1);
    CHECK(x86_load_elf(e.b, e.len, &m, &k) == 0);
    REFUSED(x86_initrd_gpa(&d, &k, 31 << 20, &gpa), ENOSPC, "does not fit");
    REFUSED(x86_initrd_gpa(&d, &k, UINT64_MAX, &gpa), ENOSPC, "does not fit");
    d.initrd_gpa = 30 << 20;
    d.initrd_size = 4 << 20;                           /* runs past RAM */
    REFUSED(x86_boot_pvh(&d, &k, X86_ACPI_GPA, &m, &regs), EINVAL, "initrd");
    free(ram);
}

static void test_linux64_zero_page_and_page_tables(void)
{
    struct boot_desc d;
    struct elf_img e;
    struct x86_kernel k;
    struct x86_boot_regs regs;
    uint8_t *ram = calloc(1, 512 << 20);
    struct boot_mem m = {ram, 0, 512 << 20};
    x86_desc(&d, 1);
    d.initrd_gpa = 0x10000000;
    d.initrd_size = 0x1000;
    make_elf(&e, 0);
    CHECK(x86_load_elf(e.b, e.len, &m, &k) == 0);
    CHECK(x86_boot_linux64(&d, &k, X86_ACPI_GPA, &m, &regs) == 0);
    const uint8_t *zp = ram + X86_ZERO_PAGE_GPA;
    CHECK(zp[0x1e8] == 4 && rd32(zp + 0x202) == 0x53726448 && zp[0x1fe] == 0x55 && zp[0x1ff] == 0xaa);
    CHECK(rd32(zp + 0x228) == X86_CMDLINE_GPA && rd32(zp + 0x238) == strlen(d.cmdline));
    CHECK(rd32(zp + 0x218) == 0x10000000 && rd32(zp + 0x21c) == 0x1000 && rd64(zp + 0x70) == X86_ACPI_GPA);
    CHECK(rd64(zp + 0x2d0 + 40) == 0x100000 && rd32(zp + 0x2d0 + 56) == 1);   /* third e820 entry */
    CHECK(rd64(ram + X86_PML4_GPA) == 0xa003 && rd64(ram + 0xa000) == 0xb003 &&
          rd64(ram + 0xb000 + 8 * 511) == ((511ULL << 21) | 0x83));
    CHECK(regs.rip == 0x1000000 && regs.rsi == X86_ZERO_PAGE_GPA && regs.cs.l == 1 &&
          regs.cs.db == 0 && regs.efer == 0x500 && regs.cr3 == X86_PML4_GPA && (regs.cr0 >> 31));
    free(ram);
}

/* ---- FDT ---- */

/* Finds property `name` of node `path` ("/chosen", "/intc@8000000"); returns its value. */
static const uint8_t *fdt_prop(const uint8_t *f, const char *path, const char *name, uint32_t *len)
{
    const uint8_t *s = f + be32(f + 8), *strs = f + be32(f + 12);
    char cur[256] = "";
    size_t clen = 0;
    int depth = 0;
    for (;;) {
        uint32_t t = be32(s);
        s += 4;
        if (t == 1) {
            const char *n = (const char *)s;
            size_t nl = strlen(n);
            if (depth > 0) {
                cur[clen++] = '/';
                memcpy(cur + clen, n, nl);
                clen += nl;
                cur[clen] = 0;
            }
            depth++;
            s += (nl + 4) & ~3u;
        } else if (t == 2) {
            depth--;
            while (clen > 0 && cur[clen - 1] != '/')
                clen--;
            if (clen > 0)
                clen--;
            cur[clen] = 0;
        } else if (t == 3) {
            uint32_t l = be32(s), no = be32(s + 4);
            const char *want = path[1] ? path : "";
            if (!strcmp(cur, want) && !strcmp((const char *)strs + no, name)) {
                *len = l;
                return s + 8;
            }
            s += 8 + ((l + 3) & ~3u);
        } else {
            return NULL;
        }
    }
}

static void test_fdt_describes_the_machine(const char *outdir, uint32_t vcpus)
{
    struct boot_desc d;
    uint8_t *buf = calloc(1, ARM64_DTB_MAX);
    size_t used = 0;
    uint32_t l;
    char path[512];
    arm_desc(&d, vcpus);
    CHECK(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, &used) == 0);
    CHECK(be32(buf) == 0xd00dfeed && be32(buf + 4) == used && be32(buf + 20) == 17);
    CHECK(used < 8192);
    const uint8_t *p = fdt_prop(buf, "/chosen", "bootargs", &l);
    CHECK(p && !strcmp((const char *)p, d.cmdline));
    p = fdt_prop(buf, "/chosen", "linux,initrd-end", &l);
    CHECK(p && l == 8 && be32(p) == 0 && be32(p + 4) == 0x9f123456u);
    p = fdt_prop(buf, "/intc@8000000", "reg", &l);
    CHECK(p && l == 32 && be32(p + 4) == ARM64_GICD_GPA && be32(p + 20) == ARM64_GICR_GPA &&
          be32(p + 28) == ARM64_GICR_PER_CPU * vcpus);
    snprintf(path, sizeof(path), "/cpus/cpu@%llx", (unsigned long long)(d.mpidr[vcpus - 1] & 0xffffff));
    p = fdt_prop(buf, path, "reg", &l);
    CHECK(p && l == 8 && be32(p + 4) == (d.mpidr[vcpus - 1] & 0xffffff));
    p = fdt_prop(buf, "/virtio_mmio@40012000", "interrupts", &l);
    CHECK(p && l == 12 && be32(p) == 0 && be32(p + 4) == 18 && be32(p + 8) == 1);
    p = fdt_prop(buf, "/uart@40001000", "interrupts", &l);
    CHECK(p && l == 12 && be32(p + 8) == 4);
    snprintf(path, sizeof(path), "%s/fdt-%u.dtb", outdir, vcpus);
    CHECK(write_file(path, buf, used) == 0);
    free(buf);
}

static void test_fdt_refuses_bad_descriptions(void)
{
    struct boot_desc d;
    uint8_t *buf = calloc(1, ARM64_DTB_MAX);
    arm_desc(&d, 2);
    REFUSED(arm64_fdt_build(&d, buf, 200, NULL), ENOSPC, "does not fit");
    REFUSED(arm64_fdt_build(&d, buf, 10, NULL), ENOSPC, "holds no");
    d.gic.redist_size = ARM64_GICR_PER_CPU;            /* one redistributor for two vCPUs */
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "GICv3");
    arm_desc(&d, 2);
    d.devs[2].base = ARM64_GICD_GPA + 0x1000;          /* virtio window inside the GIC */
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "overlaps the GIC");
    arm_desc(&d, 2);
    d.devs[2].base = 0x90000000ULL;                    /* virtio window over RAM */
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "RAM");
    arm_desc(&d, 2);
    d.ndevs = 33;
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "devices");
    arm_desc(&d, 2);
    add_dev(&d, BOOT_DEV_ACPI_SLEEP, 0x600, 2, 0);     /* x86 only */
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "x86_64 only");
    arm_desc(&d, 2);
    d.devs[3].irq = 5000;                              /* no such SPI */
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "interrupt");
    arm_desc(&d, 2);
    d.initrd_gpa = 0x9ff00000ULL;                      /* initrd runs past RAM */
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "initrd");
    arm_desc(&d, 2);
    d.mpidr[1] = d.mpidr[0];                           /* two vCPUs, one affinity */
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "same MPIDR");
    arm_desc(&d, 2);
    d.rng_seed_len = 65;
    REFUSED(arm64_fdt_build(&d, buf, ARM64_DTB_MAX, NULL), EINVAL, "seed");
    free(buf);
}

/* ---- arm64 Image ---- */

static void make_image(uint8_t *img, size_t len, uint64_t text_offset, uint64_t image_size, uint64_t flags)
{
    memset(img, 0x11, len);
    memcpy(img + 8, &text_offset, 8);
    memcpy(img + 16, &image_size, 8);
    memcpy(img + 24, &flags, 8);
    memset(img + 32, 0, 24);
    memcpy(img + 56, "ARM\x64", 4);
}

static void test_image_loader_places_kernel_dtb_and_initrd(void)
{
    uint8_t img[8192];
    uint8_t *ram = calloc(1, 64 << 20);
    memset(ram, 0x77, 64 << 20);
    struct boot_mem m = {ram, 0x80000000ULL, 64 << 20};
    struct arm64_boot b;
    struct arm64_image h;
    make_image(img, sizeof(img), 0, 0x10000, 0xa);
    CHECK(arm64_image_parse(img, sizeof(img), &h) == 0 && h.image_size == 0x10000 && h.flags == 0xa);
    CHECK(arm64_load_image(img, sizeof(img), &m, 0x5000, &b) == 0);
    CHECK(b.kernel_gpa == 0x80000000ULL && b.kernel_end == 0x80010000ULL && b.pc == b.kernel_gpa);
    CHECK(b.dtb_gpa == 0x80000000ULL + (62 << 20) && b.x0 == b.dtb_gpa && b.dtb_gpa % 8 == 0);
    CHECK(b.initrd_gpa == b.dtb_gpa - 0x5000);
    CHECK(!memcmp(ram, img, sizeof(img)) && ram[sizeof(img)] == 0 && ram[0xffff] == 0 && ram[0x10000] == 0x77);
    /* RAM that does not start on 2 MiB: the base rounds up, text_offset is honoured */
    struct boot_mem odd = {ram, 0x80001000ULL, (64 << 20) - 0x1000};
    make_image(img, sizeof(img), 0x80000, 0x10000, 0xa);
    CHECK(arm64_load_image(img, sizeof(img), &odd, 0, &b) == 0);
    CHECK(b.kernel_gpa == 0x80280000ULL && b.initrd_gpa == 0);
    free(ram);
}

static void test_image_loader_refuses_bad_headers(void)
{
    uint8_t img[8192];
    uint8_t *ram = calloc(1, 64 << 20);
    struct boot_mem m = {ram, 0x80000000ULL, 64 << 20};
    struct arm64_boot b;
    make_image(img, sizeof(img), 0, 0x10000, 0xa);
    REFUSED(arm64_load_image(img, 63, &m, 0, &b), ENOEXEC, "shorter");
    img[56] = 'X';
    REFUSED(arm64_load_image(img, sizeof(img), &m, 0, &b), ENOEXEC, "magic");
    make_image(img, sizeof(img), 0, 0x10000, 0xb);
    REFUSED(arm64_load_image(img, sizeof(img), &m, 0, &b), ENOEXEC, "big-endian");
    make_image(img, sizeof(img), 0, 0x10000, 0x6);
    REFUSED(arm64_load_image(img, sizeof(img), &m, 0, &b), ENOEXEC, "64K");
    make_image(img, sizeof(img), 0x123, 0x10000, 0xa);
    REFUSED(arm64_load_image(img, sizeof(img), &m, 0, &b), ENOEXEC, "text_offset");
    make_image(img, sizeof(img), UINT64_MAX & ~0xfffULL, 0x10000, 0xa);
    REFUSED(arm64_load_image(img, sizeof(img), &m, 0, &b), ENOEXEC, "text_offset");
    make_image(img, sizeof(img), 0, 0x100, 0xa);
    REFUSED(arm64_load_image(img, sizeof(img), &m, 0, &b), ENOEXEC, "image_size");
    make_image(img, sizeof(img), 0, UINT64_MAX - 0x1000, 0xa);   /* huge image_size */
    REFUSED(arm64_load_image(img, sizeof(img), &m, 0, &b), ENOSPC, "do not fit");
    make_image(img, sizeof(img), 0, 0x10000, 0xa);
    REFUSED(arm64_load_image(img, sizeof(img), &m, 63 << 20, &b), ENOSPC, "initrd");
    REFUSED(arm64_load_image(img, sizeof(img), &m, UINT64_MAX - 10, &b), ENOSPC, "initrd");
    struct boot_mem tiny = {ram, 0x80000000ULL, 3 << 20};
    REFUSED(arm64_load_image(img, sizeof(img), &tiny, 0, &b), ENOSPC, "do not fit");
    struct boot_mem wrap = {ram, UINT64_MAX - 0xfff, 64 << 20};
    REFUSED(arm64_load_image(img, sizeof(img), &wrap, 0, &b), EINVAL, "wraps");
    free(ram);
}

/* ---- random corruption: the loaders' bounds hold under ASan for any header bytes ---- */

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_loaders_survive_random_corruption(void)
{
    struct elf_img e;
    struct x86_kernel k;
    struct arm64_boot b;
    uint8_t img[4096];
    uint8_t *ram = calloc(1, 32 << 20);
    struct boot_mem m = {ram, 0, 32 << 20}, arm = {ram, 0x80000000ULL, 32 << 20};
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    int bad = 0, loaded = 0;
    for (int it = 0; it < 20000; it++) {
        make_elf(&e, 1);
        int flips = 1 + (int)(xorshift(&seed) % 8);
        for (int f = 0; f < flips; f++) {
            /* headers, program headers and the note segment are where the offsets live */
            size_t at = (size_t)(xorshift(&seed) % 0x440);
            e.b[at < 0x100 ? at : 0x400 + (at - 0x100) % 0x40] = (uint8_t)xorshift(&seed);
        }
        int r = x86_load_elf(e.b, e.len, &m, &k);
        if (r == 0) {
            loaded++;
            bad += !(k.lo >= X86_HIMEM_GPA && k.hi <= m.size && k.lo < k.hi);
        } else {
            bad += r != -ENOEXEC;
        }
        make_image(img, sizeof(img), 0, 0x10000, 0xa);
        for (int f = 0; f < flips; f++)
            img[xorshift(&seed) % 64] = (uint8_t)xorshift(&seed);
        r = arm64_load_image(img, sizeof(img), &arm, xorshift(&seed) % (64 << 20), &b);
        if (r == 0) {
            uint64_t next = b.initrd_gpa ? b.initrd_gpa : b.dtb_gpa;   /* what follows the kernel */
            bad += !(b.kernel_gpa >= arm.gpa && b.kernel_end <= next &&
                     b.dtb_gpa + ARM64_DTB_MAX <= arm.gpa + arm.size);
        } else
            bad += r != -ENOEXEC && r != -ENOSPC;
    }
    CHECK(bad == 0);
    CHECK(loaded > 0);             /* some corruptions are harmless: the loader still works */
    free(ram);
}

/* ---- entry points ---- */

static int run_all(const char *outdir)
{
    static const uint32_t ncpu[] = {1, 2, 16};
    for (int i = 0; i < 3; i++) {
        test_acpi_tables_checksum_and_list_every_device(outdir, ncpu[i]);
        test_fdt_describes_the_machine(outdir, ncpu[i]);
    }
    test_acpi_refuses_bad_descriptions();
    test_acpi_fits_the_largest_machine();
    test_elf_loader_copies_segments_and_finds_pvh_entry();
    test_elf_loader_refuses_hostile_kernels();
    test_pvh_start_info_memmap_cmdline_and_initrd();
    test_pvh_memmap_covers_ram_above_4g();
    test_pvh_refuses_what_cannot_boot();
    test_linux64_zero_page_and_page_tables();
    test_fdt_refuses_bad_descriptions();
    test_image_loader_places_kernel_dtb_and_initrd();
    test_image_loader_refuses_bad_headers();
    test_loaders_survive_random_corruption();
    return 0;
}

/* A real vmlinux: load it into 256 MiB, build ACPI and PVH boot for it, and print the facts the
 * Python side checks against readelf. Every truncation of its first 64 KiB is refused cleanly. */
static int run_vmlinux(const char *file)
{
    size_t len;
    uint8_t *img = read_file(file, &len);
    uint8_t *ram = calloc(1, 256 << 20);
    struct boot_mem m = {ram, 0, 256 << 20};
    struct x86_kernel k;
    struct x86_boot_regs regs;
    struct boot_desc d;
    uint64_t rsdp, initrd;
    CHECK(img && ram);
    if (!img || !ram)
        return 1;
    int r = x86_load_elf(img, len, &m, &k);
    CHECK(r == 0);
    if (r)
        printf("load: %s\n", vmm_last_error());
    printf("pvh_entry=0x%llx entry64=0x%llx lo=0x%llx hi=0x%llx\n", (unsigned long long)k.pvh_entry,
           (unsigned long long)k.entry64, (unsigned long long)k.lo, (unsigned long long)k.hi);
    x86_desc(&d, 2);
    d.mem_size[0] = 256 << 20;
    CHECK(x86_acpi_build(&d, ram + X86_ACPI_GPA, X86_ACPI_SIZE, X86_ACPI_GPA, &rsdp, NULL) == 0);
    CHECK(x86_initrd_gpa(&d, &k, 8 << 20, &initrd) == 0 && initrd >= k.hi);
    d.initrd_gpa = initrd;
    d.initrd_size = 8 << 20;
    CHECK(x86_boot_pvh(&d, &k, rsdp, &m, &regs) == 0 && regs.rip == k.pvh_entry);
    /* a partly copied kernel file: every cut is refused, never read past */
    for (size_t cut = 0; cut < len && cut < 65536; cut += 977) {
        uint8_t *part = malloc(cut ? cut : 1);
        memcpy(part, img, cut);
        if (x86_load_elf(part, cut, &m, &k) != -ENOEXEC) {
            failed++;
            printf("FAIL truncated vmlinux of %zu bytes was not refused\n", cut);
        } else {
            passed++;
        }
        free(part);
    }
    free(img);
    free(ram);
    return 0;
}

static int run_image(const char *file)
{
    size_t len, used;
    uint8_t *img = read_file(file, &len);
    uint8_t *ram = calloc(1, 256 << 20);
    struct boot_mem m = {ram, 0x80000000ULL, 256 << 20};
    struct arm64_boot b;
    struct boot_desc d;
    CHECK(img && ram);
    if (!img || !ram)
        return 1;
    int r = arm64_load_image(img, len, &m, 8 << 20, &b);
    CHECK(r == 0);
    if (r)
        printf("load: %s\n", vmm_last_error());
    CHECK(!memcmp(ram + (b.kernel_gpa - m.gpa), img, len));
    printf("kernel=0x%llx end=0x%llx dtb=0x%llx initrd=0x%llx pc=0x%llx x0=0x%llx\n",
           (unsigned long long)b.kernel_gpa, (unsigned long long)b.kernel_end,
           (unsigned long long)b.dtb_gpa, (unsigned long long)b.initrd_gpa,
           (unsigned long long)b.pc, (unsigned long long)b.x0);
    arm_desc(&d, 2);
    d.mem_size[0] = 256 << 20;
    d.initrd_gpa = b.initrd_gpa;
    d.initrd_size = 8 << 20;
    CHECK(arm64_fdt_build(&d, ram + (b.dtb_gpa - m.gpa), ARM64_DTB_MAX, &used) == 0);
    free(img);
    free(ram);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "run"))
        run_all(argv[2]);
    else if (argc == 3 && !strcmp(argv[1], "vmlinux"))
        run_vmlinux(argv[2]);
    else if (argc == 3 && !strcmp(argv[1], "image"))
        run_image(argv[2]);
    else {
        fprintf(stderr, "usage: %s run OUTDIR | vmlinux FILE | image FILE\n", argv[0]);
        return 2;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
