/*
 * counter, the aarch64 twin of ../counter.c: every vCPU counts in its results slot and writes
 * the count into its share of the data pages; vCPU 0 prints "tick N" when (N & tick_mask) == 0.
 * Runs until `iterations`, which it reads on every round (unlike the x86 one): guests in the
 * emulated host run at unpredictable speeds, so tests set the limit once the VM is paused.
 */
#include "guest.h"

void main(u64 cpu)
{
    volatile u64 *slot = RESULTS + cpu * 8;
    u64 pages = PARAMS->pages, mask = PARAMS->tick_mask;
    u64 n = *slot;
    for (;;) {
        n++;
        *slot = n;
        if (pages) {
            u64 pg = (n * 7 + cpu) % pages;
            *(volatile u64 *)(DATA + pg * PAGE + (n % 64) * 8) = n;
        }
        if (cpu == 0 && mask && (n & mask) == 0) {
            puts("tick ");
            putdec(n);
            putc('\n');
        }
        if (PARAMS->iterations && n >= PARAMS->iterations)
            break;
    }
    if (cpu == 0)
        guest_exit(0);
    for (;;)
        ;
}
