/*
 * fdt.c - the flattened device tree an arm64 kernel boots with (x0 at entry).
 *
 * A small self-contained emitter (Devicetree Specification v0.4 chapter 5: header, empty memory
 * reservation map, structure block, strings block; all big endian) instead of libfdt, so the
 * aarch64 cross-build needs no extra library. The nodes follow what Linux's bindings ask for and
 * what Firecracker (arch/aarch64/fdt.rs) and kvmtool (arm/fdt.c) give: cpus with PSCI enable
 * method, memory, chosen, GICv3, the architected timer, PSCI 0.2 over HVC, a fixed clock for the
 * primecell RTC, the 16550 UART, each virtio-mmio window, and VMGenID for kernels that read it
 * from the DT (6.10+; Debian 12's 6.1 reads it from ACPI only).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "../boot.h"
#include "../../internal.h"

#define FDT_MAGIC 0xd00dfeedu
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_END 9
#define FDT_HDR_LEN 40
#define FDT_RSV_LEN 16             /* just the terminating entry */
#define MAX_DEPTH 8
#define STRINGS_MAX 1024

#define PHANDLE_GIC 1
#define PHANDLE_CLK 2
#define GIC_SPI 0
#define GIC_PPI 1
#define IRQ_EDGE_RISING 1
#define IRQ_LEVEL_HIGH 4
#define UART_CLOCK 1843200         /* 115200 baud with divisor 1 */
#define APB_CLOCK 24000000

struct fdt {
    uint8_t *buf;
    size_t cap, off;               /* off: end of the structure block so far */
    char strings[STRINGS_MAX];
    size_t slen;
    int depth, full;
};

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v;
}

static void raw(struct fdt *f, const void *p, size_t n)
{
    if (f->full || n > f->cap - f->off) {
        f->full = 1;
        return;
    }
    memcpy(f->buf + f->off, p, n);
    f->off += n;
    while (f->off % 4 && f->off < f->cap)     /* tokens are 4-byte aligned, zero padded */
        f->buf[f->off++] = 0;
    if (f->off % 4)
        f->full = 1;
}

static void token(struct fdt *f, uint32_t t)
{
    uint8_t b[4];
    be32(b, t);
    raw(f, b, 4);
}

/* offset of `name` in the strings block, added once */
static uint32_t string_off(struct fdt *f, const char *name)
{
    size_t n = strlen(name) + 1;
    for (size_t i = 0; i < f->slen; i += strlen(f->strings + i) + 1)
        if (!strcmp(f->strings + i, name))
            return (uint32_t)i;
    if (n > sizeof(f->strings) - f->slen) {
        f->full = 1;
        return 0;
    }
    memcpy(f->strings + f->slen, name, n);
    f->slen += n;
    return (uint32_t)(f->slen - n);
}

static void begin_node(struct fdt *f, const char *name)
{
    token(f, FDT_BEGIN_NODE);
    raw(f, name, strlen(name) + 1);
    if (++f->depth > MAX_DEPTH)
        f->full = 1;
}

static void end_node(struct fdt *f)
{
    token(f, FDT_END_NODE);
    f->depth--;
}

static void prop(struct fdt *f, const char *name, const void *val, size_t len)
{
    uint8_t h[12];
    be32(h, FDT_PROP);
    be32(h + 4, (uint32_t)len);
    be32(h + 8, string_off(f, name));
    raw(f, h, sizeof(h));
    if (len)
        raw(f, val, len);
}

static void prop_empty(struct fdt *f, const char *name) { prop(f, name, NULL, 0); }
static void prop_str(struct fdt *f, const char *name, const char *s) { prop(f, name, s, strlen(s) + 1); }

static void prop_cells(struct fdt *f, const char *name, const uint32_t *c, int n)
{
    uint8_t b[4 * 16];
    for (int i = 0; i < n; i++)
        be32(b + 4 * i, c[i]);
    prop(f, name, b, 4 * (size_t)n);
}

static void prop_u32(struct fdt *f, const char *name, uint32_t v) { prop_cells(f, name, &v, 1); }

/* 64-bit values as two cells each: addresses and sizes with #address-cells = #size-cells = 2 */
static void prop_u64s(struct fdt *f, const char *name, const uint64_t *v, int n)
{
    uint32_t c[16];
    for (int i = 0; i < n; i++) {
        c[2 * i] = (uint32_t)(v[i] >> 32);
        c[2 * i + 1] = (uint32_t)v[i];
    }
    prop_cells(f, name, c, 2 * n);
}

static void prop_irq(struct fdt *f, const struct boot_dev *v)
{
    uint32_t c[3] = {GIC_SPI, v->irq, (v->flags & BOOT_IRQ_LEVEL) ? IRQ_LEVEL_HIGH : IRQ_EDGE_RISING};
    if (!(v->flags & BOOT_IRQ_NONE))
        prop_cells(f, "interrupts", c, 3);
}

static void prop_reg(struct fdt *f, uint64_t base, uint64_t size)
{
    uint64_t r[2] = {base, size};
    prop_u64s(f, "reg", r, 2);
}

static void node_at(struct fdt *f, const char *kind, uint64_t base)
{
    char name[48];
    snprintf(name, sizeof(name), "%s@%llx", kind, (unsigned long long)base);
    begin_node(f, name);
}

static void cpus(struct fdt *f, const struct boot_desc *d)
{
    begin_node(f, "cpus");
    prop_u32(f, "#address-cells", 2);
    prop_u32(f, "#size-cells", 0);
    for (uint32_t i = 0; i < d->vcpus; i++) {
        uint64_t mpidr = d->mpidr[i] & 0xff00ffffffULL;     /* Aff3..Aff0 */
        node_at(f, "cpu", mpidr);
        prop_str(f, "device_type", "cpu");
        prop_str(f, "compatible", "arm,arm-v8");
        prop_str(f, "enable-method", "psci");
        prop_u64s(f, "reg", &mpidr, 1);
        end_node(f);
    }
    end_node(f);
}

static void memory(struct fdt *f, const struct boot_desc *d)
{
    uint64_t r[2 * BOOT_MAX_MEM];
    for (int i = 0; i < d->nmem; i++) {
        r[2 * i] = d->mem_gpa[i];
        r[2 * i + 1] = d->mem_size[i];
    }
    node_at(f, "memory", d->mem_gpa[0]);
    prop_str(f, "device_type", "memory");
    prop_u64s(f, "reg", r, 2 * d->nmem);
    end_node(f);
}

static void chosen(struct fdt *f, const struct boot_desc *d, const char *uart)
{
    begin_node(f, "chosen");
    prop_str(f, "bootargs", d->cmdline ? d->cmdline : "");
    if (d->initrd_size) {
        uint64_t s = d->initrd_gpa, e = d->initrd_gpa + d->initrd_size;
        prop_u64s(f, "linux,initrd-start", &s, 1);
        prop_u64s(f, "linux,initrd-end", &e, 1);
    }
    if (uart[0])
        prop_str(f, "stdout-path", "serial0");
    if (d->rng_seed_len)
        prop(f, "rng-seed", d->rng_seed, d->rng_seed_len);
    end_node(f);
    if (uart[0]) {
        begin_node(f, "aliases");
        prop_str(f, "serial0", uart);
        end_node(f);
    }
}

static void gic(struct fdt *f, const struct boot_desc *d)
{
    const struct boot_gic *g = &d->gic;
    uint64_t r[4] = {g->dist_base, g->dist_size, g->redist_base, g->redist_size};
    uint32_t maint[3] = {GIC_PPI, 9, IRQ_LEVEL_HIGH};     /* virtual GIC maintenance PPI */
    node_at(f, "intc", g->dist_base);
    prop_str(f, "compatible", "arm,gic-v3");
    prop_u32(f, "#interrupt-cells", 3);
    prop_empty(f, "interrupt-controller");
    prop_u64s(f, "reg", r, 4);
    prop_cells(f, "interrupts", maint, 3);
    prop_u32(f, "phandle", PHANDLE_GIC);
    prop_u32(f, "#address-cells", 2);  /* for ITS children, which we have none of; dtc and */
    prop_u32(f, "#size-cells", 2);     /* QEMU's virt board want them on the provider anyway */
    prop_empty(f, "ranges");
    end_node(f);
}

static void timer_psci_clock(struct fdt *f)
{
    /* secure physical, non-secure physical, virtual, hypervisor: PPIs 13, 14, 11, 10 */
    uint32_t t[12] = {GIC_PPI, 13, IRQ_LEVEL_HIGH, GIC_PPI, 14, IRQ_LEVEL_HIGH,
                      GIC_PPI, 11, IRQ_LEVEL_HIGH, GIC_PPI, 10, IRQ_LEVEL_HIGH};
    begin_node(f, "timer");
    prop_str(f, "compatible", "arm,armv8-timer");
    prop_cells(f, "interrupts", t, 12);
    prop_empty(f, "always-on");
    end_node(f);

    begin_node(f, "psci");
    prop_str(f, "compatible", "arm,psci-0.2");
    prop_str(f, "method", "hvc");
    end_node(f);

    begin_node(f, "apb-pclk");     /* the primecell bus clock Linux's AMBA bus insists on */
    prop_str(f, "compatible", "fixed-clock");
    prop_u32(f, "#clock-cells", 0);
    prop_u32(f, "clock-frequency", APB_CLOCK);
    prop_str(f, "clock-output-names", "clk24mhz");
    prop_u32(f, "phandle", PHANDLE_CLK);
    end_node(f);
}

static void device(struct fdt *f, const struct boot_dev *v)
{
    static const char pl031[] = "arm,pl031\0arm,primecell";
    switch (v->kind) {
    case BOOT_DEV_UART_16550:
        node_at(f, "uart", v->base);
        prop_str(f, "compatible", "ns16550a");
        prop_reg(f, v->base, v->size);
        prop_u32(f, "clock-frequency", UART_CLOCK);
        prop_irq(f, v);
        break;
    case BOOT_DEV_PL031:
        node_at(f, "rtc", v->base);
        prop(f, "compatible", pl031, sizeof(pl031));
        prop_reg(f, v->base, v->size);
        prop_irq(f, v);
        prop_u32(f, "clocks", PHANDLE_CLK);
        prop_str(f, "clock-names", "apb_pclk");
        break;
    case BOOT_DEV_VIRTIO_MMIO:
        node_at(f, "virtio_mmio", v->base);
        prop_str(f, "compatible", "virtio,mmio");
        prop_reg(f, v->base, v->size);
        prop_irq(f, v);
        prop_empty(f, "dma-coherent");
        break;
    default:                       /* BOOT_DEV_VMGENID; boot_desc_check refused the rest */
        node_at(f, "vmgenid", v->base);
        prop_str(f, "compatible", "microsoft,vmgenid");
        prop_reg(f, v->base, v->size);
        prop_irq(f, v);
        break;
    }
    end_node(f);
}

static int check_gic(const struct boot_desc *d)
{
    const struct boot_gic *g = &d->gic;
    uint64_t need = (uint64_t)d->vcpus * ARM64_GICR_PER_CPU;
    if (g->dist_size < ARM64_GICD_SIZE || g->redist_size < need ||
        g->dist_base + g->dist_size < g->dist_base || g->redist_base + g->redist_size < g->redist_base ||
        (g->dist_base < g->redist_base + g->redist_size && g->redist_base < g->dist_base + g->dist_size))
        return vmm_err(EINVAL, "FDT: GICv3 distributor 0x%llx+0x%llx and redistributors "
                       "0x%llx+0x%llx (need 0x%llx for %u vCPUs) are too small or overlap",
                       (unsigned long long)g->dist_base, (unsigned long long)g->dist_size,
                       (unsigned long long)g->redist_base, (unsigned long long)g->redist_size,
                       (unsigned long long)need, d->vcpus);
    for (int i = 0; i < d->nmem; i++)
        if ((g->dist_base < d->mem_gpa[i] + d->mem_size[i] && d->mem_gpa[i] < g->dist_base + g->dist_size) ||
            (g->redist_base < d->mem_gpa[i] + d->mem_size[i] && d->mem_gpa[i] < g->redist_base + g->redist_size))
            return vmm_err(EINVAL, "FDT: the GIC overlaps RAM region %d", i);
    for (int i = 0; i < d->ndevs; i++) {
        const struct boot_dev *v = &d->devs[i];
        if ((v->base < g->dist_base + g->dist_size && g->dist_base < v->base + v->size) ||
            (v->base < g->redist_base + g->redist_size && g->redist_base < v->base + v->size))
            return vmm_err(EINVAL, "FDT: device %d overlaps the GIC", i);
    }
    return 0;
}

/* Each cpu node is named and found by its MPIDR: two vCPUs with one affinity are a bug. */
static int check_mpidrs(const struct boot_desc *d)
{
    for (uint32_t i = 0; i < d->vcpus; i++)
        for (uint32_t j = 0; j < i; j++)
            if (((d->mpidr[i] ^ d->mpidr[j]) & 0xff00ffffffULL) == 0)
                return vmm_err(EINVAL, "FDT: vCPUs %u and %u have the same MPIDR affinity 0x%llx",
                               j, i, (unsigned long long)(d->mpidr[i] & 0xff00ffffffULL));
    return 0;
}

int arm64_fdt_build(const struct boot_desc *d, uint8_t *buf, size_t len, size_t *used)
{
    struct fdt f = {.buf = buf, .cap = len};
    char uart[48] = "";
    int r = boot_desc_check(d, BOOT_ARCH_AARCH64);
    if (r || (r = check_gic(d)) || (r = check_mpidrs(d)))
        return r;
    for (int i = 0; i < d->ndevs; i++)
        if (d->devs[i].kind == BOOT_DEV_UART_16550 && !uart[0])
            snprintf(uart, sizeof(uart), "/uart@%llx", (unsigned long long)d->devs[i].base);
    if (len < FDT_HDR_LEN + FDT_RSV_LEN)
        return vmm_err(ENOSPC, "FDT: a %zu-byte buffer holds no device tree", len);
    memset(buf, 0, FDT_HDR_LEN + FDT_RSV_LEN);
    f.off = FDT_HDR_LEN + FDT_RSV_LEN;

    begin_node(&f, "");
    prop_str(&f, "compatible", "linux,dummy-virt");
    prop_str(&f, "model", "vmmd");
    prop_u32(&f, "#address-cells", 2);
    prop_u32(&f, "#size-cells", 2);
    prop_u32(&f, "interrupt-parent", PHANDLE_GIC);
    cpus(&f, d);
    memory(&f, d);
    chosen(&f, d, uart);
    gic(&f, d);
    timer_psci_clock(&f);
    for (int i = 0; i < d->ndevs; i++)
        device(&f, &d->devs[i]);
    end_node(&f);
    token(&f, FDT_END);

    size_t struct_len = f.off - (FDT_HDR_LEN + FDT_RSV_LEN);
    if (f.full || f.slen > f.cap - f.off)
        return vmm_err(ENOSPC, "FDT: the device tree does not fit in %zu bytes", len);
    memcpy(buf + f.off, f.strings, f.slen);
    size_t total = f.off + f.slen;
    if (total > ARM64_DTB_MAX)
        return vmm_err(E2BIG, "FDT: %zu bytes, more than the 2 MiB the kernel maps", total);
    be32(buf + 0, FDT_MAGIC);
    be32(buf + 4, (uint32_t)total);
    be32(buf + 8, FDT_HDR_LEN + FDT_RSV_LEN);               /* off_dt_struct */
    be32(buf + 12, (uint32_t)f.off);                         /* off_dt_strings */
    be32(buf + 16, FDT_HDR_LEN);                             /* off_mem_rsvmap */
    be32(buf + 20, 17);                                      /* version */
    be32(buf + 24, 16);                                      /* last compatible version */
    be32(buf + 28, (uint32_t)(d->mpidr[0] & 0xffffff));      /* boot_cpuid_phys */
    be32(buf + 32, (uint32_t)f.slen);
    be32(buf + 36, (uint32_t)struct_len);
    if (used)
        *used = total;
    return 0;
}
