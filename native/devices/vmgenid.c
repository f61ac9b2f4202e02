/*
 * vmgenid.c - the VM generation id (Microsoft's VMGenID, x86 ACPI): 16 random bytes in reserved
 * guest RAM that the kernel's vmgenid driver watches. Every restore is a new generation: the
 * device writes new bytes and raises its interrupt (the DSDT's GED notifies the driver), and
 * the kernel reseeds its RNG before user code can run on state it shares with another copy.
 * The bytes live in guest memory, so snapshots carry them without device state.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>
#include "devices.h"
#include "../arch/boot.h"

#define VMGENID_STATE_VERSION 1
#define VMGENID_LEN 16

static int new_generation(struct device *d)
{
    uint8_t id[VMGENID_LEN];
    if (getrandom(id, sizeof(id), 0) != (ssize_t)sizeof(id))
        return vmm_err(errno, "getrandom for the VM generation id: %m");
    return gm_write(d->env->mem, d->base, id, sizeof(id));
}

static int vmgenid_init(struct device *d, const struct vmm_device_config *cfg)
{
    (void)cfg;
    return new_generation(d);
}

/* After a restore: the copy is a new generation, and the guest is told. */
static int vmgenid_post_load(struct device *d)
{
    int r = new_generation(d);
    return r ? r : d->irq ? irq_trigger(d->irq) : 0;
}

static int vmgenid_access(struct device *d, uint64_t off, uint8_t *data, uint32_t len,
                          bool is_write, struct bus_req *req)
{
    (void)d; (void)off; (void)data; (void)len; (void)is_write; (void)req;
    return 0;   /* on no bus: the id is read from RAM */
}

static int vmgenid_save(struct device *d, struct enc *e)
{
    (void)d;
    enc_map(e, 1);
    enc_kv_uint(e, "v", VMGENID_STATE_VERSION);
    return 0;
}

static int vmgenid_decode(struct device *d, const struct dec_map *m, uint32_t version, void **out)
{
    (void)d; (void)m; (void)version;
    *out = NULL;
    return 0;
}

static void vmgenid_apply(struct device *d, void *state) { (void)d; (void)state; }
static void vmgenid_destroy(struct device *d) { (void)d; }

const struct device_ops vmgenid_ops = {
    .name = "vmgenid", .version = VMGENID_STATE_VERSION, .boot_kind = BOOT_DEV_VMGENID,
    .init = vmgenid_init, .access = vmgenid_access, .save = vmgenid_save,
    .decode = vmgenid_decode, .apply = vmgenid_apply, .free_state = free,
    .post_load = vmgenid_post_load, .destroy = vmgenid_destroy,
};
