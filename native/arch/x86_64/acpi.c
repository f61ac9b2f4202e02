/*
 * acpi.c - the ACPI tables a stock x86_64 kernel needs to find everything: RSDP (v2) -> XSDT ->
 * FADT (hardware-reduced, -> DSDT) and MADT. Debian's amd64 kernels find virtio-mmio devices only
 * through ACPI ("LNRO0005" in the DSDT), so this is how the guest learns about its disks, vsock
 * and rng. Hardware-reduced ACPI: no PM blocks, no SCI, no legacy PIC or PIT for the kernel to
 * use; power-off through the FADT sleep registers when the VMM provides them; VMGenID through an
 * ACPI Generic Event Device. The layout follows Firecracker and cloud-hypervisor; the AML is
 * emitted by hand below (a few opcodes, ACPI 6.5 chapter 20). All integers are little endian.
 */
#include <errno.h>
#include <string.h>
#include "../boot.h"
#include "../../internal.h"

#define OEM_ID "VMMD  "             /* 6 bytes */
#define CREATOR_ID "VMMD"
#define HYPERVISOR_ID "VMMDKVM\0"  /* FADT hypervisor vendor identity, 8 bytes */

#define HDR_LEN 36                 /* every system description table's header */
#define RSDP_LEN 36
#define FADT_LEN 276               /* revision 6, minor 5 (ACPI 6.5) */
#define MADT_LAPIC_LEN 8

/* FADT flags and IA-PC boot architecture flags (ACPI 6.5 5.2.9) */
#define FADT_PWR_BUTTON (1u << 4)
#define FADT_SLP_BUTTON (1u << 5)
#define FADT_HW_REDUCED (1u << 20)
#define IAPC_VGA_NOT_PRESENT (1u << 2)
#define IAPC_NO_CMOS_RTC (1u << 5)

/* ---- a byte writer that remembers the first overflow ---- */
struct out {
    uint8_t *buf;
    size_t cap, len;
    int full;
};

static void put(struct out *o, const void *p, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = 1;
        return;
    }
    memcpy(o->buf + o->len, p, n);
    o->len += n;
}
static void put8(struct out *o, uint8_t v) { put(o, &v, 1); }
static void put16(struct out *o, uint16_t v) { uint8_t b[2] = {v, v >> 8}; put(o, b, 2); }
static void put32(struct out *o, uint32_t v) { put16(o, v); put16(o, v >> 16); }
static void put64(struct out *o, uint64_t v) { put32(o, (uint32_t)v); put32(o, v >> 32); }
static void putstr(struct out *o, const char *s, size_t n) { put(o, s, n); }

static void le16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void le32(uint8_t *p, uint32_t v) { le16(p, v); le16(p + 2, v >> 16); }
static void le64(uint8_t *p, uint64_t v) { le32(p, (uint32_t)v); le32(p + 4, v >> 32); }

static uint8_t checksum(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    while (n--)
        s += *p++;
    return (uint8_t)-s;
}

/* ---- AML (ACPI 6.5 chapter 20) ---- */
#define AML_ZERO 0x00
#define AML_ONE 0x01
#define AML_NAME 0x08
#define AML_BYTE 0x0a
#define AML_WORD 0x0b
#define AML_DWORD 0x0c
#define AML_STRING 0x0d
#define AML_QWORD 0x0e
#define AML_SCOPE 0x10
#define AML_BUFFER 0x11
#define AML_PACKAGE 0x12
#define AML_METHOD 0x14
#define AML_ROOT 0x5c
#define AML_DUAL_NAME 0x2e
#define AML_EXT 0x5b
#define AML_DEVICE 0x82            /* after AML_EXT */
#define AML_ARG0 0x68
#define AML_NOTIFY 0x86
#define AML_LEQUAL 0x93
#define AML_IF 0xa0

static void aml_int(struct out *o, uint64_t v)
{
    if (v == 0) put8(o, AML_ZERO);
    else if (v == 1) put8(o, AML_ONE);
    else if (v <= 0xff) { put8(o, AML_BYTE); put8(o, (uint8_t)v); }
    else if (v <= 0xffff) { put8(o, AML_WORD); put16(o, (uint16_t)v); }
    else if (v <= 0xffffffffu) { put8(o, AML_DWORD); put32(o, (uint32_t)v); }
    else { put8(o, AML_QWORD); put64(o, v); }
}

static void aml_string(struct out *o, const char *s)
{
    put8(o, AML_STRING);
    putstr(o, s, strlen(s) + 1);
}

/* A NameSeg is exactly four characters: "_HID", "V000". */
static void aml_nameseg(struct out *o, const char *seg) { putstr(o, seg, 4); }

static void aml_name(struct out *o, const char *seg)
{
    put8(o, AML_NAME);
    aml_nameseg(o, seg);
}

/* EISA id "PNP0501" as the compressed 32-bit integer (ACPI 6.5 19.6.35, EISAID macro). */
static void aml_eisaid(struct out *o, const char *id)
{
    static const char hex[] = "0123456789ABCDEF";
    uint32_t v = (uint32_t)((id[0] - 0x40) & 0x1f) << 26 | (uint32_t)((id[1] - 0x40) & 0x1f) << 21 |
                 (uint32_t)((id[2] - 0x40) & 0x1f) << 16;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)(strchr(hex, id[3 + i]) - hex) << (12 - 4 * i);
    put8(o, AML_DWORD);
    put8(o, v >> 24); put8(o, v >> 16); put8(o, v >> 8); put8(o, v);  /* stored big endian */
}

/* PkgLength covers itself and what follows up to the end of the object: content is written
 * first, then moved up by the 1..4 bytes its encoding takes (ACPI 6.5 20.2.4). */
static size_t pkg_begin(struct out *o) { return o->len; }

static void pkg_end(struct out *o, size_t start)
{
    if (o->full)
        return;
    size_t body = o->len - start, n = body + 1 < 0x40 ? 1 : body + 2 < 0x1000 ? 2
                                      : body + 3 < 0x100000 ? 3 : 4;
    size_t total = body + n;
    if (total >= 0x10000000 || n > o->cap - o->len) {
        o->full = 1;
        return;
    }
    memmove(o->buf + start + n, o->buf + start, body);
    uint8_t *p = o->buf + start;
    if (n == 1) {
        p[0] = (uint8_t)total;
    } else {
        p[0] = (uint8_t)(((n - 1) << 6) | (total & 0xf));
        for (size_t i = 1; i < n; i++)
            p[i] = (uint8_t)(total >> (4 + 8 * (i - 1)));
    }
    o->len += n;
}

/* Resource descriptors (ACPI 6.5 6.4) */
static void res_memory32_fixed(struct out *o, uint32_t base, uint32_t size)
{
    put8(o, 0x86); put16(o, 9);
    put8(o, 1);                    /* read-write */
    put32(o, base); put32(o, size);
}

static void res_interrupt(struct out *o, uint32_t gsi, int level)
{
    put8(o, 0x89); put16(o, 6);
    /* consumer; edge (bit 1) unless level; active high; exclusive; not wake capable */
    put8(o, (uint8_t)(0x01 | (level ? 0 : 0x02)));
    put8(o, 1);
    put32(o, gsi);
}

static void res_io(struct out *o, uint16_t base, uint8_t len)
{
    put8(o, 0x47);
    put8(o, 1);                    /* 16-bit decode */
    put16(o, base); put16(o, base);
    put8(o, 1); put8(o, len);
}

/* Name (_CRS, ResourceTemplate () { ... }) from descriptors already written to `res`. */
static void aml_crs(struct out *o, const struct out *res)
{
    aml_name(o, "_CRS");
    put8(o, AML_BUFFER);
    size_t p = pkg_begin(o);
    aml_int(o, res->len + 2);
    put(o, res->buf, res->len);
    put8(o, 0x79); put8(o, 0);     /* end tag; checksum 0 = not checked */
    pkg_end(o, p);
}

static void device_begin(struct out *o, const char *seg, size_t *p)
{
    put8(o, AML_EXT); put8(o, AML_DEVICE);
    *p = pkg_begin(o);
    aml_nameseg(o, seg);
}

static int has_irq(const struct boot_dev *v) { return !(v->flags & BOOT_IRQ_NONE); }

static int dsdt_virtio(struct out *o, const struct boot_dev *v, int n)
{
    uint8_t rb[32];
    struct out res = {rb, sizeof(rb), 0, 0};
    char seg[8];
    size_t p;
    if (v->base > 0xffffffffu || v->size > 0x100000000ull - v->base)
        return vmm_err(EINVAL, "ACPI: virtio-mmio window 0x%llx+0x%llx must lie below 4 GiB",
                       (unsigned long long)v->base, (unsigned long long)v->size);
    if (!has_irq(v))
        return vmm_err(EINVAL, "ACPI: virtio-mmio device at 0x%llx has no interrupt",
                       (unsigned long long)v->base);
    seg[0] = 'V';                  /* V000..V031 (BOOT_MAX_DEVS) */
    seg[1] = (char)('0' + n / 100 % 10);
    seg[2] = (char)('0' + n / 10 % 10);
    seg[3] = (char)('0' + n % 10);
    seg[4] = 0;
    device_begin(o, seg, &p);
    aml_name(o, "_HID"); aml_string(o, "LNRO0005");
    aml_name(o, "_UID"); aml_int(o, (uint64_t)n);
    aml_name(o, "_CCA"); aml_int(o, 1);          /* cache coherent DMA */
    res_memory32_fixed(&res, (uint32_t)v->base, (uint32_t)v->size);
    res_interrupt(&res, v->irq, v->flags & BOOT_IRQ_LEVEL);
    aml_crs(o, &res);
    pkg_end(o, p);
    return 0;
}

static int dsdt_uart(struct out *o, const struct boot_dev *v, int n)
{
    uint8_t rb[32];
    struct out res = {rb, sizeof(rb), 0, 0};
    char seg[8];
    size_t p;
    if (v->size > 255)
        return vmm_err(EINVAL, "ACPI: UART at port 0x%llx spans %llu ports",
                       (unsigned long long)v->base, (unsigned long long)v->size);
    if (n >= 4)
        return vmm_err(EINVAL, "ACPI: at most 4 UARTs (COM1..COM4)");
    memcpy(seg, "COM1", 5);
    seg[3] = (char)('1' + n);
    device_begin(o, seg, &p);
    aml_name(o, "_HID"); aml_eisaid(o, "PNP0501");  /* 16550A-compatible */
    aml_name(o, "_UID"); aml_int(o, (uint64_t)n);
    res_io(&res, (uint16_t)v->base, (uint8_t)v->size);
    if (has_irq(v))
        res_interrupt(&res, v->irq, v->flags & BOOT_IRQ_LEVEL);
    aml_crs(o, &res);
    pkg_end(o, p);
    return 0;
}

/* Linux's vmgenid driver matches _HID "VMGENCTR" (Firecracker's) and evaluates ADDR, a package
 * of the id's address low and high halves; _CID and _DDN name it as QEMU and Hyper-V do. */
static void dsdt_vmgenid(struct out *o, const struct boot_dev *v)
{
    size_t p, q;
    device_begin(o, "VGEN", &p);
    aml_name(o, "_HID"); aml_string(o, "VMGENCTR");
    aml_name(o, "_CID"); aml_string(o, "VM_Gen_Counter");
    aml_name(o, "_DDN"); aml_string(o, "VM_Gen_Counter");
    aml_name(o, "ADDR");
    put8(o, AML_PACKAGE);
    q = pkg_begin(o);
    put8(o, 2);
    aml_int(o, v->base & 0xffffffffu);
    aml_int(o, v->base >> 32);
    pkg_end(o, q);
    pkg_end(o, p);
}

/* Generic Event Device: its interrupt runs _EVT(gsi), which tells the VMGenID device that the
 * generation changed (Notify 0x80), so the kernel reseeds its RNG right after a restore. */
static void dsdt_ged(struct out *o, const struct boot_dev *gen)
{
    uint8_t rb[16];
    struct out res = {rb, sizeof(rb), 0, 0};
    size_t p, m, i;
    device_begin(o, "GED0", &p);
    aml_name(o, "_HID"); aml_string(o, "ACPI0013");
    aml_name(o, "_UID"); aml_int(o, 0);
    res_interrupt(&res, gen->irq, gen->flags & BOOT_IRQ_LEVEL);
    aml_crs(o, &res);
    put8(o, AML_METHOD);
    m = pkg_begin(o);
    aml_nameseg(o, "_EVT");
    put8(o, 0x09);                 /* one argument, serialized */
    put8(o, AML_IF);
    i = pkg_begin(o);
    put8(o, AML_LEQUAL); put8(o, AML_ARG0); aml_int(o, gen->irq);
    put8(o, AML_NOTIFY);
    put8(o, AML_ROOT); put8(o, AML_DUAL_NAME); aml_nameseg(o, "_SB_"); aml_nameseg(o, "VGEN");
    aml_int(o, 0x80);
    pkg_end(o, i);
    pkg_end(o, m);
    pkg_end(o, p);
}

static void table_header(struct out *o, const char *sig, uint8_t rev, const char *table_id)
{
    putstr(o, sig, 4);
    put32(o, 0);                   /* length, patched by table_end */
    put8(o, rev);
    put8(o, 0);                    /* checksum, patched by table_end */
    putstr(o, OEM_ID, 6);
    putstr(o, table_id, 8);
    put32(o, 1);                   /* OEM revision */
    putstr(o, CREATOR_ID, 4);
    put32(o, 1);                   /* creator revision */
}

static void table_end(struct out *o, size_t start)
{
    if (o->full)
        return;
    uint8_t *t = o->buf + start;
    le32(t + 4, (uint32_t)(o->len - start));
    t[9] = 0;
    t[9] = checksum(t, o->len - start);
}

static void align(struct out *o, size_t a)
{
    while (!o->full && o->len % a)
        put8(o, 0);
}

static int build_dsdt(const struct boot_desc *d, struct out *o)
{
    const struct boot_dev *gen = NULL, *sleep = NULL;
    int nvirtio = 0, nuart = 0, r;
    size_t t = o->len, s;
    table_header(o, "DSDT", 2, "VMMDDSDT");    /* revision 2: 64-bit integers */
    put8(o, AML_SCOPE);
    s = pkg_begin(o);
    put8(o, AML_ROOT); aml_nameseg(o, "_SB_");
    for (int i = 0; i < d->ndevs; i++) {
        const struct boot_dev *v = &d->devs[i];
        switch (v->kind) {
        case BOOT_DEV_VIRTIO_MMIO:
            if ((r = dsdt_virtio(o, v, nvirtio++)))
                return r;
            break;
        case BOOT_DEV_UART_16550:
            if ((r = dsdt_uart(o, v, nuart++)))
                return r;
            break;
        case BOOT_DEV_VMGENID:
            if (gen)
                return vmm_err(EINVAL, "ACPI: more than one VMGenID device");
            gen = v;
            dsdt_vmgenid(o, v);
            break;
        case BOOT_DEV_ACPI_SLEEP:
            if (sleep)
                return vmm_err(EINVAL, "ACPI: more than one sleep device");
            sleep = v;
            break;
        default:
            return vmm_err(EINVAL, "ACPI: device %d (kind %u) has no x86_64 description", i,
                           v->kind);
        }
    }
    if (gen && has_irq(gen))
        dsdt_ged(o, gen);
    pkg_end(o, s);
    if (sleep) {                   /* \_S5: SLP_TYP 5 for the FADT sleep control register */
        size_t p;
        aml_name(o, "_S5_");
        put8(o, AML_PACKAGE);
        p = pkg_begin(o);
        put8(o, 4);
        aml_int(o, 5); aml_int(o, 0); aml_int(o, 0); aml_int(o, 0);
        pkg_end(o, p);
    }
    table_end(o, t);
    return 0;
}

/* Generic Address Structure: one byte in I/O space */
static void gas_io8(uint8_t *p, uint64_t port)
{
    p[0] = 1;                      /* system I/O */
    p[1] = 8;                      /* bit width */
    p[2] = 0;                      /* bit offset */
    p[3] = 1;                      /* byte access */
    le64(p + 4, port);
}

static void build_fadt(const struct boot_desc *d, struct out *o, uint64_t dsdt)
{
    size_t t = o->len;
    uint8_t f[FADT_LEN - HDR_LEN];
    memset(f, 0, sizeof(f));
    table_header(o, "FACP", 6, "VMMDFACP");
    /* offsets below are the ACPI spec's minus the 36-byte header */
    le16(f + 109 - HDR_LEN, IAPC_VGA_NOT_PRESENT | IAPC_NO_CMOS_RTC);  /* no i8042, no legacy */
    le32(f + 112 - HDR_LEN, FADT_HW_REDUCED | FADT_PWR_BUTTON | FADT_SLP_BUTTON);
    f[131 - HDR_LEN] = 5;          /* FADT minor version: ACPI 6.5 */
    le64(f + 140 - HDR_LEN, dsdt); /* X_DSDT */
    for (int i = 0; i < d->ndevs; i++)
        if (d->devs[i].kind == BOOT_DEV_ACPI_SLEEP) {
            gas_io8(f + 244 - HDR_LEN, d->devs[i].base);       /* SLEEP_CONTROL_REG */
            gas_io8(f + 256 - HDR_LEN, d->devs[i].base + 1);   /* SLEEP_STATUS_REG */
        }
    memcpy(f + 268 - HDR_LEN, HYPERVISOR_ID, 8);
    put(o, f, sizeof(f));
    table_end(o, t);
}

/* One Local APIC per vCPU (APIC id = vCPU index, as KVM numbers them) and the IO-APIC; no
 * interrupt source overrides: without a PIC (hardware-reduced) the kernel maps no ISA IRQs, and
 * every device's GSI carries its own trigger and polarity in its _CRS. */
static void build_madt(const struct boot_desc *d, struct out *o)
{
    size_t t = o->len;
    table_header(o, "APIC", 6, "VMMDAPIC");
    put32(o, (uint32_t)X86_LAPIC_GPA);
    put32(o, 0);                   /* flags: no PC-AT dual 8259 */
    for (uint32_t i = 0; i < d->vcpus; i++) {
        put8(o, 0); put8(o, MADT_LAPIC_LEN);
        put8(o, (uint8_t)i);       /* ACPI processor UID */
        put8(o, (uint8_t)i);       /* APIC id */
        put32(o, 1);               /* enabled */
    }
    put8(o, 1); put8(o, 12);       /* IO-APIC */
    put8(o, 0); put8(o, 0);        /* id 0, reserved */
    put32(o, (uint32_t)X86_IOAPIC_GPA);
    put32(o, 0);                   /* GSI base */
    table_end(o, t);
}

int x86_acpi_build(const struct boot_desc *d, uint8_t *buf, size_t len, uint64_t gpa,
                   uint64_t *rsdp_gpa, size_t *used)
{
    struct out o = {buf, len, 0, 0};
    int r = boot_desc_check(d, BOOT_ARCH_X86_64);
    if (r)
        return r;
    if (gpa & 15)
        return vmm_err(EINVAL, "ACPI: tables at 0x%llx, the RSDP needs 16-byte alignment",
                       (unsigned long long)gpa);
    if (len > (1ull << 32) || gpa > (1ull << 32) - len)
        return vmm_err(EINVAL, "ACPI: tables must lie below 4 GiB");
    /* RSDP first, then the tables 16-byte aligned; the RSDP's XSDT pointer is patched last */
    put(&o, "RSD PTR ", 8);
    put8(&o, 0);
    putstr(&o, OEM_ID, 6);
    put8(&o, 2);                   /* revision 2: XSDT */
    put32(&o, 0);                  /* no RSDT */
    put32(&o, RSDP_LEN);
    put64(&o, 0);                  /* XSDT, below */
    put8(&o, 0);                   /* extended checksum, below */
    put8(&o, 0); put8(&o, 0); put8(&o, 0);

    align(&o, 16);
    uint64_t dsdt = gpa + o.len;
    if ((r = build_dsdt(d, &o)))
        return r;
    align(&o, 16);
    uint64_t fadt = gpa + o.len;
    build_fadt(d, &o, dsdt);
    align(&o, 16);
    uint64_t madt = gpa + o.len;
    build_madt(d, &o);
    align(&o, 16);
    size_t xsdt_off = o.len;
    table_header(&o, "XSDT", 1, "VMMDXSDT");
    put64(&o, fadt);
    put64(&o, madt);
    table_end(&o, xsdt_off);
    if (o.full)
        return vmm_err(ENOSPC, "ACPI: tables do not fit in %zu bytes", len);
    le64(buf + 24, gpa + xsdt_off);
    buf[8] = checksum(buf, 20);    /* ACPI 1.0 part */
    buf[32] = checksum(buf, RSDP_LEN);
    *rsdp_gpa = gpa;
    if (used)
        *used = o.len;
    return 0;
}
