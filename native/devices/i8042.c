/*
 * i8042.c - the keyboard controller, as far as a MicroVM needs one: Linux resets an x86 machine
 * by writing 0xfe (pulse the reset line) to its command port. That is a request to the vCPU
 * loop: vmmd does not reboot a MicroVM, it ends it with the reset as the reason. Data reads are
 * empty, the status says nothing is waiting, so the kernel's probe finds no keyboard.
 *   window at I/O port 0x60, 5 bytes: +0 data, +4 status/command (0x61 is the PIT's, in KVM)
 */
#include <stdlib.h>
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

static int i8042_save(struct device *d, struct enc *e)
{
    (void)d;
    enc_map(e, 1);
    enc_kv_uint(e, "v", I8042_STATE_VERSION);
    return 0;
}

static int i8042_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    (void)d; (void)m; (void)version;
    *out = NULL;
    return 0;
}

static void i8042_apply(struct device *d, void *state) { (void)d; (void)state; }
static int i8042_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)d; (void)cfg;
    return 0;
}
static void i8042_destroy(struct device *d) { (void)d; }

const struct device_ops i8042_ops = {
    .name = "i8042", .version = I8042_STATE_VERSION, .init = i8042_init,
    .access = i8042_access, .save = i8042_save, .decode = i8042_decode, .apply = i8042_apply,
    .free_state = free, .destroy = i8042_destroy,
};
