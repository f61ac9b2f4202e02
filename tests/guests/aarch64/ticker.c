/*
 * ticker: the generic timer and the vGIC at work, so a snapshot must carry both. Every vCPU
 * takes its virtual timer interrupt (PPI 27) every 10 ms of its virtual counter, through its
 * own redistributor and CPU interface; vCPU 0 rings the test device's doorbell every 4th tick,
 * whose interrupt (SPI 16, INTID 48) the distributor routes to the last vCPU. Between
 * interrupts each vCPU counts like `counter` and watches its virtual counter for jumps.
 * Results, 8 words a vCPU: 0 loop count, 1 timer ticks, 2 SPIs taken, 3 the largest step of
 * the virtual counter between two reads in the loop, 4 CNTFRQ, 5 the counter at the last read,
 * 6 interrupts it did not expect, 7 the counter at its last tick. Params: `stride` is how many
 * vCPUs run it (the SPI goes to the last), `pages` and `iterations` as for `counter`.
 */
#include "guest.h"

#define TIMER_PPI 27
#define DEVICE_SPI 48
#define PRIORITY 0xa0
#define CTL_ENABLE 1

static volatile u64 *slot(u64 cpu) { return RESULTS + cpu * 8; }

static void rearm(u64 period)
{
    u64 now = cntvct(), next = SYSREG_READ("cntv_cval_el0") + period;
    if ((s64)(next - now) <= 0)         /* fell behind: no burst of catch-up ticks */
        next = now + period;
    SYSREG_WRITE("cntv_cval_el0", next);
    isb();
}

/* Called from the IRQ vector with the interrupted registers saved. */
void irq(void)
{
    u64 cpu = SYSREG_READ("tpidr_el1");
    volatile u64 *s = slot(cpu);
    for (;;) {
        u64 id = SYSREG_READ("S3_0_C12_C12_0") & 0xffffff;     /* ICC_IAR1_EL1: acknowledge */
        if (id >= 1020)
            break;                                            /* nothing (more) pending */
        if (id == TIMER_PPI) {
            s[1] = s[1] + 1;
            s[7] = cntvct();
            rearm(s[4] / 100);
            if (cpu == 0 && (s[1] & 3) == 0)
                *(volatile u32 *)((volatile u8 *)TESTDEV + 0xa8) = 1;   /* doorbell */
        } else if (id == DEVICE_SPI) {
            s[2] = s[2] + 1;
        } else {
            s[6] = s[6] + 1;
        }
        SYSREG_WRITE("S3_0_C12_C12_1", id);                   /* ICC_EOIR1_EL1 */
    }
}

/* Vectors: 2 KiB aligned, 16 entries of 0x80 bytes; only "IRQ, current EL with SP_ELx" is
 * expected, anything else ends the VM with 0xbad0 + the entry number. */
__asm__(".section .text.vectors, \"ax\"\n"
        ".balign 2048\n"
        ".global vectors\n"
        "vectors:\n"
        ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15\n"
        ".balign 128\n"
        ".if \\n == 5\n"
        "  b irq_entry\n"
        ".else\n"
        "  mov w1, #(0xbad0 + \\n)\n"
        "  b bad_vector\n"
        ".endif\n"
        ".endr\n"
        "bad_vector:\n"
        "  movz x2, #0x4000, lsl #16\n"
        "  movk x2, #0x2000\n"
        "  str w1, [x2]\n"
        "1: b 1b\n"
        "irq_entry:\n"
        "  sub sp, sp, #176\n"
        "  stp x0, x1, [sp, #0]\n"
        "  stp x2, x3, [sp, #16]\n"
        "  stp x4, x5, [sp, #32]\n"
        "  stp x6, x7, [sp, #48]\n"
        "  stp x8, x9, [sp, #64]\n"
        "  stp x10, x11, [sp, #80]\n"
        "  stp x12, x13, [sp, #96]\n"
        "  stp x14, x15, [sp, #112]\n"
        "  stp x16, x17, [sp, #128]\n"
        "  stp x18, x29, [sp, #144]\n"
        "  str x30, [sp, #160]\n"
        "  bl irq\n"
        "  ldp x0, x1, [sp, #0]\n"
        "  ldp x2, x3, [sp, #16]\n"
        "  ldp x4, x5, [sp, #32]\n"
        "  ldp x6, x7, [sp, #48]\n"
        "  ldp x8, x9, [sp, #64]\n"
        "  ldp x10, x11, [sp, #80]\n"
        "  ldp x12, x13, [sp, #96]\n"
        "  ldp x14, x15, [sp, #112]\n"
        "  ldp x16, x17, [sp, #128]\n"
        "  ldp x18, x29, [sp, #144]\n"
        "  ldr x30, [sp, #160]\n"
        "  add sp, sp, #176\n"
        "  eret\n"
        ".text\n");
extern char vectors[];

static void set_byte(volatile u32 *reg, unsigned byte, u32 v)
{
    u32 shift = 8 * byte;
    *reg = (*reg & ~(0xffu << shift)) | (v << shift);     /* 32-bit accesses only */
}

void main(u64 cpu)
{
    volatile u64 *s = slot(cpu);
    u64 cpus = PARAMS->stride ? PARAMS->stride : 1;      /* how many vCPUs run this */
    u64 pages = PARAMS->pages;
    SYSREG_WRITE("tpidr_el1", cpu);
    SYSREG_WRITE("vbar_el1", (u64)vectors);
    isb();
    s[4] = SYSREG_READ("cntfrq_el0");
    if (cpu == 0) {
        volatile u32 *d = GICD;
        d[0] = 0x12;                                       /* GICD_CTLR: ARE, EnableGrp1 */
        d[0x80 / 4 + DEVICE_SPI / 32] |= 1u << (DEVICE_SPI % 32);        /* group 1 */
        set_byte(&d[0x400 / 4 + DEVICE_SPI / 4], DEVICE_SPI % 4, PRIORITY);
        d[(0x6000 + 8 * DEVICE_SPI) / 4] = (u32)(cpus - 1);  /* IROUTER: Aff0 = last vCPU */
        TESTDEV[0xa0 / 8] = 0x80007000ULL;                 /* the doorbell's DMA page */
        d[0x100 / 4 + DEVICE_SPI / 32] = 1u << (DEVICE_SPI % 32);        /* enable */
    }
    /* Not before the distributor is on: KVM 6.1 never delivers a timer PPI that went pending
     * while it was off (docs/arm64.md), and vCPU 0 may start later than this one. */
    while (!(GICD[0] & 2))
        ;
    volatile u32 *sgi = GICR_SGI(cpu);
    sgi[0x80 / 4] |= 1u << TIMER_PPI;                          /* GICR_IGROUPR0: group 1 */
    set_byte(&sgi[0x400 / 4 + TIMER_PPI / 4], TIMER_PPI % 4, PRIORITY);
    sgi[0x100 / 4] = 1u << TIMER_PPI;                          /* GICR_ISENABLER0 */
    SYSREG_WRITE("S3_0_C4_C6_0", 0xf0);                        /* ICC_PMR_EL1 */
    SYSREG_WRITE("S3_0_C12_C12_3", 0);                         /* ICC_BPR1_EL1 */
    SYSREG_WRITE("S3_0_C12_C12_7", 1);                         /* ICC_IGRPEN1_EL1 */
    isb();
    SYSREG_WRITE("cntv_cval_el0", cntvct() + s[4] / 100);
    SYSREG_WRITE("cntv_ctl_el0", CTL_ENABLE);
    isb();
    __asm__ volatile("msr daifclr, #2" ::: "memory");         /* take IRQs */

    u64 n = s[0], prev = cntvct();
    for (;;) {
        n++;
        s[0] = n;
        if (pages) {
            u64 pg = (n * 7 + cpu) % pages;
            *(volatile u64 *)(DATA + pg * PAGE + (n % 64) * 8) = n;
        }
        u64 now = cntvct();
        if (now - prev > s[3])
            s[3] = now - prev;
        s[5] = now;
        prev = now;
        if (PARAMS->iterations && n >= PARAMS->iterations)   /* the host may set it later */
            break;
    }
    __asm__ volatile("msr daifset, #2" ::: "memory");
    if (cpu == 0)
        guest_exit(0);
    for (;;)
        ;
}
