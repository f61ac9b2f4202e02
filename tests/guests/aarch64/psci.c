/*
 * psci: a secondary powered off and on again through KVM's PSCI, so snapshots hold a stopped
 * vCPU. Every vCPU but 0 calls CPU_OFF at once. vCPU 0 counts like `counter`; when the host
 * sets params.go it calls CPU_ON for vCPU 1 (entry `secondary`, context 1) and stores PSCI's
 * answer in its word 1 (0 = success). vCPU 1 then counts in its own slot from 0.
 * Results, 8 words a vCPU: 0 loop count, 1 CPU_ON's return (vCPU 0), 2 how often it called it.
 */
#include "guest.h"

#define PSCI_CPU_OFF 0x84000002ULL
#define PSCI_CPU_ON 0xc4000003ULL

static u64 psci(u64 fn, u64 a, u64 b, u64 c)
{
    register u64 x0 __asm__("x0") = fn, x1 __asm__("x1") = a, x2 __asm__("x2") = b,
                 x3 __asm__("x3") = c;
    __asm__ volatile("hvc #0" : "+r"(x0) : "r"(x1), "r"(x2), "r"(x3) : "memory");
    return x0;
}

void secondary(void);

static void count(u64 cpu)
{
    volatile u64 *s = RESULTS + cpu * 8;
    for (u64 n = s[0];;) {
        n++;
        s[0] = n;
        *(volatile u64 *)(DATA + cpu * PAGE + (n % 64) * 8) = n;
        if (cpu == 0 && PARAMS->go && !s[2]) {
            s[2] = 1;
            s[1] = psci(PSCI_CPU_ON, 1, (u64)secondary, 1);
        }
        if (cpu == 0 && PARAMS->iterations && n >= PARAMS->iterations)
            guest_exit(0);
    }
}

/* Where CPU_ON starts vCPU 1: EL1, MMU off, x0 = context (its index), no stack yet. */
__asm__(".text\n"
        ".global secondary\n"
        "secondary:\n"
        "  movz x1, #0x8040, lsl #16\n"          /* the stacks end at 0x80400000 */
        "  lsl x2, x0, #16\n"                    /* 64 KiB a vCPU, as the VMM lays them out */
        "  sub sp, x1, x2\n"
        "  bl secondary_main\n"
        "1: b 1b\n");

void secondary_main(u64 cpu) { count(cpu); }

void main(u64 cpu)
{
    if (cpu != 0) {
        psci(PSCI_CPU_OFF, 0, 0, 0);
        guest_exit(0xbad);                      /* CPU_OFF returned: it failed */
    }
    count(0);
}
