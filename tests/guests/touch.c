/*
 * touch: posts mark 1 and waits for params.go, then touches `pages` data pages in the order
 * i * stride mod pages (reading, or writing when params.write), stores the sum of what it read
 * in results[0], posts mark 2 and exits 0.
 */
#include "guest.h"

void main(u64 cpu)
{
    if (cpu != 0)
        for (;;)
            ;
    mark(1);
    while (!PARAMS->go)
        ;
    u64 pages = PARAMS->pages, stride = PARAMS->stride ? PARAMS->stride : 1, sum = 0;
    for (u64 i = 0; i < pages; i++) {
        volatile u64 *p = (volatile u64 *)(DATA + ((i * stride) % pages) * PAGE);
        sum += *p;
        if (PARAMS->write)
            *p = sum;
    }
    RESULTS[0] = sum;
    mark(2);
    guest_exit(0);
}
