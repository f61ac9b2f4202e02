/* hello: one line on the serial port, then exit 0. */
#include "guest.h"

void main(u64 cpu)
{
    if (cpu == 0) {
        puts("hello from the vmmd test guest\n");
        guest_exit(0);
    }
    for (;;)
        ;
}
