/*
 * guest.h - what every test guest shares. They run at CPL3 with IOPL=3 in long mode, identity
 * mapped, interrupts off (DESIGN §9); rdi holds the vCPU index on entry.
 * Memory map (guest-physical): 0x8000 params from the host, 0x9000 results (64 bytes a vCPU),
 * 0x300000..0x400000 stacks, 0x400000 the image, 0x1000000 (16 MiB) up: data pages.
 * Devices: serial 0x3f8, debug port 0x500 (+0 exit, +4 mark, +8 counter), the MMIO test device
 * in the first MMIO slot at 0xd0000000 (native/devices/test/testdev.c has its registers).
 */
#ifndef GUEST_H
#define GUEST_H
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

struct params {
    volatile u64 go;          /* host sets it to release a waiting guest */
    u64 iterations;           /* 0 = forever */
    u64 pages;                /* data pages to use */
    u64 stride;               /* page order: i * stride mod pages */
    u64 write;                /* touch by writing, not only reading */
    u64 tick_mask;            /* counter: print a tick when (n & mask) == 0 */
};
#define PARAMS ((volatile struct params *)0x8000)
#define RESULTS ((volatile u64 *)0x9000)
#define DATA ((volatile u8 *)0x1000000)
#define PAGE 4096

#define SERIAL 0x3f8
#define DEBUG_EXIT 0x500
#define DEBUG_MARK 0x504
#define DEBUG_COUNTER 0x508      /* read: ++reads; write: the guest's count of its writes */
#define TESTDEV ((volatile u64 *)0xd0000000)

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline void putc(char c)
{
    while (!(inb(SERIAL + 5) & 0x20))
        ;
    outb(SERIAL, (u8)c);
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
static inline void mark(u32 v) { outl(DEBUG_MARK, v); }
static inline __attribute__((noreturn)) void guest_exit(u32 code)
{
    outl(DEBUG_EXIT, code);
    for (;;)
        ;
}

void main(u64 cpu);

/* the host sets rsp and rdi; main never returns, but if it did, exit 0xdead */
__asm__(".section .text.start\n"
        ".global _start\n"
        "_start:\n"
        "  call main\n"
        "  mov $0xdead, %eax\n"
        "  mov $0x500, %dx\n"
        "  outl %eax, %dx\n"
        "1: jmp 1b\n"
        ".text\n");
#endif
