/* beacon: writes '.' to the serial port forever, so a restored copy shows life at once. */
#include "guest.h"

void main(u64 cpu)
{
    for (;;) {
        if (cpu == 0)
            outb(SERIAL, '.');
        for (volatile int i = 0; i < 100; i++)
            ;
    }
}
