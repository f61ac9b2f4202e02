/*
 * iocount: IN and OUT on the debug port's counter, MMIO reads and writes of the test device's
 * counter, in a loop; the guest keeps its own counts in results and checks each value read is
 * the next one. A re-executed IN or MMIO read (the device counts it twice) shows up as a guest
 * error, a re-executed OUT or MMIO write as a device mismatch.
 *   results[0] port reads  [1] port writes  [2] MMIO reads  [3] MMIO writes  [4] errors
 *   [5] iterations; after params.iterations (0 = forever) it stores the devices' mismatch
 *   counts in [6] (port) and [7] (MMIO) and exits 0.
 */
#include "guest.h"

void main(u64 cpu)
{
    if (cpu != 0)
        for (;;)
            ;
    volatile u64 *r = RESULTS;
    u64 limit = PARAMS->iterations;
    for (;;) {
        u32 v = inl(DEBUG_COUNTER);
        if (v != (u32)(r[0] + 1))
            r[4]++;
        r[0] = v;
        outl(DEBUG_COUNTER, (u32)(r[1] + 1));
        r[1]++;
        u64 m = TESTDEV[0x90 / 8];
        if (m != r[2] + 1)
            r[4]++;
        r[2] = m;
        TESTDEV[0x90 / 8] = r[3] + 1;
        r[3]++;
        r[5]++;
        if (limit && r[5] >= limit) {
            r[6] = inl(DEBUG_COUNTER + 4);
            r[7] = TESTDEV[0x98 / 8];
            guest_exit(0);
        }
    }
}
