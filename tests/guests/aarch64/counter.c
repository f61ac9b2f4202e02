/*
 * counter, the aarch64 twin of ../counter.c: every vCPU counts in its results slot and writes
 * the count into its share of the data pages; vCPU 0 prints "tick N" when (N & tick_mask) == 0.
 * Runs until `iterations`.
 */
#include "guest.h"

void main(u64 cpu)
{
    volatile u64 *slot = RESULTS + cpu * 8;
    u64 pages = PARAMS->pages, mask = PARAMS->tick_mask, limit = PARAMS->iterations;
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
        if (limit && n >= limit)
            break;
    }
    if (cpu == 0)
        guest_exit(0);
    for (;;)
        ;
}
