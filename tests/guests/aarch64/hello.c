/* hello: one line on the MMIO serial port, reads the test device's id, exits 0 (1 if wrong). */
#include "guest.h"

void main(u64 cpu)
{
    if (cpu != 0)
        for (;;)
            ;
    puts("hello from the vmmd aarch64 test guest\n");
    guest_exit(*(volatile u32 *)TESTDEV == 0x544d4d56u ? 0 : 1);
}
