/*
 * i8042.c - the keyboard controller, as far as a MicroVM needs one: Linux resets an x86 machine
 * by writing 0xfe (pulse the reset line) to its command port. That is a request to the vCPU
 * loop: vmmd does not reboot a MicroVM, it ends it with the reset as the reason. Data reads are
 * empty, the status says nothing is waiting, so the kernel's probe finds no keyboard.
 *   window at I/O port 0x60, 5 bytes: +0 data, +4 status/command (0x61 is the PIT's, in KVM)
 */
#include <string.h>
#include "devices.h"

#define I8042_STATE_VERSION 1
#define PORT_DATA 0
#define PORT_COMMAND 4
#define CMD_RESET 0xfe

static int i8042_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                        bool is_write, struct bus_req *req)
{
    (void)d;
    if (!is_write) {
        memset(data, 0, len);
        return 0;
    }
    if (off == PORT_COMMAND && len == 1 && data[0] == CMD_RESET)
        req->kind = BUS_REQ_RESET;
    return 0;
}

const struct device_ops i8042_ops = {
    .name = "i8042", .version = I8042_STATE_VERSION, .access = i8042_access,
};
