/*
 * debugport.c - how a test guest talks to the host without a driver:
 * base+0 (u32 write) ends the VM with that exit code; base+4 (u32 write) posts a mark
 * the host can poll (progress, "ready"). Nothing here is guest state worth saving.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "devices.h"

#define DEBUGPORT_STATE_VERSION 1

struct debugport {
    struct vmm *vm;
};

static uint64_t le_value(const uint8_t *d, uint32_t len)
{
    uint64_t v = 0;
    memcpy(&v, d, len > 8 ? 8 : len);
    return v;
}

static int debugport_io(void *ctx, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
    struct debugport *d = ctx;
    if (!is_write) {
        memset(data, 0, len);
        return 0;
    }
    uint64_t v = le_value(data, len);
    if (off == 0)
        vm_end(d->vm, VMM_STOP_GUEST_EXIT, (long long)v, "guest exited");
    else if (off == 4) {
        atomic_store(&d->vm->st.debug_mark, v);
        atomic_fetch_add(&d->vm->st.debug_marks, 1);
    }
    return 0;
}

static int debugport_save(void *dev, struct enc *e)
{
    (void)dev;
    enc_map(e, 1);
    enc_kv_uint(e, "v", DEBUGPORT_STATE_VERSION);
    return 0;
}

static int debugport_load(void *dev, const struct dec_map *m, uint32_t version)
{
    (void)dev; (void)m; (void)version;
    return 0;
}

static const struct device_ops debugport_ops = {
    .name = "debugport", .version = DEBUGPORT_STATE_VERSION,
    .save = debugport_save, .load = debugport_load, .destroy = free,
};

int debugport_create(struct vmm *vm, struct bus *bus, uint64_t base)
{
    struct debugport *d = calloc(1, sizeof(*d));
    if (!d)
        return vmm_err(ENOMEM, "out of memory for the debug port");
    d->vm = vm;
    int r = vm_add_device(vm, &debugport_ops, d);
    if (r) {
        free(d);
        return r;
    }
    return bus_add(bus, base, 8, debugport_io, d);
}
