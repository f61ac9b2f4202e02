/*
 * devmgr.c - builds a VM's devices from the host's configuration (the platform's own, then the
 * configured ones in order), gives each its window and interrupt from the arch's resource map,
 * records the set in every snapshot, and refuses a restore whose configuration builds a
 * different set. Nothing about devices is ever taken from a snapshot file.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "internal.h"
#include "arch.h"
#include "arch/boot.h"
#include "devices/devices.h"

struct dev_type {
    int type;
    const char *name;
    const struct device_ops *ops;
};

static const struct dev_type types[] = {
    {DEV_SERIAL, "serial", &serial_ops},
    {DEV_I8042, "i8042", &i8042_ops},
    {DEV_ACPI_PM, "acpi_pm", &acpi_pm_ops},
    {DEV_PL031, "pl031", &pl031_ops},
    {VMM_DEV_VMGENID, "vmgenid", &vmgenid_ops},
#ifdef VMM_TEST_BUILD
    {VMM_DEV_DEBUG, "debug", &debugport_ops},
    {VMM_DEV_TESTDEV, "testdev", &testdev_ops},
#endif
    {VMM_DEV_VIRTIO_RNG, "virtio-rng", &virtio_rng_ops},
    {VMM_DEV_VIRTIO_BLK, "virtio-blk", &virtio_blk_ops},
    {VMM_DEV_VIRTIO_VSOCK, "virtio-vsock", &virtio_vsock_ops},
    {VMM_DEV_VIRTIO_NET, "virtio-net", &virtio_net_ops},
};

static const struct dev_type *find_type(int type)
{
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (types[i].type == type)
            return &types[i];
    return NULL;
}

const char *devmgr_type_name(int type)
{
    const struct dev_type *t = find_type(type);
    return t ? t->name : "unknown";
}

struct device *devmgr_find(struct devmgr *dm, int type, uint32_t id)
{
    for (int i = 0; i < dm->n; i++)
        if (dm->devs[i].type == type && dm->devs[i].id == id)
            return &dm->devs[i];
    return NULL;
}

int devmgr_add(struct vmm *vm, int type, uint32_t id, const struct vmm_device_config *cfg)
{
    struct devmgr *dm = &vm->dm;
    const struct dev_type *t = find_type(type);
    if (!t)
        return type >= 100 && type < 200
                   ? vmm_err(ENOTSUP, "device type %d is a test device: it exists only in the test "
                             "build of the native core (VMMD_NATIVE=test)", type)
                   : vmm_err(EINVAL, "unknown device type %d", type);
    if (devmgr_find(dm, type, id))
        return vmm_err(EEXIST, "two %s devices with id %u: give each device its own id",
                       t->name, id);
    if (dm->n == VMM_MAX_DEVICES)
        return vmm_err(ENOSPC, "too many devices (%d)", VMM_MAX_DEVICES);
    struct arch_slot slot;
    int r = arch_device_slot(type, dm->mmio_slots, &slot);
    if (r)
        return r;
    struct device *d = &dm->devs[dm->n];
    *d = (struct device){.ops = t->ops, .type = type, .id = id, .bus = slot.bus,
                         .base = slot.base, .size = slot.size, .gsi = slot.gsi, .env = &dm->env};
    snprintf(d->key, sizeof(d->key), "%s.%u", t->name, id);
    if (slot.gsi && (r = irq_create(dm->env.vm_fd, slot.gsi, &d->irq)))
        return vmm_err_ctx(r, "device %s", d->key);
    if (t->ops->init && (r = t->ops->init(d, cfg))) {
        irq_destroy(d->irq);
        return vmm_err_ctx(r, "device %s", d->key);
    }
    dm->n++;   /* from here devmgr_destroy owns it */
    if (slot.indexed)
        dm->mmio_slots++;
    if (type == DEV_SERIAL && !vm->serial)
        vm->serial = d;
    if (!slot.bus)
        return 0;   /* in guest RAM (VMGenID): nothing to dispatch */
    return bus_add(slot.bus == DEV_BUS_PIO ? &vm->pio : &vm->mmio, d->base, d->size, d);
}

int devmgr_describe(struct devmgr *dm, struct boot_desc *bd)
{
    for (int i = 0; i < dm->n; i++) {
        const struct device *d = &dm->devs[i];
        if (!d->ops->boot_kind)
            continue;
        if (bd->ndevs == BOOT_MAX_DEVS)
            return vmm_err(ENOSPC, "more than %d devices to describe to the guest",
                           BOOT_MAX_DEVS);
        bd->devs[bd->ndevs++] = (struct boot_dev){
            .kind = d->ops->boot_kind, .flags = d->gsi ? 0 : BOOT_IRQ_NONE,
            .base = d->base, .size = d->size, .irq = d->gsi};
    }
    return 0;
}

int devmgr_build(struct vmm *vm, const struct vmm_device_config *cfg, unsigned n)
{
    int r = arch_platform_devices(vm);
    for (unsigned i = 0; i < n && !r; i++)
        r = devmgr_add(vm, cfg[i].type, cfg[i].id, &cfg[i]);
    return r;
}

void devmgr_quiesce(struct devmgr *dm)
{
    for (int i = 0; i < dm->n; i++)
        if (dm->devs[i].ops->quiesce)
            dm->devs[i].ops->quiesce(&dm->devs[i]);
}

void devmgr_resume(struct devmgr *dm)
{
    for (int i = 0; i < dm->n; i++)
        if (dm->devs[i].ops->resume)
            dm->devs[i].ops->resume(&dm->devs[i]);
}

void devmgr_snapshot_done(struct devmgr *dm, int result)
{
    for (int i = 0; i < dm->n; i++)
        if (dm->devs[i].ops->snapshot_done)
            dm->devs[i].ops->snapshot_done(&dm->devs[i], result);
}

void devmgr_destroy(struct devmgr *dm)
{
    for (int i = dm->n - 1; i >= 0; i--) {
        if (dm->devs[i].ops->destroy)
            dm->devs[i].ops->destroy(&dm->devs[i]);
        irq_destroy(dm->devs[i].irq);
    }
    dm->n = 0;
}

/* ---------- the device set, as recorded in a snapshot's config section ---------- */

#define DEV_FIELDS 6   /* name, id, bus, base, size, gsi */

int devmgr_save_config(struct devmgr *dm, struct enc *e)
{
    enc_array(e, (uint32_t)dm->n);
    for (int i = 0; i < dm->n; i++) {
        const struct device *d = &dm->devs[i];
        enc_array(e, DEV_FIELDS);
        enc_str(e, d->ops->name);
        enc_uint(e, d->id);
        enc_uint(e, (uint64_t)d->bus);
        enc_uint(e, d->base);
        enc_uint(e, d->size);
        enc_uint(e, d->gsi);
    }
    return 0;
}

static void describe(char *buf, size_t len, const char *name, size_t nlen, uint64_t id,
                     uint64_t bus, uint64_t base, uint64_t gsi)
{
    snprintf(buf, len, "%.*s.%llu at %s 0x%llx gsi %llu", (int)nlen, name, (unsigned long long)id,
             bus == DEV_BUS_PIO ? "pio" : "mmio", (unsigned long long)base,
             (unsigned long long)gsi);
}

/* The recorded set must be exactly what this configuration built, entry by entry. */
int devmgr_check_config(struct devmgr *dm, const struct dec_map *cfg)
{
    struct dec_val v;
    int r = dec_get(cfg, "devices", DEC_ARRAY, &v);
    if (r)
        return r;
    const uint8_t *p = v.p;
    for (uint64_t i = 0; i < v.u || i < (uint64_t)dm->n; i++) {
        char want[160] = "nothing", have[160] = "nothing";
        bool same = i < v.u && i < (uint64_t)dm->n;
        if (i < v.u) {
            struct dec_val ent, f[DEV_FIELDS];
            if ((r = dec_next(&p, v.end, &ent)))
                return r;
            if (ent.type != DEC_ARRAY || ent.u != DEV_FIELDS)
                return vmm_err(EINVAL, "vmstate config: device entry %llu is malformed",
                               (unsigned long long)i);
            const uint8_t *q = ent.p;
            for (int k = 0; k < DEV_FIELDS; k++)
                if ((r = dec_next(&q, v.end, &f[k])))
                    return r;
            if (f[0].type != DEC_STR)
                return vmm_err(EINVAL, "vmstate config: device entry %llu has no name",
                               (unsigned long long)i);
            for (int k = 1; k < DEV_FIELDS; k++)
                if (f[k].type != DEC_UINT)
                    return vmm_err(EINVAL, "vmstate config: device entry %llu is malformed",
                                   (unsigned long long)i);
            describe(want, sizeof(want), (const char *)f[0].p, f[0].len, f[1].u, f[2].u, f[3].u,
                     f[5].u);
            if (same) {
                const struct device *d = &dm->devs[i];
                same = strlen(d->ops->name) == f[0].len &&
                       memcmp(d->ops->name, f[0].p, f[0].len) == 0 && d->id == f[1].u &&
                       (uint64_t)d->bus == f[2].u && d->base == f[3].u && d->size == f[4].u &&
                       d->gsi == f[5].u;
            }
        }
        if (i < (uint64_t)dm->n) {
            const struct device *d = &dm->devs[i];
            describe(have, sizeof(have), d->ops->name, strlen(d->ops->name), d->id,
                     (uint64_t)d->bus, d->base, d->gsi);
        }
        if (!same)
            return vmm_err(EINVAL, "the snapshot's device %llu is %s, this restore's "
                           "configuration gives %s: restore with the devices the VM was "
                           "created with", (unsigned long long)i, want, have);
    }
    return 0;
}
