/*
 * mmio: drives the MMIO test device: checks its id, writes the eight scratch registers, reads
 * them back and checks the write counter and sum. Exit code = number of mismatches.
 */
#include "guest.h"

void main(u64 cpu)
{
    if (cpu != 0)
        for (;;)
            ;
    u32 bad = 0;
    volatile u32 *id = (volatile u32 *)TESTDEV;
    if (id[0] != 0x544d4d56u)
        bad++;
    u64 sum = 0;
    for (int i = 0; i < 8; i++) {
        u64 v = 0x1111111111111111ULL * (u64)(i + 1);
        TESTDEV[1 + i] = v;
        sum += v;
    }
    for (int i = 0; i < 8; i++)
        if (TESTDEV[1 + i] != 0x1111111111111111ULL * (u64)(i + 1))
            bad++;
    if (TESTDEV[0x80 / 8] != 8)
        bad++;
    if (TESTDEV[0x88 / 8] != sum)
        bad++;
    puts("mmio mismatches: ");
    putdec(bad);
    putc('\n');
    guest_exit(bad);
}
