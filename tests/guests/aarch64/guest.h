/*
 * guest.h - aarch64 test guests: EL1, MMU off (so every access is to Device memory: keep them
 * aligned, no exclusives), interrupts masked, x0 = vCPU index, sp set by the VMM. Devices are
 * on MMIO: the 8250 at 0x40001000, the debug port at 0x40002000 (+0 exit, +4 mark, +8 counter),
 * the MMIO test device in the first slot at 0x40003000 (SPI 16, INTID 48).
 * Memory map: RAM from 0x80000000; the x86 guests' map moved up by it: 0x80008000 params from
 * the host, 0x80009000 results (64 bytes a vCPU), stacks below 0x80400000, the image at
 * 0x80400000, data pages from 0x81000000. The vGICv3: distributor 0x08000000, redistributors
 * from 0x080a0000, 128 KiB a vCPU.
 */
#ifndef GUEST_H
#define GUEST_H
typedef unsigned long long u64;
typedef long long s64;
typedef unsigned int u32;
typedef unsigned char u8;

struct params {
    volatile u64 go;          /* host sets it to release a waiting guest */
    u64 iterations;           /* 0 = forever */
    u64 pages;                /* data pages to use */
    u64 stride;               /* page order: i * stride mod pages */
    u64 write;                /* touch by writing, not only reading */
    u64 tick_mask;            /* counter: print a tick when (n & mask) == 0 */
};
#define PARAMS ((volatile struct params *)0x80008000ULL)
#define RESULTS ((volatile u64 *)0x80009000ULL)
#define DATA ((volatile u8 *)0x81000000ULL)
#define PAGE 4096

#define SERIAL ((volatile u8 *)0x40001000)
#define DEBUG ((volatile u32 *)0x40002000)
#define TESTDEV ((volatile u64 *)0x40003000)
#define GICD ((volatile u32 *)0x08000000)
#define GICR(cpu) ((volatile u32 *)(0x080a0000ULL + (cpu) * 0x20000ULL))
#define GICR_SGI(cpu) ((volatile u32 *)(0x080b0000ULL + (cpu) * 0x20000ULL))

static inline void putc(char c)
{
    while (!(SERIAL[5] & 0x20))
        ;
    SERIAL[0] = (u8)c;
}
static inline void puts(const char *s) { while (*s) putc(*s++); }
static inline void putdec(u64 v)
{
    char b[21];
    int i = 20;
    b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(b + i);
}
static inline void mark(u32 v) { DEBUG[1] = v; }
static inline __attribute__((noreturn)) void guest_exit(u32 code)
{
    DEBUG[0] = code;
    for (;;)
        ;
}

#define SYSREG_READ(name) ({ u64 _v; __asm__ volatile("mrs %0, " name : "=r"(_v)); _v; })
#define SYSREG_WRITE(name, v) __asm__ volatile("msr " name ", %0" : : "r"((u64)(v)))
static inline void isb(void) { __asm__ volatile("isb" ::: "memory"); }
static inline u64 cntvct(void) { isb(); return SYSREG_READ("cntvct_el0"); }

void main(u64 cpu);

__asm__(".section .text.start\n"
        ".global _start\n"
        "_start:\n"
        "  bl main\n"
        "  mov w1, #0xdead\n"
        "  movz x2, #0x4000, lsl #16\n"
        "  movk x2, #0x2000\n"
        "  str w1, [x2]\n"
        "1: b 1b\n"
        ".text\n");
#endif
