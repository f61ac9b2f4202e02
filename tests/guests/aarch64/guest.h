/*
 * guest.h - aarch64 test guests: EL1, MMU off (so every access is to Device memory: keep them
 * aligned, no exclusives), interrupts masked, x0 = vCPU index, sp set by the VMM. Devices are
 * on MMIO: the 8250 at 0x40001000, the debug port at 0x40002000 (+0 exit, +4 mark).
 */
#ifndef GUEST_H
#define GUEST_H
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned char u8;

#define SERIAL ((volatile u8 *)0x40001000)
#define DEBUG ((volatile u32 *)0x40002000)
#define TESTDEV ((volatile u64 *)0x40003000)

static inline void putc(char c)
{
    while (!(SERIAL[5] & 0x20))
        ;
    SERIAL[0] = (u8)c;
}
static inline void puts(const char *s) { while (*s) putc(*s++); }
static inline void mark(u32 v) { DEBUG[1] = v; }
static inline __attribute__((noreturn)) void guest_exit(u32 code)
{
    DEBUG[0] = code;
    for (;;)
        ;
}

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
