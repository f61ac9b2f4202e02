/*
 * dma: rings the test device's doorbell over and over; the device, on the VMM's event loop,
 * stores its count at the DMA address (a data page) and spreads it over that page. results[0]
 * counts the rings the guest made.
 */
#include "guest.h"

#define DMA_PAGE (0x1000000ULL + 5 * PAGE)

void main(u64 cpu)
{
    if (cpu != 0)
        for (;;)
            ;
    TESTDEV[0xa0 / 8] = DMA_PAGE;
    for (;;) {
        *(volatile u32 *)((volatile u8 *)TESTDEV + 0xa8) = 1;
        RESULTS[0]++;
        for (volatile int i = 0; i < 2000; i++)
            ;
    }
}
