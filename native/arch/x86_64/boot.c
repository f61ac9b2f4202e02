/*
 * boot.c - loading a stock x86_64 vmlinux and the structures its boot protocols read.
 *
 * PVH first (xen/include/public/arch-x86/hvm/start_info.h, Linux arch/x86/platform/pvh): the
 * kernel's ELF note XEN_ELFNOTE_PHYS32_ENTRY names a 32-bit entry that takes hvm_start_info in
 * ebx, with flat 4 GiB segments and paging off. The 64-bit Linux boot protocol
 * (Documentation/x86/boot.rst) is the fallback: zero page in rsi, long mode with an identity map.
 * The kernel file is untrusted input: every offset and size is checked before it is used.
 */
#include <elf.h>
#include <errno.h>
#include <string.h>
#include "../boot.h"
#include "../../internal.h"

#define PVH_MAGIC 0x336ec578u
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define E820_RAM 1
#define E820_RESERVED 2
#define MAX_PHDRS 64
#define PAGE 4096ULL

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* [off, off + n) inside [0, len) without wrapping */
static int fits(uint64_t off, uint64_t n, uint64_t len) { return n <= len && off <= len - n; }

/* Walks the notes of one PT_NOTE segment for Xen's PHYS32_ENTRY. 1 found, 0 not, <0 bad. */
static int find_pvh_note(const uint8_t *p, uint64_t n, uint64_t *entry)
{
    uint64_t off = 0;
    while (off < n && n - off >= 12) {
        uint32_t namesz = rd32(p + off), descsz = rd32(p + off + 4), type = rd32(p + off + 8);
        uint64_t name = off + 12, desc = name + (((uint64_t)namesz + 3) & ~3ULL);
        uint64_t next = desc + (((uint64_t)descsz + 3) & ~3ULL);
        if (!fits(name, namesz, n) || !fits(desc, descsz, n) || next > n + 3)
            return vmm_err(ENOEXEC, "kernel: ELF note at +%llu overruns its segment",
                           (unsigned long long)off);
        if (namesz == 4 && !memcmp(p + name, "Xen", 4) && type == XEN_ELFNOTE_PHYS32_ENTRY) {
            if (descsz == 4)
                *entry = rd32(p + desc);
            else if (descsz == 8)
                *entry = rd64(p + desc);
            else
                return vmm_err(ENOEXEC, "kernel: PVH entry note of %u bytes", descsz);
            return 1;
        }
        off = next;
    }
    return 0;
}

static int elf_header(const uint8_t *b, size_t len, Elf64_Ehdr *eh)
{
    if (len < sizeof(*eh))
        return vmm_err(ENOEXEC, "kernel: %zu bytes, shorter than an ELF header", len);
    memcpy(eh, b, sizeof(*eh));
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG))
        return vmm_err(ENOEXEC, "kernel: not an ELF file (a bzImage must be unpacked to vmlinux)");
    if (eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB ||
        eh->e_machine != EM_X86_64 || eh->e_type != ET_EXEC)
        return vmm_err(ENOEXEC, "kernel: not a little-endian ELF64 x86_64 executable");
    if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0 || eh->e_phnum > MAX_PHDRS)
        return vmm_err(ENOEXEC, "kernel: %u program headers of %u bytes", eh->e_phnum,
                       eh->e_phentsize);
    if (!fits(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr), len))
        return vmm_err(ENOEXEC, "kernel: program headers past the end of the file");
    return 0;
}

int x86_load_elf(const void *img, size_t len, const struct boot_mem *m, struct x86_kernel *k)
{
    const uint8_t *b = img;
    Elf64_Ehdr eh;
    Elf64_Phdr ph[MAX_PHDRS];
    int r = elf_header(b, len, &eh), nload = 0, found = 0;
    if (r)
        return r;
    memcpy(ph, b + eh.e_phoff, eh.e_phnum * sizeof(Elf64_Phdr));
    memset(k, 0, sizeof(*k));
    k->lo = UINT64_MAX;
    /* check every segment before copying any */
    for (int i = 0; i < eh.e_phnum; i++) {
        const Elf64_Phdr *p = &ph[i];
        if (p->p_type == PT_NOTE && !found) {
            if (!fits(p->p_offset, p->p_filesz, len))
                return vmm_err(ENOEXEC, "kernel: note segment %d past the end of the file", i);
            if ((r = find_pvh_note(b + p->p_offset, p->p_filesz, &k->pvh_entry)) < 0)
                return r;
            found = r;
        }
        if (p->p_type != PT_LOAD || p->p_memsz == 0)
            continue;
        if (p->p_filesz > p->p_memsz || !fits(p->p_offset, p->p_filesz, len))
            return vmm_err(ENOEXEC, "kernel: segment %d (file 0x%llx+0x%llx) is past the end of "
                           "the %zu-byte file", i, (unsigned long long)p->p_offset,
                           (unsigned long long)p->p_filesz, len);
        if (!boot_mem_at(m, p->p_paddr, p->p_memsz))
            return vmm_err(ENOEXEC, "kernel: segment %d at 0x%llx+0x%llx is outside guest RAM "
                           "0x%llx+0x%llx", i, (unsigned long long)p->p_paddr,
                           (unsigned long long)p->p_memsz, (unsigned long long)m->gpa,
                           (unsigned long long)m->size);
        if (p->p_paddr < X86_HIMEM_GPA)
            return vmm_err(ENOEXEC, "kernel: segment %d at 0x%llx would overwrite the boot "
                           "tables below 1 MiB", i, (unsigned long long)p->p_paddr);
        for (int j = 0; j < i; j++)
            if (ph[j].p_type == PT_LOAD && ph[j].p_memsz &&
                p->p_paddr < ph[j].p_paddr + ph[j].p_memsz && ph[j].p_paddr < p->p_paddr + p->p_memsz)
                return vmm_err(ENOEXEC, "kernel: segments %d and %d overlap", j, i);
        if (p->p_paddr < k->lo)
            k->lo = p->p_paddr;
        if (p->p_paddr + p->p_memsz > k->hi)
            k->hi = p->p_paddr + p->p_memsz;
        nload++;
    }
    if (!nload)
        return vmm_err(ENOEXEC, "kernel: no loadable segment");
    if (found && (k->pvh_entry < k->lo || k->pvh_entry >= k->hi || k->pvh_entry >= (1ULL << 32)))
        return vmm_err(ENOEXEC, "kernel: PVH entry 0x%llx is outside the loaded kernel",
                       (unsigned long long)k->pvh_entry);
    if (eh.e_entry >= k->lo && eh.e_entry < k->hi)
        k->entry64 = eh.e_entry;
    if (!found && !k->entry64)
        return vmm_err(ENOEXEC, "kernel: neither a PVH note nor an entry inside the kernel");
    for (int i = 0; i < eh.e_phnum; i++) {
        const Elf64_Phdr *p = &ph[i];
        if (p->p_type != PT_LOAD || p->p_memsz == 0)
            continue;
        uint8_t *dst = boot_mem_at(m, p->p_paddr, p->p_memsz);
        memcpy(dst, b + p->p_offset, p->p_filesz);
        memset(dst + p->p_filesz, 0, p->p_memsz - p->p_filesz);
    }
    return 0;
}

/* Region 0 must start at 0 and reach past 1 MiB: every boot structure lives there. */
static int low_region(const struct boot_desc *d)
{
    if (d->mem_gpa[0] != 0 || d->mem_size[0] < X86_HIMEM_GPA)
        return vmm_err(EINVAL, "boot: x86_64 RAM region 0 must start at 0 and cover 1 MiB");
    return 0;
}

int x86_initrd_gpa(const struct boot_desc *d, const struct x86_kernel *k, uint64_t size,
                   uint64_t *gpa)
{
    int r = boot_desc_check(d, BOOT_ARCH_X86_64);
    if (r || (r = low_region(d)))
        return r;
    uint64_t top = d->mem_size[0];
    if (top > (1ULL << 32))
        top = 1ULL << 32;
    if (d->mmio_size && d->mmio_gpa < top)
        top = d->mmio_gpa;
    uint64_t floor = k->hi > X86_HIMEM_GPA ? k->hi : X86_HIMEM_GPA;
    if (size == 0 || size > top || ((top - size) & ~(PAGE - 1)) < floor)
        return vmm_err(ENOSPC, "boot: an initrd of %llu bytes does not fit between the kernel "
                       "(ends 0x%llx) and 0x%llx", (unsigned long long)size,
                       (unsigned long long)floor, (unsigned long long)top);
    *gpa = (top - size) & ~(PAGE - 1);
    return 0;
}

static int add_entry(struct x86_memmap_entry *out, int n, int max, uint64_t a, uint64_t s,
                     uint32_t type)
{
    if (n < 0 || s == 0)
        return n;
    if (n >= max)
        return vmm_err(ENOSPC, "boot: memory map has more than %d entries", max);
    /* insertion keeps it sorted by address */
    int i = n;
    while (i > 0 && out[i - 1].addr > a) {
        out[i] = out[i - 1];
        i--;
    }
    out[i] = (struct x86_memmap_entry){a, s, type};
    return n + 1;
}

int x86_memmap(const struct boot_desc *d, struct x86_memmap_entry *out, int max)
{
    int r = boot_desc_check(d, BOOT_ARCH_X86_64), n = 0;
    if (r || (r = low_region(d)))
        return r;
    /* RAM below the EBDA, the reserved stretch to 1 MiB (boot tables, ACPI, VMGenID), RAM on */
    n = add_entry(out, n, max, 0, X86_RESERVED_GPA, E820_RAM);
    n = add_entry(out, n, max, X86_RESERVED_GPA, X86_HIMEM_GPA - X86_RESERVED_GPA, E820_RESERVED);
    n = add_entry(out, n, max, X86_HIMEM_GPA, d->mem_size[0] - X86_HIMEM_GPA, E820_RAM);
    for (int i = 1; i < d->nmem; i++)
        n = add_entry(out, n, max, d->mem_gpa[i], d->mem_size[i], E820_RAM);
    if (d->mmio_size) {
        for (int i = 0; i < d->nmem; i++)
            if (d->mmio_gpa < d->mem_gpa[i] + d->mem_size[i] && d->mem_gpa[i] < d->mmio_gpa + d->mmio_size)
                return vmm_err(EINVAL, "boot: the MMIO hole overlaps RAM region %d", i);
        n = add_entry(out, n, max, d->mmio_gpa, d->mmio_size, E820_RESERVED);
    }
    return n;
}

/* GDT entry from flags (access byte + granularity nibble, Firecracker's gdt_entry form) */
static uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit)
{
    return ((uint64_t)(base & 0xff000000u) << 32) | ((uint64_t)(flags & 0xf0ffu) << 40) |
           ((uint64_t)(limit & 0x000f0000u) << 32) | ((uint64_t)(base & 0x00ffffffu) << 16) |
           (limit & 0xffffu);
}

static struct x86_seg seg_of(uint64_t e, uint16_t selector)
{
    struct x86_seg s = {0};
    s.base = ((e >> 16) & 0xffffff) | ((e >> 32) & 0xff000000u);
    s.limit = (uint32_t)((e & 0xffff) | ((e >> 32) & 0xf0000));
    s.g = (e >> 55) & 1;
    if (s.g)
        s.limit = (s.limit << 12) | 0xfff;
    s.selector = selector;
    s.type = (e >> 40) & 0xf;
    s.s = (e >> 44) & 1;
    s.dpl = (e >> 45) & 3;
    s.present = (e >> 47) & 1;
    s.l = (e >> 53) & 1;
    s.db = (e >> 54) & 1;
    return s;
}

/* Selectors 0x10 code and 0x18 data as boot.rst's __BOOT_CS/__BOOT_DS, 0x20 the TSS. */
static int write_gdt(const struct boot_mem *low, int long_mode, struct x86_boot_regs *regs)
{
    uint64_t gdt[5] = {0, 0,
                       long_mode ? gdt_entry(0xa09b, 0, 0xfffff) : gdt_entry(0xc09b, 0, 0xfffff),
                       gdt_entry(0xc093, 0, 0xfffff),
                       long_mode ? gdt_entry(0x808b, 0, 0xfffff) : gdt_entry(0x008b, 0, 0x67)};
    uint8_t *g = boot_mem_at(low, X86_GDT_GPA, sizeof(gdt) + 8);
    if (!g)
        return vmm_err(EINVAL, "boot: no RAM for the GDT at 0x%llx", (unsigned long long)X86_GDT_GPA);
    for (int i = 0; i < 5; i++)
        wr64(g + 8 * i, gdt[i]);
    wr64(g + sizeof(gdt), 0);      /* the empty IDT right after */
    regs->cs = seg_of(gdt[2], 0x10);
    regs->ds = seg_of(gdt[3], 0x18);
    regs->tr = seg_of(gdt[4], 0x20);
    regs->gdt_base = X86_GDT_GPA;
    regs->gdt_limit = sizeof(gdt) - 1;
    regs->idt_base = X86_IDT_GPA;
    regs->idt_limit = 7;
    regs->rflags = 2;
    return 0;
}

static int write_cmdline(const struct boot_desc *d, const struct boot_mem *low, uint32_t *len)
{
    const char *c = d->cmdline ? d->cmdline : "";
    size_t n = strlen(c) + 1;      /* boot_desc_check bounded it */
    uint8_t *p = boot_mem_at(low, X86_CMDLINE_GPA, BOOT_CMDLINE_MAX);
    if (!p)
        return vmm_err(EINVAL, "boot: no RAM for the command line");
    memset(p, 0, BOOT_CMDLINE_MAX);
    memcpy(p, c, n);
    *len = (uint32_t)n;
    return 0;
}

static int common_checks(const struct boot_desc *d, const struct boot_mem *low)
{
    int r = boot_desc_check(d, BOOT_ARCH_X86_64);
    if (r || (r = low_region(d)))
        return r;
    if (low->gpa != 0 || low->size < X86_HIMEM_GPA)
        return vmm_err(EINVAL, "boot: the low memory view must start at 0 and cover 1 MiB");
    if (d->initrd_size && d->initrd_gpa + d->initrd_size > (1ULL << 32))
        return vmm_err(EINVAL, "boot: the initrd must end below 4 GiB");
    return 0;
}

int x86_boot_pvh(const struct boot_desc *d, const struct x86_kernel *k, uint64_t rsdp_gpa,
                 const struct boot_mem *low, struct x86_boot_regs *regs)
{
    struct x86_memmap_entry mm[X86_MEMMAP_MAX];
    uint32_t cmdlen;
    int r = common_checks(d, low), n;
    if (r)
        return r;
    if (!k->pvh_entry)
        return vmm_err(ENOEXEC, "boot: the kernel has no PVH entry note (CONFIG_PVH)");
    if ((n = x86_memmap(d, mm, X86_MEMMAP_MAX)) < 0)
        return n;
    memset(regs, 0, sizeof(*regs));
    if ((r = write_gdt(low, 0, regs)) || (r = write_cmdline(d, low, &cmdlen)))
        return r;
    uint8_t *si = boot_mem_at(low, X86_PVH_INFO_GPA, 0x40 + 32);
    uint8_t *mp = boot_mem_at(low, X86_MEMMAP_GPA, (uint64_t)X86_MEMMAP_MAX * 24);
    if (!si || !mp)
        return vmm_err(EINVAL, "boot: no RAM for the PVH start info");
    memset(si, 0, 0x40 + 32);
    memset(mp, 0, (size_t)X86_MEMMAP_MAX * 24);
    for (int i = 0; i < n; i++) {  /* hvm_memmap_table_entry: addr, size, type, reserved */
        wr64(mp + 24 * i, mm[i].addr);
        wr64(mp + 24 * i + 8, mm[i].size);
        wr32(mp + 24 * i + 16, mm[i].type);
    }
    wr32(si + 0, PVH_MAGIC);
    wr32(si + 4, 1);               /* version 1: with memmap */
    wr32(si + 8, 0);               /* flags */
    if (d->initrd_size) {          /* one hvm_modlist_entry: paddr, size, cmdline, reserved */
        wr32(si + 12, 1);
        wr64(si + 16, X86_PVH_MODLIST_GPA);
        wr64(si + 0x40, d->initrd_gpa);
        wr64(si + 0x48, d->initrd_size);
    }
    wr64(si + 24, X86_CMDLINE_GPA);
    wr64(si + 32, rsdp_gpa);
    wr64(si + 40, X86_MEMMAP_GPA);
    wr32(si + 48, (uint32_t)n);
    regs->rip = k->pvh_entry;
    regs->rbx = X86_PVH_INFO_GPA;
    regs->cr0 = 0x11;              /* PE | ET: protected mode, paging off */
    return 0;
}

int x86_boot_linux64(const struct boot_desc *d, const struct x86_kernel *k, uint64_t rsdp_gpa,
                     const struct boot_mem *low, struct x86_boot_regs *regs)
{
    struct x86_memmap_entry mm[X86_MEMMAP_MAX];
    uint32_t cmdlen;
    int r = common_checks(d, low), n;
    if (r)
        return r;
    if (!k->entry64)
        return vmm_err(ENOEXEC, "boot: the kernel has no 64-bit entry");
    if (k->hi > (1ULL << 30))
        return vmm_err(EINVAL, "boot: the kernel ends past the 1 GiB identity map");
    if ((n = x86_memmap(d, mm, X86_MEMMAP_MAX)) < 0)
        return n;
    memset(regs, 0, sizeof(*regs));
    if ((r = write_gdt(low, 1, regs)) || (r = write_cmdline(d, low, &cmdlen)))
        return r;
    uint8_t *zp = boot_mem_at(low, X86_ZERO_PAGE_GPA, PAGE);
    uint8_t *pt = boot_mem_at(low, X86_PML4_GPA, 3 * PAGE);
    if (!zp || !pt)
        return vmm_err(EINVAL, "boot: no RAM for the zero page");
    memset(zp, 0, PAGE);
    wr64(zp + 0x070, rsdp_gpa);    /* acpi_rsdp_addr */
    zp[0x1e8] = (uint8_t)n;        /* e820_entries */
    wr16(zp + 0x1fe, 0xaa55);      /* boot_flag */
    wr32(zp + 0x202, 0x53726448);  /* "HdrS" */
    wr16(zp + 0x206, 0x020f);      /* protocol 2.15 */
    zp[0x210] = 0xff;              /* type_of_loader: undefined */
    zp[0x211] = 0x01;              /* loadflags: LOADED_HIGH */
    if (d->initrd_size) {
        wr32(zp + 0x218, (uint32_t)d->initrd_gpa);
        wr32(zp + 0x21c, (uint32_t)d->initrd_size);
    }
    wr32(zp + 0x228, (uint32_t)X86_CMDLINE_GPA);
    wr32(zp + 0x230, 0x01000000);  /* kernel_alignment */
    wr32(zp + 0x238, cmdlen - 1);  /* cmdline_size, without the NUL */
    for (int i = 0; i < n; i++) {  /* boot_e820_entry: addr, size, type (packed, 20 bytes) */
        wr64(zp + 0x2d0 + 20 * i, mm[i].addr);
        wr64(zp + 0x2d0 + 20 * i + 8, mm[i].size);
        wr32(zp + 0x2d0 + 20 * i + 16, mm[i].type);
    }
    /* identity map of the first 1 GiB in 2 MiB pages: PML4 -> PDPT -> PD */
    memset(pt, 0, 3 * PAGE);
    wr64(pt, (X86_PML4_GPA + PAGE) | 3);
    wr64(pt + PAGE, (X86_PML4_GPA + 2 * PAGE) | 3);
    for (uint64_t i = 0; i < 512; i++)
        wr64(pt + 2 * PAGE + 8 * i, (i << 21) | 0x83);
    regs->rip = k->entry64;
    regs->rsi = X86_ZERO_PAGE_GPA;
    regs->rsp = regs->rbp = X86_BOOT_STACK_GPA;
    regs->cr3 = X86_PML4_GPA;
    regs->cr4 = 0x20;              /* PAE */
    regs->cr0 = 0x80000011;        /* PG | ET | PE */
    regs->efer = 0x500;            /* LME | LMA */
    return 0;
}

#if defined(__x86_64__)
static void to_kvm(const struct x86_seg *s, struct kvm_segment *k)
{
    memset(k, 0, sizeof(*k));
    k->base = s->base;
    k->limit = s->limit;
    k->selector = s->selector;
    k->type = s->type;
    k->present = s->present;
    k->dpl = s->dpl;
    k->db = s->db;
    k->s = s->s;
    k->l = s->l;
    k->g = s->g;
    k->unusable = !s->present;
}

void x86_boot_regs_apply(const struct x86_boot_regs *b, struct kvm_regs *r, struct kvm_sregs *s)
{
    memset(r, 0, sizeof(*r));
    r->rip = b->rip;
    r->rsi = b->rsi;
    r->rbx = b->rbx;
    r->rsp = b->rsp;
    r->rbp = b->rbp;
    r->rflags = b->rflags;
    to_kvm(&b->cs, &s->cs);
    to_kvm(&b->ds, &s->ds);
    s->es = s->fs = s->gs = s->ss = s->ds;
    to_kvm(&b->tr, &s->tr);
    s->gdt.base = b->gdt_base;
    s->gdt.limit = b->gdt_limit;
    s->idt.base = b->idt_base;
    s->idt.limit = b->idt_limit;
    s->cr0 = b->cr0;
    s->cr3 = b->cr3;
    s->cr4 = b->cr4;
    s->efer = b->efer;
}
#endif
